// dsv4 render: the official V4 chat encoding of a conversation, from the shell.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/encoder.h"
#include "cli/command.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kRenderUsage =
    R"(usage: dsv4 render [--model DIR] [--ids] [--anthropic]

Reads a conversation as one JSON object on stdin and writes the prompt the
official DeepSeek V4 encoder (encoding_dsv4.py) produces, byte for byte, to
stdout (no newline added). The object is a golden encode case's "input":

  {"messages": [...OpenAI-style messages...], "thinking_mode": "thinking"|"chat",
   "tools": [...], "tools_attached_to": 0, "reasoning_effort": "high"|"max",
   "drop_thinking": true, "add_default_bos_token": true, "context": [...]}

An input the official encoder rejects prints the reason on stderr and exits 2.

options:
  --ids          print the prompt's token ids (JSON array) instead of its text
  --model DIR    folder holding tokenizer.json, for --ids (default: the bundled demo model)
  --anthropic    stdin is an Anthropic Messages request ({"system", "messages",
                 "tools", "thinking"}), mapped onto the same conversation first
)";

int run_render(int argc, char** argv) {
  Args args("render", argc, argv,
            {{"model", true}, {"ids", false}, {"anthropic", false}, {"help", false}});
  if (args.has("help")) {
    std::fputs(kRenderUsage, stdout);
    return 0;
  }
  if (!args.positional().empty())
    fail("unexpected argument '", args.positional()[0], "' (the conversation is read from stdin)");
  // Load the tokenizer first so a bad --model is reported before any work.
  std::shared_ptr<const Tokenizer> tok;
  if (args.has("ids"))
    tok = Tokenizer::load(args.has("model") ? args.get("model") : default_model_dir());

  chat::PyJson input;
  try {
    input = chat::py_json_loads(read_stdin());
  } catch (const chat::PyJsonError& e) {
    fail("stdin is not valid JSON (expected a conversation object): ", e.what());
  }
  std::string prompt;
  try {
    if (args.has("anthropic")) input = chat::anthropic_to_conversation(input);
    prompt = chat::render(input);
  } catch (const chat::EncodeError& e) {
    std::fprintf(stderr, "dsv4 render: the V4 encoder rejects this conversation (%s): %s\n",
                 e.python_type().c_str(), e.what());
    return 2;
  } catch (const Error& e) {
    std::fprintf(stderr, "dsv4 render: %s\n", e.what());
    return 2;
  }
  if (tok) {
    nlohmann::json ids = tok->encode(prompt);
    write_stdout(ids.dump() + "\n");
  } else {
    write_stdout(prompt);
  }
  return 0;
}

}  // namespace

DSV4_COMMAND("render", "conversation JSON on stdin -> V4 prompt text (or --ids)", run_render);

}  // namespace dsv4::cli
