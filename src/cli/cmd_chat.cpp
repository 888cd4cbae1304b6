// dsv4 chat: the interactive terminal chat over a local V4 checkpoint. The
// turn logic (conversation, encoder, parser, demo tools) is ChatSession; this
// file is the terminal around it: options, banner, line input, commands,
// streamed display and Ctrl-C.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cli/chat_session.h"
#include "cli/chat_view.h"
#include "cli/command.h"
#include "engine/v4_backend.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kUsage = R"(usage: dsv4 chat [options]

An interactive chat with a DeepSeek V4 checkpoint in the terminal. Every turn
renders the whole conversation with the official V4 encoder and streams the
answer as it is generated; reasoning is shown dimmed (or between [thinking]
and [/thinking] when the output is not a terminal or NO_COLOR is set).

When stdin is not a terminal, each line is one user message (or a /command)
and the answers are printed: `dsv4 chat < questions.txt`.

options:
  --model DIR          checkpoint folder (config.json + safetensors; default: the
                       bundled demo model, or $DSV4_MODEL)
  --tokenizer DIR      folder holding tokenizer.json (default: the model folder)
  --system TEXT        system prompt
  --think on|off       thinking mode (default on)
  --effort high|max    reasoning effort (default: the model's own)
  --tools demo|off     offer the demo tools from the start (default off)
  --temperature T      0..2 (default 1; 0 = greedy)
  --top-p P            nucleus mass, (0, 1] (default 1)
  --max-tokens N       tokens per answer (default: what the context leaves)
  --seed S             makes the answers reproducible
  --prompt TEXT        answer this one message and exit
  --show-prompt        print each rendered prompt to stderr, as
                       "[prompt <bytes> bytes, <tokens> tokens]\n<prompt>\n"
)";

constexpr const char* kHelp = R"(commands:
  /think on|off        thinking mode for the next answers
  /effort high|max     reasoning effort (/effort none: the model's default)
  /tools demo          offer get_weather, calculator and get_time; their calls
                       run locally and the results go back to the model
  /tools off           no tools
  /system TEXT         set the system prompt (/system alone removes it)
  /reset               start a new conversation (settings are kept)
  /save FILE           write the conversation as JSON (input of `dsv4 render`)
  /help                this list
  /quit                leave (or Ctrl-D); Ctrl-C stops the answer being written
A line starting with // sends the rest, starting with one /.
)";

// Ctrl-C stops the answer being generated, not the program: the handler only
// raises a flag the engine checks before every model step. A second Ctrl-C
// while the first is pending (e.g. inside a long prefill) leaves at once.
std::atomic<bool> g_interrupted{false};
std::atomic<bool> g_generating{false};

void on_sigint(int) {
  if (g_generating.load() && g_interrupted.load()) {
    static const char kMsg[] = "\n";
    ssize_t ignored = ::write(STDERR_FILENO, kMsg, sizeof(kMsg) - 1);
    (void)ignored;
    ::_exit(130);
  }
  g_interrupted.store(true);
}

void install_sigint_handler() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a Ctrl-C at the prompt interrupts read()
  ::sigaction(SIGINT, &sa, nullptr);
}

// Lines from fd 0 with read(2), so that Ctrl-C at the prompt is seen (stdio
// would retry or leave the stream in an error state).
class LineReader {
 public:
  enum class Result { kLine, kEof, kInterrupted };

  Result next(std::string& line) {
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Result::kLine;
      }
      if (eof_) {
        if (buf_.empty()) return Result::kEof;
        line = std::move(buf_);
        buf_.clear();
        return Result::kLine;
      }
      char chunk[4096];
      ssize_t n = ::read(STDIN_FILENO, chunk, sizeof(chunk));
      if (n < 0) {
        if (errno == EINTR) {
          if (g_interrupted.exchange(false)) {
            buf_.clear();  // the terminal drops the line being typed on ^C too
            return Result::kInterrupted;
          }
          continue;
        }
        fail("cannot read stdin: ", std::strerror(errno));
      }
      if (n == 0)
        eof_ = true;
      else
        buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  std::string buf_;
  bool eof_ = false;
};

bool parse_on_off(const std::string& v, const std::string& what) {
  if (v == "on") return true;
  if (v == "off") return false;
  fail(what, " expects on or off, got \"", v, "\"");
}

std::optional<std::string> parse_effort(const std::string& v, bool allow_none) {
  if (v == "high" || v == "max") return v;
  if (allow_none && (v == "none" || v == "default")) return std::nullopt;
  fail("the reasoning effort is high or max", allow_none ? " (or none)" : "", ", not \"", v, "\"");
}

bool parse_tools(const std::string& v) {
  if (v == "demo") return true;
  if (v == "off") return false;
  fail("tools are \"demo\" or \"off\", not \"", v, "\"");
}

