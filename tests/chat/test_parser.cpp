// The output parser against every golden parse case (computed by the official
// parse_message_from_completion_text), one-shot and fed incrementally.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "chat/json_py.h"
#include "chat/parser.h"

namespace fs = std::filesystem;
using dsv4::chat::OutputParser;
using dsv4::chat::ParsedMessage;
using dsv4::chat::ParseError;
using dsv4::chat::ParseEvent;
using dsv4::chat::PyJson;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct ParseCase {
  std::string id;
  std::string text;
  bool thinking;
  bool ok;
  PyJson expected;       // the official result dict, when ok
  std::string err_type;  // when not ok
  std::string err_message;
};

std::vector<ParseCase> load_cases() {
  std::vector<ParseCase> out;
  for (const auto& e : fs::directory_iterator(fs::path(DSV4_TEST_DATA) / "chat" / "cases")) {
    if (e.path().filename().string().rfind("parse_", 0) != 0) continue;
    PyJson c = dsv4::chat::py_json_loads(read_file(e.path()));
    ParseCase pc;
    pc.id = c.find("id")->as_string();
    const PyJson& input = *c.find("input");
    pc.text = input.find("text")->as_string();
    pc.thinking = input.find("thinking_mode")->as_string() == "thinking";
    if (const PyJson* expected = c.find("expected")) {
      pc.ok = true;
      pc.expected = *expected;
    } else {
      pc.ok = false;
      const PyJson& err = *c.find("expected_error");
      pc.err_type = err.find("type")->as_string();
      pc.err_message = err.find("message")->as_string();
    }
    out.push_back(std::move(pc));
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.id < b.id; });
  return out;
}

void expect_matches(const ParsedMessage& got, const PyJson& expected) {
  EXPECT_EQ(expected.find("role")->as_string(), "assistant");
  EXPECT_EQ(got.content, expected.find("content")->as_string());
  EXPECT_EQ(got.reasoning_content, expected.find("reasoning_content")->as_string());
  const auto& calls = expected.find("tool_calls")->items();
  ASSERT_EQ(got.tool_calls.size(), calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].find("type")->as_string(), "function");
    const PyJson& f = *calls[i].find("function");
    EXPECT_EQ(got.tool_calls[i].name, f.find("name")->as_string());
    EXPECT_EQ(got.tool_calls[i].arguments, f.find("arguments")->as_string());
  }
  // The JSON form carries exactly the official fields.
  EXPECT_EQ(dsv4::chat::py_json_loads(got.to_json_text()), expected);
}

TEST(Parser, GoldenCasesOneShot) {
  auto cases = load_cases();
  ASSERT_GE(cases.size(), 20u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.id);
    if (c.ok) {
      try {
        expect_matches(dsv4::chat::parse(c.text, c.thinking), c.expected);
      } catch (const ParseError& e) {
        ADD_FAILURE() << "rejected: " << e.what();
      }
    } else {
      try {
        dsv4::chat::parse(c.text, c.thinking);
        ADD_FAILURE() << "accepted a completion the official parser rejects";
      } catch (const ParseError& e) {
        EXPECT_EQ(e.python_type(), c.err_type);
        EXPECT_EQ(std::string(e.what()), c.err_message);
      }
    }
  }
}

// What a stream of events adds up to.
struct Replay {
  std::string reasoning, content;
  std::vector<std::string> names, arguments;
  std::vector<bool> ended;
  bool end = false, error = false;
  std::string error_message;

  void apply(const std::vector<ParseEvent>& events) {
    for (const auto& ev : events) {
      ASSERT_FALSE(end || error) << "event after the end";
      switch (ev.type) {
        case ParseEvent::Type::kReasoningDelta:
          EXPECT_FALSE(ev.text.empty());
          reasoning += ev.text;
          break;
        case ParseEvent::Type::kContentDelta:
          EXPECT_FALSE(ev.text.empty());
          content += ev.text;
          break;
        case ParseEvent::Type::kToolCallStart:
          ASSERT_EQ(ev.tool_index, static_cast<int>(names.size()));
          names.push_back(ev.text);
          arguments.emplace_back();
          ended.push_back(false);
          break;
        case ParseEvent::Type::kToolCallArguments:
          ASSERT_EQ(ev.tool_index + 1, static_cast<int>(names.size()));
          ASSERT_FALSE(ended.back());
          arguments.back() += ev.text;
          break;
        case ParseEvent::Type::kToolCallEnd:
          ASSERT_EQ(ev.tool_index + 1, static_cast<int>(names.size()));
          ended.back() = true;
          break;
        case ParseEvent::Type::kEnd:
          end = true;
          break;
        case ParseEvent::Type::kError:
          error = true;
          error_message = ev.text;
          break;
      }
    }
  }
};

