// `dsv4 chat`: the turn logic (ChatSession) driven by a scripted fake model
// that writes DSML tool calls, the demo tools, and the real binary on a
// synthesized tiny checkpoint with the V4 tokenizer (piped sessions, errors,
// and a real terminal through tmux when it is installed).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "chat/encoder.h"
#include "engine/v4_backend.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#include "cli/chat_session.h"
#include "cli/chat_view.h"

namespace fs = std::filesystem;
using dsv4::str_cat;
using dsv4::cli::ChatSession;
using dsv4::cli::ChatSettings;
using dsv4::cli::OrderedJson;
using dsv4::cli::TurnResult;
using dsv4::engine::FinishReason;

namespace {

// ---------------------------------------------------------------------------
// Fakes: a model whose k-th generation writes script k (text pieces, one per
// token, then EOS), and the detokenizer of those pieces.

constexpr int32_t kEos = 1;
constexpr int32_t kFirstPiece = 1000;

class ScriptedChatModel : public dsv4::engine::LanguageModel, public dsv4::engine::Detokenizer {
 public:
  explicit ScriptedChatModel(std::vector<std::vector<std::string>> scripts,
                             int64_t context = 1 << 20)
      : context_(context) {
    for (auto& pieces : scripts) {
      std::vector<int32_t> ids;
      for (auto& p : pieces) {
        ids.push_back(kFirstPiece + static_cast<int32_t>(pieces_.size()));
        pieces_.push_back(std::move(p));
      }
      ids.push_back(kEos);
      scripts_.push_back(std::move(ids));
    }
  }
  // Later generations repeat the last script.
  int vocab_size() const override { return kFirstPiece + static_cast<int>(pieces_.size()); }
  int64_t context_length() const override { return context_; }
  std::unique_ptr<dsv4::engine::ModelSequence> new_sequence() const override {
    const size_t k = std::min(generations_++, scripts_.size() - 1);
    return std::make_unique<Seq>(this, scripts_[k]);
  }
  std::unique_ptr<dsv4::engine::TextStream> new_stream() const override {
    struct Stream : dsv4::engine::TextStream {
      explicit Stream(const ScriptedChatModel* m) : m(m) {}
      std::string push(int32_t t) override { return m->token_bytes(t); }
      std::string flush() override { return {}; }
      const ScriptedChatModel* m;
    };
    return std::make_unique<Stream>(this);
  }
  std::string token_bytes(int32_t t) const override {
    return t >= kFirstPiece ? pieces_.at(static_cast<size_t>(t - kFirstPiece)) : "";
  }
  size_t generations() const { return generations_; }