std::string mode_text(const ChatSettings& s) {
  std::string out = s.thinking ? "thinking on" : "thinking off";
  if (s.effort) out += str_cat(" (effort ", *s.effort, ")");
  out += s.tools ? ", demo tools on" : ", tools off";
  return out;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// The state of one `dsv4 chat` run.
class Repl {
 public:
  // style: of stdout; err_style: of stderr (either may be redirected).
  Repl(ChatSession& session, TerminalView& view, Style style, Style err_style)
      : session_(session), view_(view), s_(style), e_(err_style) {}

  // A user message: one turn; false if it failed.
  bool send(const std::string& text) {
    g_interrupted.store(false);
    g_generating.store(true);
    TurnResult r = session_.send(text, view_, g_interrupted);
    g_generating.store(false);
    g_interrupted.store(false);
    if (r.finish == engine::FinishReason::kError) {
      std::fflush(stdout);
      std::fprintf(stderr, "%serror: %s%s\n", e_.yellow(), r.error.c_str(), e_.reset());
      return false;
    }
    return true;
  }

  // A /command; false once the user asked to leave.
  bool command(const std::string& line) {
    const size_t sp = line.find_first_of(" \t");
    const std::string name = line.substr(0, sp);
    const std::string arg = sp == std::string::npos ? "" : trim(line.substr(sp + 1));
    ChatSettings& st = session_.settings();
    try {
      if (name == "/quit" || name == "/exit" || name == "/q") return false;
      if (name == "/help" || name == "/?") {
        say_raw(kHelp);
      } else if (name == "/reset" || name == "/clear") {
        session_.reset();
        say("conversation cleared");
      } else if (name == "/think") {
        st.thinking = parse_on_off(arg, "/think");
        say(mode_text(st));
      } else if (name == "/effort") {
        st.effort = parse_effort(arg, true);
        say(str_cat("reasoning effort ", st.effort ? *st.effort : "default",
                    st.thinking ? "" : " (applies when thinking is on: /think on)"));
      } else if (name == "/tools") {
        st.tools = parse_tools(arg);
        say(st.tools ? "demo tools on: get_weather, calculator, get_time" : "tools off");
      } else if (name == "/system") {
        st.system = arg;
        say(arg.empty() ? "system prompt removed" : "system prompt set");
      } else if (name == "/save") {
        if (arg.empty()) fail("/save needs a file name");
        std::ofstream out(arg, std::ios::binary);
        out << session_.render_input().dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
            << "\n";
        if (!out.flush()) fail("cannot write ", arg);
        say(str_cat("conversation saved to ", arg, " (`dsv4 render < ", arg,
                    "` shows its prompt)"));
      } else {
        fail("unknown command ", name, " (/help lists the commands)");
      }
    } catch (const Error& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "%s%s%s\n", e_.yellow(), e.what(), e_.reset());
      failed_commands_ = true;
    }
    return true;
  }

  bool failed_commands() const { return failed_commands_; }

 private:
  void say(const std::string& text) {
    say_raw(str_cat(s_.dim(), "[", text, "]", s_.reset(), "\n"));
  }
  void say_raw(const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }

  ChatSession& session_;
  TerminalView& view_;
  Style s_, e_;
  bool failed_commands_ = false;
};