void check_pieces(const ParseCase& c, const std::vector<std::string_view>& pieces) {
  OutputParser parser(c.thinking);
  Replay replay;
  for (auto piece : pieces) replay.apply(parser.feed(piece));
  replay.apply(parser.finish());
  ASSERT_TRUE(replay.end != replay.error);
  if (!c.ok) {
    EXPECT_TRUE(replay.error);
    EXPECT_EQ(replay.error_message, c.err_message);
    EXPECT_EQ(parser.error_type(), c.err_type);
    return;
  }
  ASSERT_TRUE(replay.end) << replay.error_message;
  expect_matches(parser.result(), c.expected);
  // The deltas add up to the result.
  EXPECT_EQ(replay.reasoning, parser.result().reasoning_content);
  EXPECT_EQ(replay.content, parser.result().content);
  ASSERT_EQ(replay.names.size(), parser.result().tool_calls.size());
  for (size_t i = 0; i < replay.names.size(); ++i) {
    EXPECT_EQ(replay.names[i], parser.result().tool_calls[i].name);
    EXPECT_EQ(replay.arguments[i], parser.result().tool_calls[i].arguments);
    EXPECT_TRUE(replay.ended[i]);
  }
}

TEST(Parser, OneBytePieces) {
  for (const auto& c : load_cases()) {
    SCOPED_TRACE(c.id);
    std::vector<std::string_view> pieces;
    std::string_view t(c.text);
    for (size_t i = 0; i < t.size(); ++i) pieces.push_back(t.substr(i, 1));
    check_pieces(c, pieces);
  }
}

TEST(Parser, EveryTwoWaySplit) {
  for (const auto& c : load_cases()) {
    std::string_view t(c.text);
    for (size_t k = 0; k <= t.size(); ++k) {
      SCOPED_TRACE(c.id + " split at " + std::to_string(k));
      check_pieces(c, {t.substr(0, k), t.substr(k)});
    }
  }
}

// Deltas stop short of a partial special token and of a partial UTF-8
// character, so a server can forward each one as it comes.
TEST(Parser, HoldsBackPartialTokensAndCharacters) {
  OutputParser parser(true);
  auto ev = parser.feed("plan: 中");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "plan: 中");
  ev = parser.feed("\xE6\x96");  // first two bytes of 文
  EXPECT_TRUE(ev.empty());
  ev = parser.feed("\x87</th");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "文");
  ev = parser.feed("ink>Answer\n");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, ParseEvent::Type::kContentDelta);
  EXPECT_EQ(ev[0].text, "Answer");  // "\n" may start "\n\n<｜DSML｜tool_calls"
  ev = parser.feed(
      "\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"q\" "
      "string=\"true\">a\"b");
  ASSERT_GE(ev.size(), 2u);
  EXPECT_EQ(ev[0].type, ParseEvent::Type::kToolCallStart);
  EXPECT_EQ(ev[0].text, "f");
  std::string args;
  for (const auto& e : ev)
    if (e.type == ParseEvent::Type::kToolCallArguments) args += e.text;
  EXPECT_EQ(args, "{\"q\": \"a");  // the last bytes may still be the closing "<"
  ev = parser.feed(
      "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>");
  auto tail = parser.finish();
  ev.insert(ev.end(), tail.begin(), tail.end());
  for (const auto& e : ev)
    if (e.type == ParseEvent::Type::kToolCallArguments) args += e.text;
  EXPECT_EQ(args, "{\"q\": \"a\\\"b\"}");
  EXPECT_EQ(ev.back().type, ParseEvent::Type::kEnd);
  EXPECT_EQ(parser.result().content, "Answer");
  EXPECT_EQ(parser.result().reasoning_content, "plan: 中文");
}

