#include "cli/chat_session.h"

#include <sys/stat.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <utility>

#include "chat/encoder.h"
#include "chat/parser.h"
#include "util/error.h"

namespace dsv4::cli {

using engine::FinishReason;

class PrefixCachingModel::Sequence : public engine::ModelSequence {
 public:
  explicit Sequence(const PrefixCachingModel& owner) : owner_(owner) {}
  ~Sequence() override {
    if (seq_ && !broken_)
      owner_.cached_ = std::make_unique<Cached>(Cached{std::move(seq_), std::move(fed_)});
  }

  void forward(std::span<const int32_t> tokens, std::vector<float>* last_logits) override {
    if (!seq_) {
      // The first call is the prompt. Reuse the kept state when everything it
      // saw is a proper prefix of the prompt (the last prompt token must be
      // fed to get its logits).
      std::unique_ptr<Cached> cached = std::move(owner_.cached_);
      owner_.last_reused_ = 0;
      if (cached && cached->tokens.size() < tokens.size() &&
          std::equal(cached->tokens.begin(), cached->tokens.end(), tokens.begin())) {
        seq_ = std::move(cached->seq);
        fed_ = std::move(cached->tokens);
        owner_.last_reused_ = static_cast<int64_t>(fed_.size());
        tokens = tokens.subspan(fed_.size());
      } else {
        seq_ = owner_.inner_.new_sequence();
      }
    }
    // A failed step may leave the state half-updated: never reuse it.
    broken_ = true;
    seq_->forward(tokens, last_logits);
    broken_ = false;
    fed_.insert(fed_.end(), tokens.begin(), tokens.end());
  }
  int64_t position() const override { return seq_ ? seq_->position() : 0; }