 private:
  struct Seq : dsv4::engine::ModelSequence {
    Seq(const ScriptedChatModel* m, std::vector<int32_t> script)
        : m(m), script(std::move(script)) {}
    void forward(std::span<const int32_t> tokens, std::vector<float>* logits) override {
      if (pos == 0) prompt_len = static_cast<int64_t>(tokens.size());
      pos += static_cast<int64_t>(tokens.size());
      const size_t k = static_cast<size_t>(pos - prompt_len);
      if (logits) {
        logits->assign(static_cast<size_t>(m->vocab_size()), -30.0f);
        (*logits)[static_cast<size_t>(k < script.size() ? script[k] : kEos)] = 0.0f;
      }
    }
    int64_t position() const override { return pos; }
    const ScriptedChatModel* m;
    std::vector<int32_t> script;
    int64_t pos = 0, prompt_len = 0;
  };
  std::vector<std::string> pieces_;
  std::vector<std::vector<int32_t>> scripts_;
  int64_t context_;
  mutable size_t generations_ = 0;
};

// Bytes as ids: the fake model ignores the prompt's ids, only their number matters.
std::vector<int32_t> byte_ids(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(2 + c);
  return ids;
}

// Splits text into pieces of up to n code points (a real detokenizer never
// releases half a UTF-8 sequence), so special tokens arrive in fragments.
std::vector<std::string> split_text(const std::string& text, size_t n) {
  std::vector<std::string> out;
  std::string cur;
  size_t chars = 0;
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0xF0)
      len = 4;
    else if (c >= 0xE0)
      len = 3;
    else if (c >= 0xC0)
      len = 2;
    cur += text.substr(i, len);
    i += len;
    if (++chars == n) {
      out.push_back(std::move(cur));
      cur.clear();
      chars = 0;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

// What the model writes for `assistant` after the conversation `input`: the
// official encoder's rendering of the assistant message, less the prompt and
// the EOS (which the fake emits as its stop token).
std::string completion_for(OrderedJson input, const OrderedJson& assistant) {
  const std::string prompt = dsv4::chat::render(input);
  input["messages"].push_back(assistant);
  std::string full = dsv4::chat::render(input);
  EXPECT_EQ(full.compare(0, prompt.size(), prompt), 0) << "the prompt is not a prefix";
  std::string completion = full.substr(prompt.size());
  const std::string eos(dsv4::chat::kEosToken);
  EXPECT_TRUE(completion.size() >= eos.size() &&
              completion.compare(completion.size() - eos.size(), eos.size(), eos) == 0);
  return completion.substr(0, completion.size() - eos.size());
}

// Records what a turn shows, in order.
struct RecordingView : dsv4::cli::TurnView {
  std::vector<std::string> prompts;
  std::vector<size_t> prompt_tokens;
  std::vector<int64_t> cached_tokens;  // per generation
  std::vector<std::string> log;        // "R:", "C:", "TB:", "TA:", "TE", "TR:", "N:", "END:"
  std::string reasoning_text, content_text;
  std::map<int, std::string> call_args;  // per tool call, in order
  int calls = 0;
  std::function<void()> on_content;

  void prompt(const std::string& text, size_t tokens) override {
    prompts.push_back(text);
    prompt_tokens.push_back(tokens);
  }
  void reasoning(std::string_view t) override {
    reasoning_text += t;
    log.push_back("R:" + std::string(t));
  }
  void content(std::string_view t) override {
    content_text += t;
    log.push_back("C:" + std::string(t));
    if (on_content) on_content();
  }
  void tool_call_begin(const std::string& name) override {
    ++calls;
    log.push_back("TB:" + name);
  }
  void tool_call_arguments(std::string_view t) override {
    call_args[calls - 1] += t;
    log.push_back("TA:" + std::string(t));
  }
  void tool_call_end() override { log.push_back("TE"); }
  void tool_result(const std::string& name, const std::string& result) override {
    log.push_back("TR:" + name + ":" + result);
  }
  void notice(const std::string& text) override { log.push_back("N:" + text); }
  void generation_end(const dsv4::engine::GenerationEvent& last, int64_t cached) override {
    cached_tokens.push_back(cached);
    log.push_back(std::string("END:") + dsv4::engine::finish_reason_name(last.finish));
  }
  bool has(const std::string& prefix) const {
    for (const auto& l : log)
      if (l.rfind(prefix, 0) == 0) return true;
    return false;
  }
};

OrderedJson user(const std::string& text) {
  return {{"role", "user"}, {"content", text}};
}

OrderedJson tools_input(const std::string& thinking_mode) {
  return {{"messages", {{{"role", "system"}, {"content", ""}}}},
          {"thinking_mode", thinking_mode},
          {"tools", dsv4::cli::demo_tool_definitions()},
          {"tools_attached_to", 0}};
}

OrderedJson calculator_call(const std::string& expression) {
  return {
      {"type", "function"},
      {"function",
       {{"name", "calculator"}, {"arguments", OrderedJson{{"expression", expression}}.dump()}}}};
}

const std::atomic<bool> kNotCancelled{false};

// ---------------------------------------------------------------------------
// ChatSession with the fake model.

TEST(ChatSession, ExecutesADsmlToolCallAndContinues) {
  const std::string question = "What is (2+3)*4?";
  OrderedJson input = tools_input("thinking");
  input["messages"].push_back(user(question));
  const std::string call_text =
      completion_for(input, {{"role", "assistant"},
                             {"reasoning_content", "I should use the calculator."},
                             {"content", ""},
                             {"tool_calls", {calculator_call("(2+3)*4")}}});
  ASSERT_NE(call_text.find("calculator"), std::string::npos);
  const std::string answer_text =
      str_cat("It returned 20.", dsv4::chat::kThinkEnd, "(2+3)*4 = 20.");

  ScriptedChatModel model({split_text(call_text, 3), split_text(answer_text, 2)});
  ChatSettings settings;
  settings.tools = true;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView view;
  TurnResult r = session.send(question, view, kNotCancelled);

  EXPECT_EQ(r.finish, FinishReason::kStop);
  EXPECT_EQ(r.rounds, 2);
  EXPECT_EQ(r.tools_run, 1);
  EXPECT_EQ(view.calls, 1);
  ASSERT_TRUE(view.has("TB:calculator"));
  EXPECT_EQ(OrderedJson::parse(view.call_args[0]), (OrderedJson{{"expression", "(2+3)*4"}}));
  // The calculator's own answer, spelled as JSON: (2+3)*4 = 20.
  const std::string tool_json = R"({"expression":"(2+3)*4","result":20})";
  EXPECT_TRUE(view.has("TR:calculator:" + tool_json));
  EXPECT_EQ(view.reasoning_text, "I should use the calculator.It returned 20.");
  EXPECT_EQ(view.content_text, "(2+3)*4 = 20.");
  EXPECT_FALSE(view.has("N:"));

  // The conversation: user, the assistant's call, the tool's result, the answer.
  const OrderedJson& m = session.messages();
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0], user(question));
  EXPECT_EQ(m[1]["role"], "assistant");
  EXPECT_EQ(m[1]["reasoning_content"], "I should use the calculator.");
  ASSERT_EQ(m[1]["tool_calls"].size(), 1u);
  EXPECT_EQ(m[1]["tool_calls"][0]["function"]["name"], "calculator");
  EXPECT_EQ(m[2]["role"], "tool");
  EXPECT_EQ(m[2]["tool_call_id"], m[1]["tool_calls"][0]["id"]);
  EXPECT_EQ(m[2]["content"], tool_json);
  EXPECT_EQ(m[3]["content"], "(2+3)*4 = 20.");
  EXPECT_EQ(m[3]["reasoning_content"], "It returned 20.");

  // Each generation got the official rendering of the conversation so far.
  ASSERT_EQ(view.prompts.size(), 2u);
  EXPECT_EQ(view.prompts[0], dsv4::chat::render(input));
  EXPECT_EQ(view.prompt_tokens[0], view.prompts[0].size());
  OrderedJson second = input;
  second["messages"].push_back({{"role", "assistant"},
                                {"reasoning_content", "I should use the calculator."},
                                {"content", ""},
                                {"tool_calls", {calculator_call("(2+3)*4")}}});
  second["messages"].push_back({{"role", "tool"}, {"tool_call_id", "x"}, {"content", tool_json}});
  EXPECT_EQ(view.prompts[1], dsv4::chat::render(second));
  EXPECT_NE(view.prompts[1].find(tool_json), std::string::npos);
}

// The scripted tool-call turn through the terminal view, plain and styled.
std::string shown_tool_turn(bool color) {
  const std::string question = "What is (2+3)*4?";
  OrderedJson input = tools_input("thinking");
  input["messages"].push_back(user(question));
  const std::string call_text =
      completion_for(input, {{"role", "assistant"},
                             {"reasoning_content", "I should use the calculator."},
                             {"content", ""},
                             {"tool_calls", {calculator_call("(2+3)*4")}}});
  ScriptedChatModel model(
      {split_text(call_text, 3),
       split_text(str_cat("It returned 20.", dsv4::chat::kThinkEnd, "\n\n(2+3)*4 = 20."), 2)});
  ChatSettings settings;
  settings.tools = true;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  char* buf = nullptr;
  size_t len = 0;
  std::FILE* out = open_memstream(&buf, &len);
  {
    dsv4::cli::Style style;
    style.color = color;
    dsv4::cli::TerminalView view(out, out, style, false, false);
    session.send(question, view, kNotCancelled);
  }
  std::fclose(out);
  std::string text(buf, len);
  std::free(buf);
  return text;
}

