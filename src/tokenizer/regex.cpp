#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <algorithm>
#include <cctype>

#include "tokenizer/utf8.h"
#include "util/error.h"

namespace dsv4 {
namespace {

// Oniguruma's \s in UTF-8 mode is the Unicode White_Space property. PCRE2's
// \s with UCP omits U+0085 (NEL), so spell the set out.
constexpr const char* kSpaceItems =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
// Oniguruma's \w for Unicode: Alphabetic, Mark, Decimal_Number, Connector_Punctuation.
constexpr const char* kWordItems = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}";
constexpr const char* kHexItems = "0-9A-Fa-f";  // Oniguruma \h is a hex digit

// Hugging Face's Oniguruma has Unicode 16 data, PCRE2 10.42 has Unicode 14:
// the code points assigned in between are added to each property.
struct UnicodeDelta {
  const char* property;  // general category ("L", "Nd", ...) or "w"
  const char* items;     // PCRE2 class items
};
constexpr UnicodeDelta kUnicodeDelta[] = {
#include "tokenizer/unicode_delta.inc"
};

const char* unicode_delta(std::string_view property) {
  for (const UnicodeDelta& d : kUnicodeDelta)
    if (property == d.property) return d.items;
  return "";
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

// Per-thread scratch: PCRE2 match data and a JIT stack large enough for long
// whitespace runs (the default 32 KiB is not).
struct Scratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  Scratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    if (!data || !context || !stack) fail("out of memory allocating PCRE2 match data");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~Scratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

std::string translate_oniguruma(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  int class_depth = 0;  // inside [...]; Oniguruma allows nested classes
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) fail("regex ends with a lone backslash: ", p);
      const char e = p[++i];
      const bool in_class = class_depth > 0;
      auto items = [&](const char* set, bool negated) {
        if (!in_class) {
          out += negated ? "[^" : "[";
          out += set;
          out += "]";
        } else if (!negated) {
          out += set;
        } else {
          // A negated set cannot be subtracted inside a class: keep PCRE2's own
          // meaning, which differs only for a few code points.
          out += '\\';
          out += e;
        }
      };
      switch (e) {
        case 's':
          items(kSpaceItems, false);
          break;
        case 'S':
          items(kSpaceItems, true);
          break;
        case 'w':
        case 'W':
          items((std::string(kWordItems) + unicode_delta("w")).c_str(), e == 'W');
          break;
        case 'd':
        case 'D':
          items((std::string("\\p{Nd}") + unicode_delta("Nd")).c_str(), e == 'D');
          break;
        case 'p':
        case 'P': {
          // \p{X}, \pX, \P{X}, \p{^X}: add the code points newer Unicode put in X.
          std::string name;
          if (i + 1 < p.size() && p[i + 1] == '{') {
            const size_t close = p.find('}', i + 2);
            if (close == std::string_view::npos) fail("unterminated \\", e, "{ in regex: ", p);
            name = std::string(p.substr(i + 2, close - i - 2));
            i = close;
          } else if (i + 1 < p.size()) {
            name = std::string(1, p[++i]);
          } else {
            fail("regex ends with \\", e, ": ", p);
          }
          bool negated = e == 'P';
          if (!name.empty() && name[0] == '^') negated = !negated, name.erase(0, 1);
          const char* delta = unicode_delta(name);
          if (!*delta || (negated && in_class)) {
            // Nothing to add, or a negation inside a class (cannot subtract
            // there): PCRE2's own, Unicode 14, meaning.
            out += str_cat(negated ? "\\P{" : "\\p{", name, "}");
          } else {
            items(str_cat("\\p{", name, "}", delta).c_str(), negated);
          }
          break;
        }
        case 'h':
          items(kHexItems, false);
          break;
        case 'H':
          items(kHexItems, true);
          break;
        case 'u': {
          // \uHHHH (Ruby syntax) → \x{HHHH}
          if (i + 4 >= p.size()) fail("bad \\u escape in regex (expected 4 hex digits): ", p);
          std::string hex(p.substr(i + 1, 4));
          if (hex.size() != 4 || !std::all_of(hex.begin(), hex.end(), [](char h) {
                return std::isxdigit(static_cast<unsigned char>(h));
              }))
            fail("bad \\u escape in regex (expected 4 hex digits): ", p);
          out += "\\x{" + hex + "}";
          i += 4;
          break;
        }
        default:
          out += '\\';
          out += e;
      }
      continue;
    }
    if (c == '[') {
      // POSIX bracket [:alpha:] inside a class is not a nested class.
      if (class_depth > 0 && i + 1 < p.size() && p[i + 1] == ':') {
        const size_t close = p.find(":]", i + 2);
        if (close != std::string_view::npos) {
          out.append(p.substr(i, close + 2 - i));
          i = close + 1;
          continue;
        }
      }
      if (class_depth > 0) fail("regex uses a nested character class, which PCRE2 lacks: ", p);
      ++class_depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both engines.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && class_depth > 0) {
      --class_depth;
    } else if (c == '&' && class_depth > 0 && i + 1 < p.size() && p[i + 1] == '&') {
      fail("regex uses class intersection (&&), which PCRE2 lacks: ", p);
    }
    out += c;
  }
  return out;
}

std::string regex_escape(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u) && c != '_' && u >= 0x20) out += '\\';
    if (u < 0x20) {
      out += str_cat("\\x{", std::hex, static_cast<int>(u), "}");
      continue;
    }
    out += c;
  }
  return out;
}

Regex::Regex(std::string_view pattern, const std::string& what) : what_(what) {
  const std::string translated = translate_oniguruma(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                             PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
  if (!code)
    fail(what, ": cannot compile regex /", pattern, "/ (as PCRE2 /", translated,
         "/): ", pcre2_message(err), " at offset ", offset);
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

Regex::Regex(Regex&& other) noexcept
    : code_(other.code_), jit_(other.jit_), what_(std::move(other.what_)) {
  other.code_ = nullptr;
}

void Regex::find_all(std::string_view subject, std::vector<Match>& out) const {
  out.clear();
  auto* code = static_cast<pcre2_code*>(code_);
  Scratch& s = scratch();
  const auto* sub = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const size_t n = subject.size();
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= n) {
    const int rc =
        jit_ ? pcre2_jit_match(code, sub, n, last_end, PCRE2_NO_UTF_CHECK, s.data, s.context)
             : pcre2_match(code, sub, n, last_end, PCRE2_NO_UTF_CHECK, s.data, s.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail(what_, ": regex match failed on a ", n, "-byte piece: ", pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
    const size_t start = ov[0], end = ov[1];
    if (start == end && have_last && last_match_end == end) {
      // Same rule as the onig crate: no empty match right after a match.
      if (last_end >= n) break;
      last_end += utf8::char_len(static_cast<uint8_t>(subject[last_end]));
      continue;
    }
    last_end = end;
    have_last = true;
    last_match_end = end;
    out.push_back({static_cast<uint32_t>(start), static_cast<uint32_t>(end)});
  }
}

}  // namespace dsv4