int run_chat(int argc, char** argv) {
  Args args("chat", argc, argv,
            {{"model", true},
             {"tokenizer", true},
             {"system", true},
             {"think", true},
             {"effort", true},
             {"tools", true},
             {"temperature", true},
             {"top-p", true},
             {"max-tokens", true},
             {"seed", true},
             {"prompt", true},
             {"show-prompt", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kUsage, stdout);
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (!args.positional().empty())
    fail("unexpected argument \"", args.positional()[0],
         "\" (pass a single message with --prompt TEXT)");

  ChatSettings settings;
  settings.system = args.get("system");
  if (args.has("think")) settings.thinking = parse_on_off(args.get("think"), "--think");
  if (args.has("effort")) settings.effort = parse_effort(args.get("effort"), false);
  if (args.has("tools")) settings.tools = parse_tools(args.get("tools"));
  settings.sampling.temperature = static_cast<float>(args.get_double("temperature", 1.0));
  if (!(settings.sampling.temperature >= 0 && settings.sampling.temperature <= 2))
    fail("--temperature must be between 0 and 2");
  settings.sampling.top_p = static_cast<float>(args.get_double("top-p", 1.0));
  if (!(settings.sampling.top_p > 0 && settings.sampling.top_p <= 1))
    fail("--top-p must be in (0, 1]");
  settings.max_tokens = args.get_int("max-tokens", 0);
  if (args.has("max-tokens") && settings.max_tokens < 1) fail("--max-tokens must be at least 1");
  if (args.has("seed")) {
    const int64_t seed = args.get_int("seed", 0);
    if (seed < 0) fail("--seed must be non-negative");
    settings.sampling.seed = static_cast<uint64_t>(seed);
  }

  namespace fs = std::filesystem;
  const std::string model_dir = args.has("model") ? args.get("model") : default_model_dir();
  if (!fs::exists(fs::path(model_dir) / "config.json"))
    fail("no checkpoint in ", model_dir, " (config.json not found); pass --model DIR");
  const std::string tok_dir = args.get("tokenizer", model_dir);
  const fs::path tok_path =
      fs::is_directory(tok_dir) ? fs::path(tok_dir) / "tokenizer.json" : fs::path(tok_dir);
  if (!fs::exists(tok_path))
    fail("no tokenizer.json in ", tok_dir, args.has("tokenizer") ? "" : "; pass --tokenizer DIR");

  const bool interactive = ::isatty(STDIN_FILENO) && !args.has("prompt");
  const bool tty_out = ::isatty(STDOUT_FILENO);
  Style style;
  style.color = tty_out && !env_no_color();
  const bool tty_err = ::isatty(STDERR_FILENO);
  Style err_style;
  err_style.color = tty_err && !env_no_color();
  // Loading a large checkpoint takes a while: say so, then erase the line.
  if (tty_err) std::fprintf(stderr, "loading %s ...\r", model_dir.c_str());

  std::shared_ptr<const Tokenizer> tok = Tokenizer::load(tok_path.string());
  auto model = std::make_shared<const Model>(model_dir);
  const ModelConfig& cfg = model->config();
  if (tok->vocab_size() > cfg.vocab_size)
    fail("the tokenizer (", tok_path.string(), ") has ids up to ", tok->vocab_size() - 1,
         " but the model's vocabulary is ", cfg.vocab_size, " tokens: they do not belong together");
  engine::V4LanguageModel lm(model);
  engine::TokenizerDetokenizer detok(tok);
  std::vector<int32_t> stops;
  if (tok->eos_id() >= 0) stops.push_back(tok->eos_id());
  if (stops.empty()) stops.push_back(static_cast<int32_t>(cfg.eos_token_id));
  if (tty_err) std::fprintf(stderr, "\x1b[2K");

  ChatSession session(
      lm, detok, [&](const std::string& prompt) { return tok->encode(prompt); }, stops, settings);
  TerminalView view(stdout, stderr, style, args.has("show-prompt"), tty_out);
  view.set_context(lm.context_length());
  Repl repl(session, view, style, err_style);

  const std::string name =
      fs::path(model_dir).lexically_normal().filename().string().empty()
          ? fs::path(model_dir).lexically_normal().parent_path().filename().string()
          : fs::path(model_dir).lexically_normal().filename().string();
  const std::string banner =
      str_cat(style.bold(), "dsv4 chat", style.reset(), " | model ", name, " (", cfg.n_layers,
              " layers, dim ", cfg.dim, ", ", cfg.n_routed_experts, " experts) | context ",
              lm.context_length(), " tokens | ", mode_text(settings),
              args.has("prompt") ? "" : " | /help for commands", "\n");

  install_sigint_handler();
  if (args.has("prompt")) {
    std::fputs(banner.c_str(), stderr);
    return repl.send(args.get("prompt")) ? 0 : 1;
  }
  std::fputs(banner.c_str(), stdout);
  std::fflush(stdout);

  LineReader reader;
  bool failed = false;
  std::string line;
  for (;;) {
    if (interactive) {
      std::fputs(str_cat(style.bold(), "> ", style.reset()).c_str(), stdout);
      std::fflush(stdout);
    }
    const LineReader::Result got = reader.next(line);
    if (got == LineReader::Result::kEof) {
      if (interactive) std::fputs("\n", stdout);
      break;
    }
    if (got == LineReader::Result::kInterrupted) {
      if (!interactive) return 130;
      std::fputs("\n(Ctrl-C stops an answer; /quit or Ctrl-D leaves)\n", stdout);
      continue;
    }
    const std::string text = trim(line);
    if (text.empty()) continue;
    // Piped input is not echoed by a terminal: show which message each answer follows.
    if (!interactive) std::printf("> %s\n", line.c_str());
    if (text[0] == '/' && text.compare(0, 2, "//") != 0) {
      if (!repl.command(text)) break;
      continue;
    }
    if (!repl.send(text[0] == '/' ? line.substr(line.find('/') + 1) : line)) failed = true;
  }
  std::fflush(stdout);
  return (failed || repl.failed_commands()) && !interactive ? 1 : 0;
}

}  // namespace

DSV4_COMMAND("chat", "interactive terminal chat with a V4 checkpoint", run_chat);

}  // namespace dsv4::cli