TEST(ChatView, ShowsReasoningToolCallsAndResultsReadably) {
  EXPECT_EQ(shown_tool_turn(false),
            "[thinking]\n"
            "I should use the calculator.\n"
            "[/thinking]\n"
            "[tool call] calculator({\"expression\": \"(2+3)*4\"})\n"
            "[tool result] calculator -> {\"expression\":\"(2+3)*4\",\"result\":20}\n"
            "[thinking]\n"
            "It returned 20.\n"
            "[/thinking]\n"
            "(2+3)*4 = 20.\n");
  EXPECT_EQ(
      shown_tool_turn(true),
      "\x1b[2mI should use the calculator.\x1b[0m\n"
      "\x1b[36m[tool call] \x1b[1mcalculator\x1b[0m\x1b[36m({\"expression\": "
      "\"(2+3)*4\"})\x1b[0m\n"
      "\x1b[32m[tool result] calculator -> {\"expression\":\"(2+3)*4\",\"result\":20}\x1b[0m\n"
      "\x1b[2mIt returned 20.\x1b[0m\n"
      "(2+3)*4 = 20.\n");
}

TEST(ChatSession, ToolCallsAreShownButNotRunWhenToolsAreOff) {
  OrderedJson input = tools_input("chat");
  input["messages"].push_back(user("compute"));
  const std::string call_text = completion_for(input, {{"role", "assistant"},
                                                       {"content", "Let me see."},
                                                       {"tool_calls", {calculator_call("1+1")}}});
  ScriptedChatModel model({split_text(call_text, 5)});
  ChatSettings settings;
  settings.thinking = false;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView view;
  TurnResult r = session.send("compute", view, kNotCancelled);
  EXPECT_EQ(r.rounds, 1);
  EXPECT_EQ(r.tools_run, 0);
  EXPECT_TRUE(view.has("TB:calculator"));
  EXPECT_FALSE(view.has("TR:"));
  EXPECT_TRUE(view.has("N:the model called a tool, but tools are off"));
  ASSERT_EQ(session.messages().size(), 2u);
  EXPECT_EQ(session.messages()[1]["content"], "Let me see.");
  EXPECT_EQ(session.messages()[1]["tool_calls"].size(), 1u);
  // No tools offered: the prompt has no tool definitions.
  EXPECT_EQ(view.prompts[0].find("calculator"), std::string::npos);
}

TEST(ChatSession, UnknownToolsAndBadArgumentsGoBackAsErrors) {
  OrderedJson input = tools_input("chat");
  input["messages"].push_back(user("price?"));
  OrderedJson calls = {
      {{"type", "function"},
       {"function", {{"name", "get_stock_price"}, {"arguments", R"({"ticker": "X"})"}}}},
      calculator_call("2+*3")};
  const std::string call_text =
      completion_for(input, {{"role", "assistant"}, {"content", ""}, {"tool_calls", calls}});
  ScriptedChatModel model({split_text(call_text, 4), {"Sorry."}});
  ChatSettings settings;
  settings.thinking = false;
  settings.tools = true;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView view;
  TurnResult r = session.send("price?", view, kNotCancelled);
  EXPECT_EQ(r.rounds, 2);
  EXPECT_EQ(r.tools_run, 2);
  const OrderedJson& m = session.messages();
  ASSERT_EQ(m.size(), 5u);
  EXPECT_NE(OrderedJson::parse(m[2]["content"].get<std::string>())["error"].get<std::string>().find(
                "unknown tool \"get_stock_price\""),
            std::string::npos);
  EXPECT_TRUE(OrderedJson::parse(m[3]["content"].get<std::string>()).contains("error"));
  EXPECT_NE(m[2]["tool_call_id"], m[3]["tool_call_id"]);
  EXPECT_EQ(m[4]["content"], "Sorry.");
}

TEST(ChatSession, AModelThatKeepsCallingToolsIsStopped) {
  OrderedJson input = tools_input("chat");
  input["messages"].push_back(user("loop"));
  const std::string call_text = completion_for(
      input, {{"role", "assistant"}, {"content", ""}, {"tool_calls", {calculator_call("1")}}});
  ScriptedChatModel model({split_text(call_text, 7)});  // repeats forever
  ChatSettings settings;
  settings.thinking = false;
  settings.tools = true;
  settings.max_rounds = 3;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView view;
  TurnResult r = session.send("loop", view, kNotCancelled);
  EXPECT_EQ(r.rounds, 3);
  EXPECT_EQ(r.tools_run, 3);
  EXPECT_EQ(model.generations(), 3u);
  EXPECT_TRUE(view.has("N:stopped after 3"));
  EXPECT_EQ(session.messages().size(), 1u + 3 * 2);
}

TEST(ChatSession, MultiTurnDropsEarlierThinkingAndFollowsTheMode) {
  const std::string a1 = str_cat("Greeting back.", dsv4::chat::kThinkEnd, "Hello!");
  const std::string a2 = "Four.";  // chat mode: no reasoning
  ScriptedChatModel model({split_text(a1, 3), split_text(a2, 1)});
  ChatSettings settings;
  settings.system = "Be brief.";
  settings.effort = "max";
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView v1, v2;
  session.send("Hi", v1, kNotCancelled);
  EXPECT_EQ(v1.reasoning_text, "Greeting back.");
  EXPECT_EQ(v1.content_text, "Hello!");
  session.settings().thinking = false;
  session.send("2+2?", v2, kNotCancelled);
  EXPECT_EQ(v2.content_text, "Four.");
  EXPECT_TRUE(v2.reasoning_text.empty());

  OrderedJson sys = {{"role", "system"}, {"content", "Be brief."}};
  OrderedJson first = {
      {"messages", {sys, user("Hi")}}, {"thinking_mode", "thinking"}, {"reasoning_effort", "max"}};
  EXPECT_EQ(v1.prompts.at(0), dsv4::chat::render(first));
  OrderedJson second = {
      {"messages",
       {sys,
        user("Hi"),
        {{"role", "assistant"}, {"content", "Hello!"}, {"reasoning_content", "Greeting back."}},
        user("2+2?")}},
      {"thinking_mode", "chat"},
      {"reasoning_effort", "max"}};
  EXPECT_EQ(v2.prompts.at(0), dsv4::chat::render(second));
  EXPECT_EQ(v2.prompts[0].find("Greeting back."), std::string::npos);
  EXPECT_EQ(session.render_input()["messages"].size(), 5u);

  session.reset();
  EXPECT_TRUE(session.messages().empty());
  EXPECT_EQ(session.render_prompt(),
            dsv4::chat::render(OrderedJson{
                {"messages", {sys}}, {"thinking_mode", "chat"}, {"reasoning_effort", "max"}}));
}