// Shapes the official parser accepts that are easy to get wrong: a block that
// ends without EOS, an invoke cut off after its name, a name line followed by
// a blank line (the regex `$` matches before a final newline).
TEST(Parser, OfficialCornerCases) {
  const std::string head = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n";
  auto m = dsv4::chat::parse("x" + head + "</｜DSML｜invoke>\n</｜DSML｜tool_calls>", false);
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].arguments, "{}");
  m = dsv4::chat::parse("x" + head, false);
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].name, "f");
  m = dsv4::chat::parse(
      "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"g\">\n\n</｜DSML｜invoke>\n</"
      "｜DSML｜tool_calls><｜end▁of▁sentence｜>",
      false);
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].name, "g");
  EXPECT_THROW(dsv4::chat::parse("x" + head +
                                     "<｜DSML｜parameter name=\"a\" string=\"false\">1</"
                                     "｜DSML｜parameter>\n<｜DSML｜parameter name=\"a\" "
                                     "string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>",
                                 false),
               ParseError);
  // Only content: no tool calls, and the block opener alone is accepted.
  m = dsv4::chat::parse("hello\n\n<｜DSML｜tool_calls", false);
  EXPECT_EQ(m.content, "hello");
  EXPECT_TRUE(m.tool_calls.empty());
}

// Round trip through the golden prompts: every assistant turn the official
// encoder rendered (up to its EOS) parses back into the tool calls of the
// input conversation, with arguments re-serialised the way the encoder did.
TEST(Parser, ParsesTheAssistantTurnsOfGoldenPrompts) {
  const std::string kAssistant = "<｜Assistant｜>", kEos = "<｜end▁of▁sentence｜>";
  int turns = 0, calls = 0;
  for (const auto& e : fs::directory_iterator(fs::path(DSV4_TEST_DATA) / "chat" / "cases")) {
    if (e.path().filename().string().rfind("enc_", 0) != 0) continue;
    PyJson c = dsv4::chat::py_json_loads(read_file(e.path()));
    const PyJson* prompt = c.find("expected_prompt");
    if (!prompt) continue;
    SCOPED_TRACE(e.path().filename().string());
    // The (name, normalised arguments) of every tool call in the input.
    std::vector<std::pair<std::string, std::string>> known;
    const PyJson& input = *c.find("input");
    for (const char* list : {"messages", "context"}) {
      const PyJson* msgs = input.find(list);
      if (!msgs) continue;
      for (const auto& m : msgs->items()) {
        const PyJson* tcs = m.find("tool_calls");
        if (!tcs) continue;
        for (const auto& tc : tcs->items()) {
          const PyJson& f = *tc.find("function");
          PyJson args;
          try {
            args = dsv4::chat::py_json_loads(f.find("arguments")->as_string());
          } catch (const dsv4::chat::PyJsonError&) {
            args = PyJson::object({{"arguments", *f.find("arguments")}});
          }
          known.emplace_back(f.find("name")->as_string(), dsv4::chat::py_json_dumps(args));
        }
      }
    }
    const std::string& p = prompt->as_string();
    for (size_t at = p.find(kAssistant); at != std::string::npos; at = p.find(kAssistant, at + 1)) {
      std::string turn = p.substr(at + kAssistant.size());
      size_t eos = turn.find(kEos);
      if (eos == std::string::npos) continue;  // the generation prompt or a prefill
      turn.resize(eos + kEos.size());
      bool thinking = turn.rfind("<think>", 0) == 0;
      if (thinking) {
        turn = turn.substr(7);
      } else if (turn.rfind("</think>", 0) == 0) {
        turn = turn.substr(8);
      } else {
        continue;  // after a task token
      }
      ParsedMessage m;
      try {
        m = dsv4::chat::parse(turn, thinking);
      } catch (const ParseError& err) {
        // Message text is never escaped, so a turn whose text holds special
        // tokens is rejected by the official parser too.
        EXPECT_NE(std::string(err.what()).find("special token"), std::string::npos) << err.what();
        continue;
      }
      ++turns;
      for (const auto& tc : m.tool_calls) {
        EXPECT_NE(std::find(known.begin(), known.end(), std::make_pair(tc.name, tc.arguments)),
                  known.end())
            << tc.name << " " << tc.arguments;
        ++calls;
      }
    }
  }
  EXPECT_GT(turns, 10);
  EXPECT_GT(calls, 5);
}

}  // namespace
