#include "tokenizer/utf8.h"

#include "tokenizer/tokenizer.h"

namespace dsv4::utf8 {

Step step(const uint8_t* s, size_t n) {
  const uint8_t b0 = s[0];
  if (b0 < 0x80) return {1, Status::kValid};
  // Allowed range of the second byte depends on the lead byte (this excludes
  // overlong forms, surrogates and code points above U+10FFFF); the rest are
  // plain continuation bytes. This is the table of Unicode §3.9 (D92).
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    need = 2;
  } else if (b0 == 0xED) {
    need = 2, hi = 0x9F;
  } else if (b0 == 0xF0) {
    need = 3, lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    need = 3;
  } else if (b0 == 0xF4) {
    need = 3, hi = 0x8F;
  } else {
    return {1, Status::kInvalid};
  }
  for (size_t i = 1; i <= need; ++i) {
    if (i >= n) return {i, Status::kTruncated};
    const uint8_t b = s[i];
    const uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return {i, Status::kInvalid};
  }
  return {need + 1, Status::kValid};
}

size_t find_invalid(std::string_view bytes) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path: 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    Step st = step(s + i, n - i);
    if (st.status != Status::kValid) return i;
    i += st.len;
  }
  return std::string_view::npos;
}

char32_t decode(const uint8_t* s, size_t* len) {
  const uint8_t b0 = s[0];
  if (b0 < 0x80) return *len = 1, b0;
  if (b0 < 0xE0) return *len = 2, ((b0 & 0x1F) << 6) | (s[1] & 0x3F);
  if (b0 < 0xF0) return *len = 3, ((b0 & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
  *len = 4;
  return ((b0 & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace dsv4::utf8

namespace dsv4 {

std::string utf8_lossy(std::string_view bytes) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  std::string out;
  out.reserve(n);
  size_t i = 0;
  while (i < n) {
    utf8::Step st = utf8::step(s + i, n - i);
    if (st.status == utf8::Status::kValid) {
      out.append(bytes.data() + i, st.len);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
    }
    i += st.len;
  }
  return out;
}

}  // namespace dsv4