TEST(ChatSession, CancelKeepsThePartialAnswer) {
  ScriptedChatModel model({{"one ", "two ", "three ", "four"}});
  ChatSettings settings;
  settings.thinking = false;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  std::atomic<bool> cancelled{false};
  RecordingView view;
  view.on_content = [&] { cancelled = true; };
  TurnResult r = session.send("count", view, cancelled);
  EXPECT_EQ(r.finish, FinishReason::kCancelled);
  EXPECT_TRUE(view.has("END:cancelled"));
  ASSERT_EQ(session.messages().size(), 2u);
  const std::string kept = session.messages()[1]["content"];
  EXPECT_EQ(kept, view.content_text);
  EXPECT_LT(kept.size(), std::string("one two three four").size());
  EXPECT_EQ(std::string("one two three four").rfind(kept, 0), 0u);
}

TEST(ChatSession, AConversationPastTheContextLeavesNoTrace) {
  ScriptedChatModel model({{"x"}}, /*context=*/64);
  ChatSettings settings;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView view;
  TurnResult r = session.send(std::string(100, 'a'), view, kNotCancelled);
  EXPECT_EQ(r.finish, FinishReason::kError);
  EXPECT_NE(r.error.find("context"), std::string::npos) << r.error;
  EXPECT_TRUE(session.messages().empty());
  EXPECT_EQ(model.generations(), 0u);
}

TEST(ChatSession, MaxTokensCutsTheAnswer) {
  ScriptedChatModel model({{"a", "b", "c", "d", "e"}});
  ChatSettings settings;
  settings.thinking = false;
  settings.max_tokens = 3;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView view;
  TurnResult r = session.send("go", view, kNotCancelled);
  EXPECT_EQ(r.finish, FinishReason::kLength);
  EXPECT_EQ(r.completion_tokens, 3);
  EXPECT_EQ(view.content_text, "abc");
  EXPECT_FALSE(view.has("N:"));  // a cut answer is not "invalid output"
}

TEST(ChatSession, OutputThatBreaksTheFormatIsShownAsIs) {
  // In chat mode </think> may not appear in the answer.
  ScriptedChatModel model({{"Hello ", "</th", "ink> world", "!"}});
  ChatSettings settings;
  settings.thinking = false;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView view;
  session.send("hi", view, kNotCancelled);
  EXPECT_TRUE(view.has("N:the output is not valid V4 output"));
  EXPECT_EQ(view.content_text.substr(0, 6), "Hello ");
  EXPECT_NE(view.content_text.find("!"), std::string::npos);
  EXPECT_EQ(session.messages()[1]["content"], view.content_text);
}

// One token per byte (id 2 + byte, as byte_ids), so re-encoding an answer in
// the next prompt gives back the ids the model generated, as a real tokenizer
// usually does: what prefix reuse needs. A forward of several tokens is a
// prompt and starts the next answer (single tokens are decode steps).
class ByteModel : public dsv4::engine::LanguageModel, public dsv4::engine::Detokenizer {
 public:
  explicit ByteModel(std::vector<std::string> answers) : answers_(std::move(answers)) {}
  int vocab_size() const override { return 258; }
  int64_t context_length() const override { return 1 << 20; }
  std::unique_ptr<dsv4::engine::ModelSequence> new_sequence() const override {
    ++sequences_;
    return std::make_unique<Seq>(this);
  }
  std::unique_ptr<dsv4::engine::TextStream> new_stream() const override {
    struct Stream : dsv4::engine::TextStream {
      std::string push(int32_t t) override { return t >= 2 ? std::string(1, char(t - 2)) : ""; }
      std::string flush() override { return {}; }
    };
    return std::make_unique<Stream>();
  }
  std::string token_bytes(int32_t t) const override {
    return t >= 2 ? std::string(1, char(t - 2)) : "";
  }
  int sequences() const { return sequences_; }
  int64_t fed() const { return fed_; }

 private:
  struct Seq : dsv4::engine::ModelSequence {
    explicit Seq(const ByteModel* m) : m(m) {}
    void forward(std::span<const int32_t> tokens, std::vector<float>* logits) override {
      if (tokens.size() > 1) {
        answer = m->answers_.at(static_cast<size_t>(m->answer_index_++));
        k = 0;
      } else {
        ++k;
      }
      pos += static_cast<int64_t>(tokens.size());
      m->fed_ += static_cast<int64_t>(tokens.size());
      if (logits) {
        logits->assign(258, -30.0f);
        (*logits)[k < answer.size() ? 2 + static_cast<unsigned char>(answer[k]) : kEos] = 0.0f;
      }
    }
    int64_t position() const override { return pos; }
    const ByteModel* m;
    std::string answer;
    size_t k = 0;
    int64_t pos = 0;
  };
  std::vector<std::string> answers_;
  mutable int sequences_ = 0, answer_index_ = 0;
  mutable int64_t fed_ = 0;
};

TEST(ChatSession, TheNextTurnPrefillsOnlyWhatIsNew) {
  ByteModel model({"Hello!", "Four."});
  ChatSettings settings;
  settings.thinking = false;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView v1, v2;
  session.send("Hi", v1, kNotCancelled);
  session.send("2+2?", v2, kNotCancelled);
  EXPECT_EQ(v1.content_text, "Hello!");
  EXPECT_EQ(v2.content_text, "Four.");
  // The second prompt extends the first prompt + "Hello!": one sequence, and
  // only the new tokens were fed.
  EXPECT_EQ(model.sequences(), 1);
  ASSERT_EQ(v2.cached_tokens.size(), 1u);
  EXPECT_EQ(v1.cached_tokens.at(0), 0);
  EXPECT_EQ(v2.cached_tokens[0], static_cast<int64_t>(v1.prompt_tokens.at(0) + 6));
  EXPECT_LE(model.fed(), static_cast<int64_t>(v2.prompt_tokens.at(0) + 5));
  EXPECT_EQ(v2.prompts[0].rfind(v1.prompts[0] + "Hello!", 0), 0u);
}

