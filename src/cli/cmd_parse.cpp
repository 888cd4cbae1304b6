// dsv4 parse: the official V4 output parser, from the shell.
#include <cstdio>
#include <string>
#include <vector>

#include "chat/json_py.h"
#include "chat/parser.h"
#include "cli/command.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kParseUsage =
    R"(usage: dsv4 parse [--events] [--piece N]

Reads {"text": "<generated text>", "thinking_mode": "thinking"|"chat"} on stdin
(a golden parse case's "input") and prints the assistant message the official
DeepSeek V4 parser (parse_message_from_completion_text) returns, as JSON:

  {"role": "assistant", "content": ..., "reasoning_content": ...,
   "tool_calls": [{"type": "function", "function": {"name": ..., "arguments": ...}}]}

Text the official parser rejects prints the reason on stderr and exits 2.

options:
  --events    print the streaming parser's events instead, one JSON object a line
  --piece N   with --events, feed the text N bytes at a time (default 1)
)";

std::string event_json(const chat::ParseEvent& ev) {
  using T = chat::ParseEvent::Type;
  const char* names[] = {
      "reasoning", "content", "tool_call_start", "tool_call_arguments", "tool_call_end",
      "end",       "error"};
  chat::PyJson obj =
      chat::PyJson::object({{"type", chat::PyJson::string(names[static_cast<int>(ev.type)])}});
  if (ev.tool_index >= 0) obj.set("index", chat::PyJson::integer(ev.tool_index));
  if (ev.type != T::kEnd && ev.type != T::kToolCallEnd)
    obj.set("text", chat::PyJson::string(ev.text));
  return chat::py_json_dumps(obj) + "\n";
}

int run_parse(int argc, char** argv) {
  Args args("parse", argc, argv, {{"events", false}, {"piece", true}, {"help", false}});
  if (args.has("help")) {
    std::fputs(kParseUsage, stdout);
    return 0;
  }
  if (!args.positional().empty())
    fail("unexpected argument '", args.positional()[0], "' (the input is read from stdin)");
  const int64_t piece = args.get_int("piece", 1);
  if (piece < 1) fail("--piece must be at least 1, got ", piece);

  chat::PyJson input;
  try {
    input = chat::py_json_loads(read_stdin());
  } catch (const chat::PyJsonError& e) {
    fail("stdin is not valid JSON (expected {\"text\": ..., \"thinking_mode\": ...}): ", e.what());
  }
  const chat::PyJson* text = input.find("text");
  const chat::PyJson* mode = input.find("thinking_mode");
  if (!text || !text->is_string()) fail("the input object needs a string \"text\"");
  if (!mode || !mode->is_string()) fail("the input object needs a string \"thinking_mode\"");
  // As in the official parser, every mode other than "thinking" parses as chat.
  const bool thinking = mode->as_string() == "thinking";

  if (args.has("events")) {
    chat::OutputParser parser(thinking);
    std::string_view t(text->as_string());
    for (size_t i = 0; i < t.size(); i += static_cast<size_t>(piece))
      for (const auto& ev : parser.feed(t.substr(i, static_cast<size_t>(piece))))
        write_stdout(event_json(ev));
    for (const auto& ev : parser.finish()) write_stdout(event_json(ev));
    return parser.failed() ? 2 : 0;
  }
  try {
    write_stdout(chat::parse(text->as_string(), thinking).to_json_text() + "\n");
  } catch (const chat::ParseError& e) {
    std::fprintf(stderr, "dsv4 parse: the V4 parser rejects this text (%s): %s\n",
                 e.python_type().c_str(), e.what());
    return 2;
  }
  return 0;
}

}  // namespace

DSV4_COMMAND("parse", "generated text (JSON) on stdin -> parsed assistant message JSON", run_parse);

}  // namespace dsv4::cli
