// dsv4 tokenize / detokenize: the tokenizer of a model folder from the shell.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace dsv4::cli {
namespace {

constexpr const char* kTokenizeUsage =
    R"(usage: dsv4 tokenize [--model DIR] [--bos] [--tokens] [--no-added-tokens]

Reads text from stdin, byte for byte (it must be valid UTF-8; a trailing
newline is part of the text), and prints its token ids as one JSON array on
stdout, e.g. [2107,515,270]. Added-token strings such as <｜User｜> in the text
become their single ids; nothing is added to the text (no BOS) unless --bos.

options:
  --model DIR         folder holding tokenizer.json (default: the bundled demo model)
  --bos               prepend the BOS id (from tokenizer_config.json)
  --tokens            print the token strings instead of the ids, as a JSON array of
                      strings in tokenizer.json's byte-level form (e.g. "Ġworld")
  --no-added-tokens   do not recognise added-token strings: "<｜User｜>" is tokenized as
                      plain text (how untrusted user content should be tokenized)
)";

constexpr const char* kDetokenizeUsage =
    R"(usage: dsv4 detokenize [--model DIR] [--skip-special]

Reads a JSON array of token ids from stdin and writes the decoded text to
stdout (nothing appended). Byte sequences that are not valid UTF-8 are written
as U+FFFD, as Hugging Face tokenizers does.

options:
  --model DIR       folder holding tokenizer.json (default: the bundled demo model)
  --skip-special    drop tokens whose `special` flag is set (BOS, EOS, ...)
)";

std::string read_stdin() {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
  if (std::ferror(stdin)) fail("cannot read stdin");
  return data;
}

void write_stdout(const std::string& s) {
  if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size() || std::fflush(stdout) != 0)
    fail("cannot write to stdout");
}

int run_tokenize(int argc, char** argv) {
  Args args("tokenize", argc, argv,
            {{"model", true},
             {"bos", false},
             {"tokens", false},
             {"no-added-tokens", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kTokenizeUsage, stdout);
    return 0;
  }
  if (!args.positional().empty())
    fail("unexpected argument '", args.positional()[0], "' (the text is read from stdin)");
  auto tok = Tokenizer::load(args.has("model") ? args.get("model") : default_model_dir());
  const std::string text = read_stdin();
  std::vector<int32_t> ids;
  if (args.has("bos")) {
    if (tok->bos_id() < 0)
      fail("--bos: this tokenizer has no BOS token (no bos_token in tokenizer_config.json)");
    ids.push_back(tok->bos_id());
  }
  const auto body =
      args.has("no-added-tokens") ? tok->encode_without_added_tokens(text) : tok->encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  nlohmann::json out = nlohmann::json::array();
  if (args.has("tokens")) {
    for (int32_t id : ids) out.push_back(tok->token_string(id));
  } else {
    out = ids;
  }
  write_stdout(out.dump() + "\n");
  return 0;
}

int run_detokenize(int argc, char** argv) {
  Args args("detokenize", argc, argv, {{"model", true}, {"skip-special", false}, {"help", false}});
  if (args.has("help")) {
    std::fputs(kDetokenizeUsage, stdout);
    return 0;
  }
  if (!args.positional().empty())
    fail("unexpected argument '", args.positional()[0], "' (the ids are read from stdin)");
  auto tok = Tokenizer::load(args.has("model") ? args.get("model") : default_model_dir());
  nlohmann::json input;
  try {
    input = nlohmann::json::parse(read_stdin());
  } catch (const nlohmann::json::parse_error& e) {
    fail("stdin is not valid JSON (expected an array of token ids like [1,2,3]): ", e.what());
  }
  if (!input.is_array()) fail("stdin must be a JSON array of token ids, got a ", input.type_name());
  std::vector<int32_t> ids;
  ids.reserve(input.size());
  for (size_t i = 0; i < input.size(); ++i) {
    const auto& v = input[i];
    if (!v.is_number_integer())
      fail("element ", i, " of the id array is not an integer: ", v.dump());
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= tok->vocab_size() || !tok->is_valid_id(static_cast<int32_t>(id)))
      fail("token id ", id, " (element ", i, ") is not in the vocabulary (ids 0..",
           tok->vocab_size() - 1, ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  write_stdout(tok->decode(ids, args.has("skip-special")));
  return 0;
}

}  // namespace

DSV4_COMMAND("tokenize", "text on stdin -> JSON array of token ids", run_tokenize);
DSV4_COMMAND("detokenize", "JSON array of token ids on stdin -> text", run_detokenize);

}  // namespace dsv4::cli