TEST(ChatSession, ADivergingPromptStartsAFreshSequence) {
  // Thinking mode: the next turn drops the first answer's reasoning, so the
  // kept state (which saw it) cannot be continued.
  ByteModel model({str_cat("Hmm.", dsv4::chat::kThinkEnd, "Hello!"), "ok"});
  ChatSettings settings;
  ChatSession session(model, model, byte_ids, {kEos}, settings);
  RecordingView v1, v2;
  session.send("Hi", v1, kNotCancelled);
  EXPECT_EQ(v1.reasoning_text, "Hmm.");
  session.send("again", v2, kNotCancelled);
  EXPECT_EQ(model.sequences(), 2);
  EXPECT_EQ(v2.cached_tokens.at(0), 0);
  EXPECT_EQ(v2.prompts[0].find("Hmm."), std::string::npos);
}

// ---------------------------------------------------------------------------
// Demo tools.

TEST(DemoTools, Arithmetic) {
  using dsv4::cli::evaluate_arithmetic;
  EXPECT_EQ(evaluate_arithmetic("2+3*4"), 14);
  EXPECT_EQ(evaluate_arithmetic("(2 + 3) * 4"), 20);
  EXPECT_EQ(evaluate_arithmetic("-2^2"), -4);
  EXPECT_EQ(evaluate_arithmetic("2^3^2"), 512);
  EXPECT_EQ(evaluate_arithmetic("2^-1"), 0.5);
  EXPECT_EQ(evaluate_arithmetic("10 % 4 - 7/2"), -1.5);
  EXPECT_EQ(evaluate_arithmetic("sqrt(16) + abs(-2) * floor(2.7)"), 8);
  EXPECT_EQ(evaluate_arithmetic("1.5e3 / 8"), 187.5);
  EXPECT_NEAR(evaluate_arithmetic("cos(pi) + ln(e)"), 0.0, 1e-12);
  for (const char* bad : {"1/0", "2+", "foo(1)", "(1", "sqrt(-1)", "1 2", "", "3 % 0", "10^400"})
    EXPECT_THROW(evaluate_arithmetic(bad), dsv4::Error) << bad;
}