 private:
  const PrefixCachingModel& owner_;
  std::unique_ptr<engine::ModelSequence> seq_;
  std::vector<int32_t> fed_;
  bool broken_ = false;
};

std::unique_ptr<engine::ModelSequence> PrefixCachingModel::new_sequence() const {
  return std::make_unique<Sequence>(*this);
}

struct ChatSession::Generation {
  engine::GenerationEvent last;
  OrderedJson message;                      // the assistant message as it joins the conversation
  std::vector<chat::ParsedToolCall> calls;  // complete, parsed tool calls
  int64_t cached = 0;                       // prompt tokens reused from the last state
};

ChatSession::ChatSession(const engine::LanguageModel& model, const engine::Detokenizer& detok,
                         std::function<std::vector<int32_t>(const std::string&)> encode,
                         std::vector<int32_t> stop_tokens, ChatSettings settings)
    : model_(model),
      detok_(detok),
      encode_(std::move(encode)),
      stop_tokens_(std::move(stop_tokens)),
      settings_(std::move(settings)),
      run_tool_(run_demo_tool) {}

OrderedJson ChatSession::render_input() const {
  OrderedJson messages = OrderedJson::array();
  // The encoder reads tools from a system message, so with tools on there is
  // one even when the user set no system prompt (as the API server does).
  if (!settings_.system.empty() || settings_.tools)
    messages.push_back({{"role", "system"}, {"content", settings_.system}});
  for (const auto& m : messages_) messages.push_back(m);
  OrderedJson input = {{"messages", std::move(messages)},
                       {"thinking_mode", settings_.thinking ? "thinking" : "chat"}};
  if (settings_.effort) input["reasoning_effort"] = *settings_.effort;
  if (settings_.tools) {
    input["tools"] = demo_tool_definitions();
    input["tools_attached_to"] = 0;
  }
  return input;
}

std::string ChatSession::render_prompt() const {
  return chat::render(render_input());
}

ChatSession::Generation ChatSession::generate_once(TurnView& view,
                                                   const std::atomic<bool>& cancelled) {
  Generation g;
  const std::string prompt = render_prompt();
  engine::GenerationRequest request;
  request.prompt = encode_(prompt);
  view.prompt(prompt, request.prompt.size());
  request.sampling = settings_.sampling;
  // Each generation of the session draws from its own stream, reproducible
  // from --seed, instead of replaying the first answer's random numbers.
  if (request.sampling.seed) *request.sampling.seed += static_cast<uint64_t>(generations_++);
  const int64_t room = model_.context_length() - static_cast<int64_t>(request.prompt.size());
  request.max_tokens = settings_.max_tokens > 0 ? std::min(settings_.max_tokens, room) : room;
  if (request.max_tokens < 1) {
    g.last.done = true;
    g.last.finish = FinishReason::kError;
    g.last.prompt_tokens = static_cast<int64_t>(request.prompt.size());
    g.last.error = str_cat("the conversation is ", request.prompt.size(),
                           " tokens and the model's context is ", model_.context_length(),
                           " tokens: /reset to start a new one");
    view.generation_end(g.last, 0);
    return g;
  }
  request.stop_tokens = stop_tokens_;

  const bool thinking = settings_.thinking;
  chat::OutputParser parser(thinking);
  bool raw = false;  // the output stopped parsing as V4 output: shown as it is
  bool in_call = false;
  std::string shown_reasoning, shown_content;
  auto dispatch = [&](const std::vector<chat::ParseEvent>& events, bool at_end) {
    for (const auto& e : events) {
      switch (e.type) {
        case chat::ParseEvent::Type::kReasoningDelta:
          shown_reasoning += e.text;
          view.reasoning(e.text);
          break;
        case chat::ParseEvent::Type::kContentDelta:
          shown_content += e.text;
          view.content(e.text);
          break;
        case chat::ParseEvent::Type::kToolCallStart:
          in_call = true;
          view.tool_call_begin(e.text);
          break;
        case chat::ParseEvent::Type::kToolCallArguments:
          view.tool_call_arguments(e.text);
          break;
        case chat::ParseEvent::Type::kToolCallEnd:
          in_call = false;
          view.tool_call_end();
          break;
        case chat::ParseEvent::Type::kEnd:
          break;
        case chat::ParseEvent::Type::kError:
          raw = true;
          if (in_call) {
            in_call = false;
            view.tool_call_end();
          }
          // A cut-off answer (length, Ctrl-C) fails the parser's end checks
          // as a matter of course; only an answer the model finished, or
          // text that broke the format mid-way, deserves a word.
          if (!at_end || g.last.finish == FinishReason::kStop)
            view.notice(str_cat("the output is not valid V4 output (", e.text,
                                "); shown as plain text from here"));
          break;
      }
    }
  };

  engine::generate(model_, detok_, request, cancelled, [&](engine::GenerationEvent&& ev) {
    if (!ev.text.empty()) {
      if (raw) {
        shown_content += ev.text;
        view.content(ev.text);
      } else {
        dispatch(parser.feed(ev.text), false);
      }
    }
    if (ev.done) g.last = std::move(ev);
  });

  if (!raw) {
    // The engine stops on the EOS id without decoding it; the official parser
    // reads the EOS text as the end of the message.
    if (g.last.stopped_by_token) dispatch(parser.feed(chat::kEosToken), true);
    if (!raw) dispatch(parser.finish(), true);
  }
  if (in_call) view.tool_call_end();

  if (g.last.finish == FinishReason::kError) {
    view.generation_end(g.last, 0);
    return g;
  }
  g.cached = model_.last_reused();
  g.message = {{"role", "assistant"}};
  if (!raw && parser.finished()) {
    const chat::ParsedMessage& r = parser.result();
    g.message["content"] = r.content;
    if (thinking) g.message["reasoning_content"] = r.reasoning_content;
    if (!r.tool_calls.empty()) {
      OrderedJson calls = OrderedJson::array();
      for (const auto& c : r.tool_calls)
        calls.push_back({{"id", str_cat("call_", ++next_call_id_)},
                         {"type", "function"},
                         {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
      g.message["tool_calls"] = std::move(calls);
      g.calls = r.tool_calls;
    }
  } else {
    // What the user saw is what the conversation remembers.
    g.message["content"] = shown_content;
    if (thinking) g.message["reasoning_content"] = shown_reasoning;
  }
  view.generation_end(g.last, g.cached);
  return g;
}

TurnResult ChatSession::send(const std::string& user_text, TurnView& view,
                             const std::atomic<bool>& cancelled) {
  TurnResult result;
  const OrderedJson before = messages_;
  messages_.push_back({{"role", "user"}, {"content", user_text}});
  try {
    for (;;) {
      Generation g = generate_once(view, cancelled);
      ++result.rounds;
      result.finish = g.last.finish;
      result.prompt_tokens = g.last.prompt_tokens;
      result.cached_tokens = g.cached;
      result.completion_tokens += g.last.completion_tokens;
      if (g.last.finish == FinishReason::kError) {
        result.error = g.last.error;
        if (result.rounds == 1) messages_ = before;
        return result;
      }
      messages_.push_back(g.message);
      if (g.calls.empty() || g.last.finish != FinishReason::kStop) return result;
      if (!settings_.tools) {
        view.notice("the model called a tool, but tools are off (/tools demo turns them on)");
        return result;
      }
      const OrderedJson& ids = messages_.back()["tool_calls"];
      for (size_t i = 0; i < g.calls.size(); ++i) {
        std::string out = run_tool_(g.calls[i].name, g.calls[i].arguments);
        view.tool_result(g.calls[i].name, out);
        messages_.push_back(
            {{"role", "tool"}, {"tool_call_id", ids[i]["id"]}, {"content", std::move(out)}});
        ++result.tools_run;
      }
      if (cancelled.load()) {
        result.finish = FinishReason::kCancelled;
        return result;
      }
      if (result.rounds >= settings_.max_rounds) {
        view.notice(str_cat("stopped after ", result.rounds,
                            " generations of tool calls; send a message to continue"));
        return result;
      }
    }
  } catch (const Error& e) {
    // The encoder or the tokenizer refused the conversation (e.g. invalid
    // UTF-8 in the message): nothing of this turn is kept.
    messages_ = before;
    result.finish = FinishReason::kError;
    result.error = e.what();
    return result;
  }
}

// ---------------------------------------------------------------------------
// Demo tools.

OrderedJson demo_tool_definitions() {
  auto fn = [](const char* name, const char* description, OrderedJson properties,
               OrderedJson required) {
    return OrderedJson{{"type", "function"},
                       {"function",
                        {{"name", name},
                         {"description", description},
                         {"parameters",
                          {{"type", "object"},
                           {"properties", std::move(properties)},
                           {"required", std::move(required)}}}}}};
  };
  OrderedJson tools = OrderedJson::array();
  tools.push_back(
      fn("get_weather", "Get the current weather for a location.",
         {{"location", {{"type", "string"}, {"description", "City name, e.g. \"Paris\""}}},
          {"unit",
           {{"type", "string"},
            {"enum", {"celsius", "fahrenheit"}},
            {"description", "Temperature unit (default celsius)"}}}},
         {"location"}));
  tools.push_back(
      fn("calculator",
         "Evaluate an arithmetic expression (+ - * / % ^, parentheses, sqrt, "
         "abs, round, floor, ceil, ln, log10, exp, sin, cos, tan, pi, e).",
         {{"expression", {{"type", "string"}, {"description", "e.g. \"(2 + 3) * 4 ^ 2\""}}}},
         {"expression"}));
  tools.push_back(fn("get_time", "Get the current date and time.",
                     {{"timezone",
                       {{"type", "string"},
                        {"description", "IANA time zone, e.g. \"Europe/Paris\" (default UTC)"}}}},
                     OrderedJson::array()));
  return tools;
}

namespace {

OrderedJson tool_error(const std::string& message) {
  return {{"error", message}};
}

// A JSON number that reads like arithmetic: integers without ".0".
OrderedJson number_json(double x) {
  if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9e15) return static_cast<int64_t>(x);
  return x;
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= static_cast<uint64_t>(std::tolower(c));
    h *= 1099511628211ull;
  }
  return h;
}

OrderedJson get_weather(const OrderedJson& args) {
  if (!args.contains("location") || !args["location"].is_string() ||
      args["location"].get<std::string>().empty())
    return tool_error("get_weather needs a \"location\" string");
  const std::string location = args["location"];
  std::string unit = "celsius";
  if (args.contains("unit")) {
    if (!args["unit"].is_string() || (args["unit"] != "celsius" && args["unit"] != "fahrenheit"))
      return tool_error("\"unit\" must be \"celsius\" or \"fahrenheit\"");
    unit = args["unit"];
  }
  // Made-up but stable per location: a demo must not pretend to fetch data.
  const uint64_t h = fnv1a(location);
  static const char* kConditions[] = {"sunny", "partly cloudy", "cloudy", "light rain",
                                      "rain",  "thunderstorms", "snow",   "fog"};
  const int celsius = static_cast<int>(h % 41) - 5;  // -5 .. 35
  const int temperature = unit == "celsius" ? celsius : (celsius * 9 + 160) / 5;
  return {{"location", location},
          {"temperature", temperature},
          {"unit", unit},
          {"condition", kConditions[(h >> 8) % 8]},
          {"humidity_percent", static_cast<int>((h >> 16) % 71) + 20},
          {"note", "demo data from dsv4 chat, not a real forecast"}};
}

OrderedJson calculator(const OrderedJson& args) {
  if (!args.contains("expression") || !args["expression"].is_string())
    return tool_error("calculator needs an \"expression\" string");
  const std::string expr = args["expression"];
  try {
    return {{"expression", expr}, {"result", number_json(evaluate_arithmetic(expr))}};
  } catch (const Error& e) {
    return tool_error(e.what());
  }
}

OrderedJson get_time(const OrderedJson& args) {
  std::string zone = "UTC";
  if (args.contains("timezone") && !args["timezone"].is_null()) {
    if (!args["timezone"].is_string()) return tool_error("\"timezone\" must be a string");
    zone = args["timezone"];
  }
  // IANA names come from the system's zoneinfo (libstdc++ 12 has no
  // std::chrono::locate_zone); validate the name against it so a typo is an
  // error rather than silently UTC.
  const bool utc = zone == "UTC" || zone == "Etc/UTC" || zone == "GMT" || zone == "Z";
  if (!utc) {
    struct stat st;
    if (zone.find("..") != std::string::npos || zone.empty() || zone[0] == '/' ||
        ::stat(("/usr/share/zoneinfo/" + zone).c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      return tool_error(
          str_cat("unknown time zone \"", zone, "\" (use an IANA name such as \"Europe/Paris\")"));
  }
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  if (utc) {
    gmtime_r(&now, &tm);
  } else {
    // TZ is process-wide; the chat runs tools on its one main thread and
    // restores it at once.
    const char* old = std::getenv("TZ");
    const std::string saved = old ? old : "";
    ::setenv("TZ", zone.c_str(), 1);
    ::tzset();
    localtime_r(&now, &tm);
    if (old)
      ::setenv("TZ", saved.c_str(), 1);
    else
      ::unsetenv("TZ");
    ::tzset();
  }
  char iso[64], weekday[16];
  std::strftime(iso, sizeof(iso), utc ? "%Y-%m-%dT%H:%M:%SZ" : "%Y-%m-%dT%H:%M:%S%z", &tm);
  std::strftime(weekday, sizeof(weekday), "%A", &tm);
  return {{"timezone", zone}, {"datetime", iso}, {"weekday", weekday}};
}

// Recursive descent over the grammar
//   expr := term (('+'|'-') term)*      term := unary (('*'|'/'|'%') unary)*
//   unary := ('+'|'-') unary | power    power := atom ('^' unary)?
//   atom := number | name '(' expr ')' | name | '(' expr ')'
// so -2^2 = -4 and 2^-1 = 0.5 as in mathematics.
class Arithmetic {
 public:
  explicit Arithmetic(std::string_view s) : s_(s) {}

  double parse() {
    double v = expr();
    skip();
    if (i_ < s_.size()) error(str_cat("unexpected '", s_[i_], "'"));
    if (!std::isfinite(v)) fail("the result is not a finite number");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) {
    fail(what, " at position ", i_ + 1, " of \"", s_, "\"");
  }
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(char c) {
    skip();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  double expr() {
    double v = term();
    for (;;) {
      if (eat('+'))
        v += term();
      else if (eat('-'))
        v -= term();
      else
        return v;
    }
  }
  double term() {
    double v = unary();
    for (;;) {
      if (eat('*')) {
        v *= unary();
      } else if (eat('/')) {
        double d = unary();
        if (d == 0) error("division by zero");
        v /= d;
      } else if (eat('%')) {
        double d = unary();
        if (d == 0) error("modulo by zero");
        v = std::fmod(v, d);
      } else {
        return v;
      }
    }
  }
  double unary() {
    if (eat('-')) return -unary();
    if (eat('+')) return unary();
    return power();
  }
  double power() {
    double base = atom();
    if (eat('^')) return std::pow(base, unary());
    return base;
  }
  double atom() {
    skip();
    if (i_ >= s_.size()) error("expression ends early");
    if (eat('(')) {
      double v = expr();
      if (!eat(')')) error("missing ')'");
      return v;
    }
    const char c = s_[i_];
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      const std::string rest(s_.substr(i_));
      char* end = nullptr;
      double v = std::strtod(rest.c_str(), &end);
      if (end == rest.c_str()) error("bad number");
      i_ += static_cast<size_t>(end - rest.c_str());
      return v;
    }
    if (std::isalpha(static_cast<unsigned char>(c))) {
      size_t start = i_;
      while (i_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[i_])) || s_[i_] == '_'))
        ++i_;
      const std::string name(s_.substr(start, i_ - start));
      if (name == "pi") return M_PI;
      if (name == "e") return M_E;
      static const std::pair<const char*, double (*)(double)> kFunctions[] = {
          {"sqrt", [](double x) { return std::sqrt(x); }},
          {"abs", [](double x) { return std::fabs(x); }},
          {"round", [](double x) { return std::round(x); }},
          {"floor", [](double x) { return std::floor(x); }},
          {"ceil", [](double x) { return std::ceil(x); }},
          {"ln", [](double x) { return std::log(x); }},
          {"log10", [](double x) { return std::log10(x); }},
          {"exp", [](double x) { return std::exp(x); }},
          {"sin", [](double x) { return std::sin(x); }},
          {"cos", [](double x) { return std::cos(x); }},
          {"tan", [](double x) { return std::tan(x); }},
      };
      for (const auto& [fname, f] : kFunctions) {
        if (name != fname) continue;
        if (!eat('(')) error(str_cat("'", name, "' needs an argument in parentheses"));
        double x = expr();
        if (!eat(')')) error("missing ')'");
        if ((name == "sqrt" && x < 0) || ((name == "ln" || name == "log10") && x <= 0)) {
          i_ = start;
          error(str_cat(name, " of ", x, " is undefined"));
        }
        return f(x);
      }
      i_ = start;
      error(str_cat("unknown name '", name, "'"));
    }
    error(str_cat("unexpected '", c, "'"));
  }

  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace

double evaluate_arithmetic(std::string_view expression) {
  return Arithmetic(expression).parse();
}

std::string run_demo_tool(const std::string& name, const std::string& arguments) {
  OrderedJson args;
  try {
    args = arguments.empty() ? OrderedJson::object() : OrderedJson::parse(arguments);
  } catch (const nlohmann::json::exception&) {
    return tool_error(str_cat("the arguments are not JSON: ", arguments)).dump();
  }
  if (!args.is_object()) return tool_error("the arguments must be a JSON object").dump();
  OrderedJson out;
  if (name == "get_weather")
    out = get_weather(args);
  else if (name == "calculator")
    out = calculator(args);
  else if (name == "get_time")
    out = get_time(args);
  else
    out = tool_error(
        str_cat("unknown tool \"", name, "\" (available: get_weather, calculator, get_time)"));
  // ensure_ascii off: the model reads UTF-8 (city names).
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace dsv4::cli
