// PCRE2 wrapper for the regexes of tokenizer.json. Hugging Face compiles them
// with Oniguruma (Ruby syntax); translate_oniguruma() maps the constructs whose
// meaning differs in PCRE2 so that both engines match the same strings.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4 {

// Oniguruma (Ruby syntax, UTF-8) pattern → PCRE2 pattern (compiled with
// PCRE2_UTF | PCRE2_UCP). Throws dsv4::Error for constructs it cannot map.
std::string translate_oniguruma(std::string_view pattern);

// Escapes every character of a literal so that it matches itself.
std::string regex_escape(std::string_view literal);

struct Match {
  uint32_t start, end;
};

class Regex {
 public:
  // `pattern` is in Oniguruma syntax; `what` names it in error messages.
  Regex(std::string_view pattern, const std::string& what);
  ~Regex();
  Regex(Regex&& other) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  Regex& operator=(Regex&&) = delete;

  // All matches in `subject`, found like the onig crate's find_iter (an
  // empty match right after the previous match is skipped by one character).
  // `subject` must be valid UTF-8: it is not checked again (PCRE2_NO_UTF_CHECK).
  // Thread-safe.
  void find_all(std::string_view subject, std::vector<Match>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
  std::string what_;
};

}  // namespace dsv4