TEST(DemoTools, Results) {
  using dsv4::cli::run_demo_tool;
  EXPECT_EQ(run_demo_tool("calculator", R"({"expression": "7*6"})"),
            R"({"expression":"7*6","result":42})");
  EXPECT_EQ(OrderedJson::parse(run_demo_tool("calculator", R"({"expression": "1/4"})"))["result"],
            0.25);
  EXPECT_TRUE(OrderedJson::parse(run_demo_tool("calculator", "{}")).contains("error"));
  EXPECT_TRUE(OrderedJson::parse(run_demo_tool("calculator", "not json")).contains("error"));

  const auto paris = OrderedJson::parse(run_demo_tool("get_weather", R"({"location": "Paris"})"));
  EXPECT_EQ(paris["location"], "Paris");
  EXPECT_EQ(paris["unit"], "celsius");
  EXPECT_EQ(paris, OrderedJson::parse(run_demo_tool("get_weather", R"({"location": "Paris"})")));
  const auto f = OrderedJson::parse(
      run_demo_tool("get_weather", R"({"location": "Paris", "unit": "fahrenheit"})"));
  EXPECT_EQ(f["temperature"].get<int>(), (paris["temperature"].get<int>() * 9 + 160) / 5);
  EXPECT_TRUE(
      OrderedJson::parse(run_demo_tool("get_weather", R"({"unit": "celsius"})")).contains("error"));
  // Non-ASCII names come back as UTF-8.
  EXPECT_NE(run_demo_tool("get_weather", R"({"location": "Zürich"})").find("Zürich"),
            std::string::npos);

  const auto t = OrderedJson::parse(run_demo_tool("get_time", "{}"));
  EXPECT_TRUE(std::regex_match(t["datetime"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")))
      << t.dump();
  EXPECT_TRUE(OrderedJson::parse(run_demo_tool("get_time", R"({"timezone": "Mars/Olympus"})"))
                  .contains("error"));
  if (fs::exists("/usr/share/zoneinfo/Asia/Kolkata")) {
    const auto k = OrderedJson::parse(run_demo_tool("get_time", R"({"timezone": "Asia/Kolkata"})"));
    EXPECT_TRUE(std::regex_match(k["datetime"].get<std::string>(), std::regex(R"(.*\+0530)")))
        << k.dump();
  }
  EXPECT_EQ(std::getenv("TZ"), nullptr);  // restored
  EXPECT_TRUE(OrderedJson::parse(run_demo_tool("send_email", "{}")).contains("error"));
}

// ---------------------------------------------------------------------------
// The binary on a synthesized tiny checkpoint with the real V4 tokenizer.

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

struct RunResult {
  int exit_code;
  std::string out, err;
};

class ChatBinary : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new fs::path(fs::temp_directory_path() / ("dsv4_chat_repl_" + std::to_string(::getpid())));
    fs::create_directories(*dir_);
    const std::string cmd =
        str_cat(quote(DSV4_BINARY), " synth --like tiny --quiet --tokenizer ",
                quote(std::string(DSV4_SOURCE_DIR) + "/models/deepseek-v4-tokenizer"), " --out ",
                quote(model_dir().string()), " > /dev/null");
    synth_ok_ = std::system(cmd.c_str()) == 0;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override { ASSERT_TRUE(synth_ok_) << "dsv4 synth failed"; }

  static fs::path model_dir() { return *dir_ / "model"; }

  static RunResult run(const std::string& args, const std::string& stdin_data) {
    write_file(*dir_ / "in", stdin_data);
    const std::string cmd = str_cat(
        "NO_COLOR= ", quote(DSV4_BINARY), " chat ", args, " < ", quote((*dir_ / "in").string()),
        " > ", quote((*dir_ / "out").string()), " 2> ", quote((*dir_ / "err").string()));
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(*dir_ / "out"),
            read_file(*dir_ / "err")};
  }

  // The --show-prompt blocks of stderr: "[prompt B bytes, T tokens]\n" + B bytes + "\n".
  static std::vector<std::pair<std::string, size_t>> prompts(const std::string& err) {
    std::vector<std::pair<std::string, size_t>> out;
    size_t pos = 0;
    while ((pos = err.find("[prompt ", pos)) != std::string::npos) {
      size_t bytes = 0, tokens = 0;
      int used = 0;
      if (std::sscanf(err.c_str() + pos, "[prompt %zu bytes, %zu tokens]\n%n", &bytes, &tokens,
                      &used) != 2 ||
          used == 0) {
        ADD_FAILURE() << "bad prompt header at " << pos;
        break;
      }
      pos += static_cast<size_t>(used);
      out.emplace_back(err.substr(pos, bytes), tokens);
      pos += bytes;
      EXPECT_EQ(err.substr(pos, 1), "\n");
    }
    return out;
  }

  static inline fs::path* dir_ = nullptr;
  static inline bool synth_ok_ = false;
};

TEST_F(ChatBinary, PipedMultiTurnSession) {
  const fs::path saved = *dir_ / "conversation.json";
  const std::string input = str_cat("Hello there\n", "/think off\n", "What is 2+2?\n", "/save ",
                                    saved.string(), "\n", "/reset\n", "/system Answer in French.\n",
                                    "\n", "After reset\n", "/quit\n", "never sent\n");
  RunResult r = run(str_cat("--model ", quote(model_dir().string()),
                            " --system 'You are terse.' --max-tokens 6 --seed 7 --show-prompt"),
                    input);
  ASSERT_EQ(r.exit_code, 0) << r.err;

  // Banner: one line with the model, the context length from config.json and the mode.
  const OrderedJson config = OrderedJson::parse(read_file(model_dir() / "config.json"));
  const std::string banner = r.out.substr(0, r.out.find('\n'));
  EXPECT_EQ(banner.rfind("dsv4 chat | model model (", 0), 0u) << banner;
  EXPECT_NE(
      banner.find(str_cat("context ", config["max_position_embeddings"].get<int64_t>(), " tokens")),
      std::string::npos)
      << banner;
  EXPECT_NE(banner.find("thinking on"), std::string::npos) << banner;
  // Piped: user lines echoed, command replies, plain markers, no escapes.
  EXPECT_NE(r.out.find("\n> Hello there\n[thinking]\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n> /think off\n[thinking off, tools off]\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n> /reset\n[conversation cleared]\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("never sent"), std::string::npos);
  EXPECT_EQ(r.out.find('\x1b'), std::string::npos);

  auto shown = prompts(r.err);
  ASSERT_EQ(shown.size(), 3u) << r.err;
  auto tok = dsv4::Tokenizer::load(model_dir().string());
  for (const auto& [text, tokens] : shown) EXPECT_EQ(tok->encode(text).size(), tokens);

  // The saved conversation (the input of `dsv4 render`) holds the first two
  // turns; the assistant messages are the only thing the test does not know.
  const OrderedJson conv = OrderedJson::parse(read_file(saved));
  EXPECT_EQ(conv["thinking_mode"], "chat");
  const OrderedJson& m = conv["messages"];
  ASSERT_EQ(m.size(), 5u) << conv.dump(1);
  const OrderedJson sys = {{"role", "system"}, {"content", "You are terse."}};
  EXPECT_EQ(m[0], sys);
  EXPECT_EQ(m[1], user("Hello there"));
  EXPECT_EQ(m[2]["role"], "assistant");
  EXPECT_EQ(m[3], user("What is 2+2?"));
  EXPECT_EQ(m[4]["role"], "assistant");
  // What the first answer showed is what the conversation remembers.
  const std::string r1 = m[2]["reasoning_content"], c1 = m[2]["content"];
  EXPECT_NE(r.out.find(str_cat("[thinking]\n", r1)), std::string::npos) << r1;
  EXPECT_NE(r.out.find(c1), std::string::npos);

  // Each prompt is the official rendering of the conversation at that turn.
  EXPECT_EQ(shown[0].first, dsv4::chat::render(OrderedJson{{"messages", {sys, user("Hello there")}},
                                                           {"thinking_mode", "thinking"}}));
  EXPECT_EQ(shown[1].first,
            dsv4::chat::render(OrderedJson{{"messages", {sys, m[1], m[2], user("What is 2+2?")}},
                                           {"thinking_mode", "chat"}}));
  EXPECT_EQ(shown[2].first,
            dsv4::chat::render(OrderedJson{
                {"messages",
                 {{{"role", "system"}, {"content", "Answer in French."}}, user("After reset")}},
                {"thinking_mode", "chat"}}));
  // /think off changed the prompt's ending from <think> to </think>.
  EXPECT_TRUE(
      shown[0].first.ends_with(str_cat(dsv4::chat::kAssistantToken, dsv4::chat::kThinkStart)));
  EXPECT_TRUE(
      shown[1].first.ends_with(str_cat(dsv4::chat::kAssistantToken, dsv4::chat::kThinkEnd)));

  // `dsv4 render` of the saved file agrees: the second prompt plus the answer.
  RunResult rendered{};
  {
    const std::string cmd = str_cat(quote(DSV4_BINARY), " render < ", quote(saved.string()), " > ",
                                    quote((*dir_ / "rendered").string()));
    rendered.exit_code = WEXITSTATUS(std::system(cmd.c_str()));
    rendered.out = read_file(*dir_ / "rendered");
  }
  ASSERT_EQ(rendered.exit_code, 0);
  EXPECT_EQ(rendered.out.rfind(shown[1].first, 0), 0u);
}

TEST_F(ChatBinary, DemoToolsAreInThePrompt) {
  RunResult r = run(str_cat("--model ", quote(model_dir().string()),
                            " --think off --effort max --max-tokens 2 --seed 1 --show-prompt"),
                    "/tools demo\nweather in Paris?\n/tools off\nand now?\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("[demo tools on: get_weather, calculator, get_time]"), std::string::npos);
  auto shown = prompts(r.err);
  ASSERT_EQ(shown.size(), 2u) << r.err;
  OrderedJson with_tools = tools_input("chat");
  with_tools["reasoning_effort"] = "max";
  with_tools["messages"].push_back(user("weather in Paris?"));
  EXPECT_EQ(shown[0].first, dsv4::chat::render(with_tools));
  EXPECT_NE(shown[0].first.find("get_weather"), std::string::npos);
  EXPECT_EQ(shown[1].first.find("get_weather"), std::string::npos);
}

TEST_F(ChatBinary, SinglePromptAndErrors) {
  RunResult r = run(str_cat("--model ", quote(model_dir().string()),
                            " --prompt 'Say hi' --think off --max-tokens 3 --temperature 0"),
                    "");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("dsv4 chat | model"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("dsv4 chat |"), std::string::npos);  // stdout: the answer only
  // Greedy decoding is reproducible.
  RunResult again = run(str_cat("--model ", quote(model_dir().string()),
                                " --prompt 'Say hi' --think off --max-tokens 3 --temperature 0"),
                        "");
  EXPECT_EQ(again.out, r.out);

  const std::string m = str_cat("--model ", quote(model_dir().string()), " ");
  const std::pair<std::string, std::string> bad[] = {
      {"--model /nonexistent/dsv4", "dsv4 chat: no checkpoint in /nonexistent/dsv4"},
      {m + "--think maybe", "dsv4 chat: --think expects on or off"},
      {m + "--effort low", "dsv4 chat: the reasoning effort is high or max"},
      {m + "--temperature 3", "dsv4 chat: --temperature must be between 0 and 2"},
      {m + "--top-p 0", "dsv4 chat: --top-p must be in (0, 1]"},
      {m + "--max-tokens 0", "dsv4 chat: --max-tokens must be at least 1"},
      {m + "--bogus", "dsv4 chat: unknown option --bogus"},
      {m + "--tokenizer /nonexistent", "dsv4 chat: no tokenizer.json in /nonexistent"},
  };
  for (const auto& [args, message] : bad) {
    RunResult e = run(args, "hello\n");
    EXPECT_EQ(e.exit_code, 1) << args;
    EXPECT_EQ(e.err.rfind(message, 0), 0u) << args << ": " << e.err;
    EXPECT_EQ(std::count(e.err.begin(), e.err.end(), '\n'), 1) << e.err;
    EXPECT_TRUE(e.out.empty()) << e.out;
  }
  // A bad command in a piped session is reported and the session goes on;
  // the exit status says something failed.
  RunResult c = run(m + "--max-tokens 1 --think off", "/frobnicate\n/think sideways\nhi\n");
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("unknown command /frobnicate"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("/think expects on or off"), std::string::npos) << c.err;
  EXPECT_NE(c.out.find("> hi\n"), std::string::npos);
}

// Feeds a prompt in the chunks of `schedule` (then the rest), so a fresh
// sequence can be built exactly as a kept state was: the V4 forward pass is
// frame-dependent in its last bits (bf16 rounding per call, as the reference),
// so the session's answer on a kept state is compared with that, not with a
// single-chunk prefill.
class ChunkedPrefillModel : public dsv4::engine::LanguageModel {
 public:
  ChunkedPrefillModel(const dsv4::engine::LanguageModel& inner, std::vector<size_t> schedule)
      : inner_(inner), schedule_(std::move(schedule)) {}
  int vocab_size() const override { return inner_.vocab_size(); }
  int64_t context_length() const override { return inner_.context_length(); }
  std::unique_ptr<dsv4::engine::ModelSequence> new_sequence() const override {
    struct Seq : dsv4::engine::ModelSequence {
      Seq(std::unique_ptr<dsv4::engine::ModelSequence> s, std::vector<size_t> sched)
          : s(std::move(s)), sched(std::move(sched)) {}
      void forward(std::span<const int32_t> tokens, std::vector<float>* logits) override {
        if (first) {
          first = false;
          for (size_t n : sched) {
            s->forward(tokens.subspan(0, n), nullptr);
            tokens = tokens.subspan(n);
          }
        }
        s->forward(tokens, logits);
      }
      int64_t position() const override { return s->position(); }
      std::unique_ptr<dsv4::engine::ModelSequence> s;
      std::vector<size_t> sched;
      bool first = true;
    };
    return std::make_unique<Seq>(inner_.new_sequence(), schedule_);
  }

 private:
  const dsv4::engine::LanguageModel& inner_;
  std::vector<size_t> schedule_;
};

TEST_F(ChatBinary, AKeptStateContinuesExactlyWhereTheAnswerEnded) {
  auto tok = dsv4::Tokenizer::load(model_dir().string());
  auto model = std::make_shared<const dsv4::Model>(model_dir().string());
  dsv4::engine::V4LanguageModel lm(model);
  dsv4::engine::TokenizerDetokenizer detok(tok);
  ChatSettings settings;
  settings.thinking = false;
  settings.sampling.temperature = 0;
  settings.max_tokens = 8;
  const std::vector<int32_t> stops = {tok->eos_id()};
  ChatSession session(
      lm, detok, [&](const std::string& p) { return tok->encode(p); }, stops, settings);
  RecordingView v1, v2;
  const TurnResult r1 = session.send("Hello", v1, kNotCancelled);
  session.send("Tell me more", v2, kNotCancelled);
  ASSERT_EQ(v2.prompts.size(), 1u);
  const size_t n1 = v1.prompt_tokens.at(0);
  const int64_t kept = v2.cached_tokens.at(0);
  // A random model's answer need not come back as the same ids when the next
  // prompt is tokenized; then there is no state to keep (a fresh prefill).
  if (kept == 0) GTEST_SKIP() << "the tokenizer re-encodes this answer differently";
  // The state kept: the first prompt and the answer's tokens but its last
  // (sampled, never fed).
  EXPECT_EQ(kept, static_cast<int64_t>(n1) + r1.completion_tokens - 1);

  // A fresh sequence fed the same way: the first prompt in one call, the
  // answer's tokens one by one, then the rest, gives the same answer.
  std::vector<size_t> schedule = {n1};
  for (int64_t i = static_cast<int64_t>(n1); i < kept; ++i) schedule.push_back(1);
  ChunkedPrefillModel replay(lm, schedule);
  dsv4::engine::GenerationRequest request;
  request.prompt = tok->encode(v2.prompts[0]);
  request.sampling.temperature = 0;
  request.max_tokens = 8;
  request.stop_tokens = stops;
  std::string text;
  dsv4::engine::generate(replay, detok, request, kNotCancelled,
                         [&](dsv4::engine::GenerationEvent&& ev) { text += ev.text; });
  // The session shows the text through the parser (which may reject this
  // gibberish), the characters are the same.
  EXPECT_EQ(v2.content_text + v2.reasoning_text, text);
}

// A real terminal: colours, the prompt, Ctrl-C stopping an answer, Ctrl-D.
class ChatTerminal : public ChatBinary {
 protected:
  void SetUp() override {
    ChatBinary::SetUp();
    if (std::system("command -v tmux > /dev/null 2>&1") != 0)
      GTEST_SKIP() << "tmux is not installed";
    // A tmux server of its own per test: independent of the user's tmux and
    // of the previous test's server shutting down.
    static int n = 0;
    session_ = str_cat("dsv4chat", ::getpid(), "_", ++n);
    tmux_ = "tmux -L " + session_ + " ";
  }
  void TearDown() override {
    if (!session_.empty()) (void)std::system((tmux_ + "kill-server > /dev/null 2>&1").c_str());
  }
  std::string capture(bool escapes) {
    const fs::path f = *dir_ / "pane";
    const std::string cmd = str_cat(tmux_, "capture-pane -p ", escapes ? "-e " : "", "-t ",
                                    session_, " > ", quote(f.string()));
    return std::system(cmd.c_str()) == 0 ? read_file(f) : "";
  }
  void keys(const std::string& k) {
    (void)std::system(str_cat(tmux_, "send-keys -t ", session_, " ", k).c_str());
  }
  // Polls the pane until pred holds (tmux and the model need a moment).
  bool wait_for(const std::function<bool(const std::string&)>& pred, int seconds = 60) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < until) {
      if (pred(capture(false))) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  static size_t count(const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
  }
  std::string session_, tmux_;
};

TEST_F(ChatTerminal, InteractiveSession) {
  // No --max-tokens: an answer runs until the context is full, so only Ctrl-C ends it.
  const std::string cmd =
      str_cat("env -u NO_COLOR TERM=xterm ", quote(DSV4_BINARY), " chat --model ",
              quote(model_dir().string()), " --seed 3; echo CHAT-EXITED-$?; sleep 60");
  ASSERT_EQ(
      std::system(
          str_cat(tmux_, "new-session -d -x 160 -y 50 -s ", session_, " ", quote(cmd)).c_str()),
      0);
  ASSERT_TRUE(wait_for([](const std::string& p) {
    return p.find("dsv4 chat |") != std::string::npos &&
           p.find("\n>") != std::string::npos;  // tmux drops trailing blanks
  })) << capture(false);
  EXPECT_NE(capture(false).find("dsv4 chat | model model"), std::string::npos);

  keys("'Tell me a long story' Enter");
  // Reasoning streams dimmed (SGR 2), without the plain-text markers.
  ASSERT_TRUE(wait_for([&](const std::string&) {
    const std::string pane = capture(true);
    return pane.find("\x1b[2m") != std::string::npos && pane.size() > 400;
  })) << capture(true);
  EXPECT_EQ(capture(false).find("[thinking]"), std::string::npos);

  keys("C-c");
  ASSERT_TRUE(wait_for([](const std::string& p) {
    return p.find("[interrupted]") != std::string::npos;
  })) << capture(false);
  // The program is still there: a command answers and the prompt returns.
  keys("'/think off' Enter");
  ASSERT_TRUE(wait_for([](const std::string& p) {
    return p.find("[thinking off, tools off]") != std::string::npos;
  })) << capture(false);
  // Ctrl-C at the prompt explains how to leave; Ctrl-D leaves with status 0.
  keys("C-c");
  ASSERT_TRUE(wait_for([](const std::string& p) {
    return p.find("/quit or Ctrl-D leaves") != std::string::npos;
  })) << capture(false);
  keys("C-d");
  EXPECT_TRUE(wait_for([](const std::string& p) {
    return p.find("CHAT-EXITED-0") != std::string::npos;
  })) << capture(false);
}

TEST_F(ChatTerminal, NoColorMeansPlainMarkers) {
  const std::string cmd = str_cat("NO_COLOR=1 TERM=xterm ", quote(DSV4_BINARY), " chat --model ",
                                  quote(model_dir().string()),
                                  " --max-tokens 4 --seed 3; echo CHAT-EXITED-$?; sleep 60");
  ASSERT_EQ(
      std::system(
          str_cat(tmux_, "new-session -d -x 160 -y 50 -s ", session_, " ", quote(cmd)).c_str()),
      0);
  ASSERT_TRUE(wait_for([](const std::string& p) {
    return p.find("dsv4 chat |") != std::string::npos && p.find("\n>") != std::string::npos;
  })) << capture(false);
  keys("'Hello' Enter");
  ASSERT_TRUE(wait_for([](const std::string& p) { return p.find("tok/s)") != std::string::npos; }))
      << capture(false);
  EXPECT_NE(capture(false).find("\n[thinking]\n"), std::string::npos) << capture(false);
  // tmux re-encodes what it draws; without colours it has no SGR to show.
  EXPECT_EQ(capture(true).find("\x1b[2m"), std::string::npos);
  keys("'/quit' Enter");
  EXPECT_TRUE(wait_for([](const std::string& p) {
    return p.find("CHAT-EXITED-0") != std::string::npos;
  })) << capture(false);
}

}  // namespace
