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
    R"(usage: dsv4 tokenize [--model DIR] [--bos] [--tokens] [--no-added-tokens] [--jsonl]

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
  --jsonl             batch mode: every stdin line is one JSON string; prints one JSON
                      array per line (the tokenizer is loaded once)
)";

constexpr const char* kDetokenizeUsage =
    R"(usage: dsv4 detokenize [--model DIR] [--skip-special] [--jsonl]

Reads a JSON array of token ids from stdin and writes the decoded text to
stdout (nothing appended). Byte sequences that are not valid UTF-8 are written
as U+FFFD, as Hugging Face tokenizers does.

options:
  --model DIR       folder holding tokenizer.json (default: the bundled demo model)
  --skip-special    drop tokens whose `special` flag is set (BOS, EOS, ...)
  --jsonl           batch mode: every stdin line is one JSON array of ids; prints the
                    decoded text of each as one JSON string per line
)";

// The ids (or token strings) of one text, as a JSON array.
nlohmann::json tokenize_one(const Tokenizer& tok, const Args& args, const std::string& text) {
  std::vector<int32_t> ids;
  if (args.has("bos")) {
    if (tok.bos_id() < 0)
      fail("--bos: this tokenizer has no BOS token (no bos_token in tokenizer_config.json)");
    ids.push_back(tok.bos_id());
  }
  const auto body =
      args.has("no-added-tokens") ? tok.encode_without_added_tokens(text) : tok.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  nlohmann::json out = nlohmann::json::array();
  if (args.has("tokens")) {
    for (int32_t id : ids) out.push_back(tok.token_string(id));
  } else {
    out = ids;
  }
  return out;
}

// Calls fn(line_number, parsed JSON) for every non-empty stdin line.
template <typename Fn>
void for_each_jsonl_line(const std::string& input, Fn fn) {
  size_t pos = 0, line_no = 0;
  while (pos < input.size()) {
    size_t end = input.find('\n', pos);
    if (end == std::string::npos) end = input.size();
    const std::string line = input.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json v;
    try {
      v = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail("--jsonl: line ", line_no, " is not valid JSON: ", e.what());
    }
    fn(line_no, v);
  }
}

int run_tokenize(int argc, char** argv) {
  Args args("tokenize", argc, argv,
            {{"model", true},
             {"bos", false},
             {"tokens", false},
             {"no-added-tokens", false},
             {"jsonl", false},
             {"help", false}});
  if (args.has("help")) {
    std::fputs(kTokenizeUsage, stdout);
    return 0;
  }
  if (!args.positional().empty())
    fail("unexpected argument '", args.positional()[0], "' (the text is read from stdin)");
  auto tok = Tokenizer::load(args.has("model") ? args.get("model") : default_model_dir());
  const std::string input = read_stdin();
  if (!args.has("jsonl")) {
    write_stdout(tokenize_one(*tok, args, input).dump() + "\n");
    return 0;
  }
  std::string out;
  for_each_jsonl_line(input, [&](size_t line_no, const nlohmann::json& v) {
    if (!v.is_string()) fail("--jsonl: line ", line_no, " must be a JSON string");
    out += tokenize_one(*tok, args, v.get<std::string>()).dump() + "\n";
  });
  write_stdout(out);
  return 0;
}

// The ids of a JSON array, each checked against the vocabulary.
std::vector<int32_t> parse_ids(const Tokenizer& tok, const nlohmann::json& input,
                               const std::string& where) {
  if (!input.is_array())
    fail(where, " must be a JSON array of token ids, got a ", input.type_name());
  std::vector<int32_t> ids;
  ids.reserve(input.size());
  for (size_t i = 0; i < input.size(); ++i) {
    const auto& v = input[i];
    if (!v.is_number_integer())
      fail(where, ": element ", i, " of the id array is not an integer: ", v.dump());
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= tok.vocab_size() || !tok.is_valid_id(static_cast<int32_t>(id)))
      fail(where, ": token id ", id, " (element ", i, ") is not in the vocabulary (ids 0..",
           tok.vocab_size() - 1, ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

int run_detokenize(int argc, char** argv) {
  Args args("detokenize", argc, argv,
            {{"model", true}, {"skip-special", false}, {"jsonl", false}, {"help", false}});
  if (args.has("help")) {
    std::fputs(kDetokenizeUsage, stdout);
    return 0;
  }
  if (!args.positional().empty())
    fail("unexpected argument '", args.positional()[0], "' (the ids are read from stdin)");
  auto tok = Tokenizer::load(args.has("model") ? args.get("model") : default_model_dir());
  const bool skip = args.has("skip-special");
  if (args.has("jsonl")) {
    std::string out;
    for_each_jsonl_line(read_stdin(), [&](size_t line_no, const nlohmann::json& v) {
      const auto ids = parse_ids(*tok, v, "--jsonl: line " + std::to_string(line_no));
      out += nlohmann::json(tok->decode(ids, skip))
                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
             "\n";
    });
    write_stdout(out);
    return 0;
  }
  nlohmann::json input;
  try {
    input = nlohmann::json::parse(read_stdin());
  } catch (const nlohmann::json::parse_error& e) {
    fail("stdin is not valid JSON (expected an array of token ids like [1,2,3]): ", e.what());
  }
  write_stdout(tok->decode(parse_ids(*tok, input, "stdin"), skip));
  return 0;
}

}  // namespace

DSV4_COMMAND("tokenize", "text on stdin -> JSON array of token ids", run_tokenize);
DSV4_COMMAND("detokenize", "JSON array of token ids on stdin -> text", run_detokenize);

}  // namespace dsv4::cli
