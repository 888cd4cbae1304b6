// UTF-8 helpers shared by the tokenizer: validation, the maximal-subpart rule
// Rust's String::from_utf8_lossy uses, and code point encoding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv4::utf8 {

enum class Status { kValid, kTruncated, kInvalid };

struct Step {
  size_t len;  // kValid: the character's length; otherwise the maximal invalid subpart (>= 1)
  Status status;
};

// Examines the sequence starting at s[0] (n >= 1 bytes available).
// kTruncated: all n bytes form a proper prefix of a valid sequence, so more
// bytes could still complete it.
Step step(const uint8_t* s, size_t n);

// Offset of the first byte that is not part of a valid UTF-8 character, or
// npos if the whole string is valid.
size_t find_invalid(std::string_view bytes);

// Length of the character starting at s[0] of a string known to be valid.
inline size_t char_len(uint8_t lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Decodes the character at s (valid UTF-8 assumed).
char32_t decode(const uint8_t* s, size_t* len);

void append(std::string& out, char32_t cp);

}  // namespace dsv4::utf8
