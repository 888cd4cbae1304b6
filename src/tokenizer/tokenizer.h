// Byte-level BPE tokenizer that loads a Hugging Face `tokenizer.json` (the
// DeepSeek V3/V4 family) and reproduces Hugging Face `tokenizers` 0.23
// exactly: added tokens are split off the raw text first, the remaining text
// goes through the normalizer, the pre-tokenizer (Split regexes, ByteLevel)
// and BPE. Like Hugging Face, added-token ids are assigned in file order (a
// content in the vocab keeps its vocab id, the others count on from the
// number of vocab entries); for a file Hugging Face wrote these are the ids
// stored in it.
//
// Supported components (others are rejected at load, by name): normalizer
// Sequence/Replace/Prepend; pre-tokenizer Sequence/Split/Digits/ByteLevel
// (ByteLevel last); model BPE (unk_token, fuse_unk, byte_fallback,
// ignore_merges; merges as "a b" or ["a", "b"]); decoder ByteLevel.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4 {

struct TokenizerImpl;

class Tokenizer {
 public:
  // dir_or_file: a folder holding tokenizer.json (and optionally
  // tokenizer_config.json) or the json file itself. Throws dsv4::Error naming
  // the file and the unsupported/invalid field.
  static std::shared_ptr<const Tokenizer> load(const std::string& dir_or_file);

  // Special tokens in text are matched; nothing is added (no BOS). Throws
  // dsv4::Error if text is not valid UTF-8. Thread-safe.
  std::vector<int32_t> encode(std::string_view text) const;

  // Like encode(), but added-token strings are NOT recognised: a literal
  // "<｜User｜>" in user-supplied content becomes ordinary BPE tokens, so it
  // cannot act as a control token.
  std::vector<int32_t> encode_without_added_tokens(std::string_view text) const;

  // Hugging Face semantics: ids that are not in the vocabulary produce no text;
  // invalid UTF-8 in the joined bytes becomes U+FFFD (one per maximal invalid
  // subpart). skip_special_tokens drops tokens whose `special` flag is true.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The vocab string as in tokenizer.json (e.g. "Ġhello"); an added token
  // gives its content (normalized, if it is a `normalized` token and the
  // normalizer changes it, as Hugging Face's id_to_token does). Throws
  // dsv4::Error for an id not in the vocabulary.
  std::string token_string(int32_t id) const;

  // Exact vocab/added-token lookup (added tokens take precedence).
  std::optional<int32_t> token_id(std::string_view token) const;

  // True if decode(skip_special_tokens) drops this id: Hugging Face decides by
  // the token's string, i.e. it is the content of an added token marked
  // `special`.
  bool is_special(int32_t id) const;
  // True if id names a vocab entry or an added token (there may be holes).
  bool is_valid_id(int32_t id) const;

  int32_t vocab_size() const;  // max id + 1

  // From tokenizer_config.json (bos_token/eos_token); without one, from a
  // special added token with a well-known name. -1 if unknown.
  int32_t bos_id() const;
  int32_t eos_id() const;

  // The raw bytes a token stands for (byte-level decoded; may be a partial
  // UTF-8 sequence). Empty for an id not in the vocabulary.
  std::string token_bytes(int32_t id) const;

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

 private:
  Tokenizer();
  std::unique_ptr<TokenizerImpl> impl_;
};

// Incremental decoding of one generated sequence: text is emitted only once
// its UTF-8 sequences are complete, and the concatenation of everything
// push() and flush() return equals tok->decode(all ids, skip_special_tokens).
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(std::shared_ptr<const Tokenizer> tok,
                                bool skip_special_tokens = false);
  std::string push(int32_t id);  // newly completed text (possibly empty)
  std::string flush();           // whatever is left (invalid trailing bytes as U+FFFD, as HF does)

 private:
  std::shared_ptr<const Tokenizer> tok_;
  bool skip_special_;
  std::string pending_;  // bytes not yet emitted: at most one incomplete UTF-8 sequence
};

// Converts bytes to text like Rust's String::from_utf8_lossy: one U+FFFD per
// maximal invalid subpart.
std::string utf8_lossy(std::string_view bytes);

}  // namespace dsv4
