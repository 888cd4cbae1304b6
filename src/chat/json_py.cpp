#include "chat/json_py.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "tokenizer/utf8.h"

namespace dsv4::chat {

PyJson PyJson::boolean(bool b) {
  PyJson v;
  v.kind_ = Kind::kBool;
  v.bool_ = b;
  return v;
}

PyJson PyJson::integer(std::string digits) {
  PyJson v;
  v.kind_ = Kind::kInt;
  // Python has no negative zero integer: json.loads("-0") is 0.
  if (digits == "-0") digits = "0";
  v.text_ = std::move(digits);
  return v;
}

PyJson PyJson::floating(double f) {
  PyJson v;
  v.kind_ = Kind::kFloat;
  v.float_ = f;
  return v;
}

PyJson PyJson::string(std::string s) {
  PyJson v;
  v.kind_ = Kind::kString;
  v.text_ = std::move(s);
  return v;
}

PyJson PyJson::array(Array items) {
  PyJson v;
  v.kind_ = Kind::kArray;
  v.array_ = std::move(items);
  return v;
}

PyJson PyJson::object(Object members) {
  PyJson v;
  v.kind_ = Kind::kObject;
  for (auto& [key, value] : members) v.set(std::move(key), std::move(value));
  return v;
}

const PyJson* PyJson::find(std::string_view key) const {
  if (kind_ != Kind::kObject) return nullptr;
  for (const auto& [k, v] : object_)
    if (k == key) return &v;
  return nullptr;
}

void PyJson::set(std::string key, PyJson value) {
  for (auto& [k, v] : object_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  object_.emplace_back(std::move(key), std::move(value));
}

void PyJson::erase(std::string_view key) {
  for (auto it = object_.begin(); it != object_.end(); ++it) {
    if (it->first == key) {
      object_.erase(it);
      return;
    }
  }
}

namespace {

bool is_number(const PyJson& v) {
  return v.is_bool() || v.is_int() || v.is_float();
}

// Numbers compare by value across bool/int/float, as in Python. Exact for
// ints that fit a long double mantissa, which covers every realistic id.
long double number_value(const PyJson& v) {
  if (v.is_bool()) return v.as_bool() ? 1 : 0;
  if (v.is_float()) return v.as_float();
  return std::strtold(v.int_digits().c_str(), nullptr);
}

}  // namespace

bool PyJson::operator==(const PyJson& other) const {
  if (is_number(*this) && is_number(other)) {
    if (is_int() && other.is_int()) return text_ == other.text_;
    return number_value(*this) == number_value(other);
  }
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case Kind::kNull:
      return true;
    case Kind::kString:
      return text_ == other.text_;
    case Kind::kArray:
      return array_ == other.array_;
    case Kind::kObject: {
      if (object_.size() != other.object_.size()) return false;
      for (const auto& [k, v] : object_) {
        const PyJson* o = other.find(k);
        if (!o || !(*o == v)) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

bool PyJson::truthy() const {
  switch (kind_) {
    case Kind::kNull:
      return false;
    case Kind::kBool:
      return bool_;
    case Kind::kInt:
      return text_ != "0";
    case Kind::kFloat:
      return float_ != 0.0;  // NaN is truthy, as in Python
    case Kind::kString:
      return !text_.empty();
    case Kind::kArray:
      return !array_.empty();
    case Kind::kObject:
      return !object_.empty();
  }
  return false;
}

// ---------------------------------------------------------------------------
// json.loads

namespace {

class Loader {
 public:
  explicit Loader(std::string_view s) : s_(s) {}

  PyJson run() {
    if (s_.size() >= 3 && s_.substr(0, 3) == "\xEF\xBB\xBF")
      error("Unexpected UTF-8 BOM (decode using utf-8-sig)");
    skip_ws();
    PyJson v = value();
    skip_ws();
    if (pos_ != s_.size()) error("Extra data");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    throw PyJsonError(str_cat(what, " at byte ", pos_));
  }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  bool consume(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  PyJson value() {
    if (++depth_ > kMaxDepth) error("Nesting too deep");
    PyJson v = value_inner();
    --depth_;
    return v;
  }

  PyJson value_inner() {
    if (pos_ >= s_.size()) error("Expecting value");
    char c = s_[pos_];
    if (c == '"') return PyJson::string(string_body());
    if (c == '{') return object();
    if (c == '[') return array();
    if (c == 'n' && consume("null")) return PyJson();
    if (c == 't' && consume("true")) return PyJson::boolean(true);
    if (c == 'f' && consume("false")) return PyJson::boolean(false);
    if (c == '-' || (c >= '0' && c <= '9')) {
      if (auto number = maybe_number()) return *number;
    }
    if (c == 'N' && consume("NaN")) return PyJson::floating(std::nan(""));
    if (c == 'I' && consume("Infinity")) return PyJson::floating(HUGE_VAL);
    if (c == '-' && consume("-Infinity")) return PyJson::floating(-HUGE_VAL);
    error("Expecting value");
  }

  // Python's NUMBER_RE: (-?(?:0|[1-9]\d*))(\.\d+)?([eE][-+]?\d+)?, matched as
  // a prefix; whatever follows is the caller's problem ("Extra data" etc.).
  std::unique_ptr<PyJson> maybe_number() {
    size_t p = pos_;
    auto digit = [&](size_t i) { return i < s_.size() && s_[i] >= '0' && s_[i] <= '9'; };
    if (s_[p] == '-') ++p;
    if (!digit(p)) return nullptr;
    if (s_[p] == '0') {
      ++p;
    } else {
      while (digit(p)) ++p;
    }
    size_t int_end = p;
    bool is_float = false;
    if (p < s_.size() && s_[p] == '.' && digit(p + 1)) {
      ++p;
      while (digit(p)) ++p;
      is_float = true;
    }
    if (p < s_.size() && (s_[p] == 'e' || s_[p] == 'E')) {
      size_t q = p + 1;
      if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
      if (digit(q)) {
        while (digit(q)) ++q;
        p = q;
        is_float = true;
      }
    }
    std::string text(s_.substr(pos_, p - pos_));
    if (!is_float) {
      size_t ndigits = int_end - pos_ - (s_[pos_] == '-' ? 1 : 0);
      if (ndigits > 4300) error("Exceeds the limit (4300 digits) for integer string conversion");
      pos_ = p;
      return std::make_unique<PyJson>(PyJson::integer(std::move(text)));
    }
    pos_ = p;
    // strtod rounds correctly and overflows to +-inf, like Python's float().
    return std::make_unique<PyJson>(PyJson::floating(std::strtod(text.c_str(), nullptr)));
  }

  int hex4(size_t at) const {
    if (at + 4 > s_.size()) return -1;
    int v = 0;
    for (size_t i = at; i < at + 4; ++i) {
      char c = s_[i];
      int d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        return -1;
      }
      v = v * 16 + d;
    }
    return v;
  }

  std::string string_body() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) error("Unterminated string starting");
      unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) error("Invalid control character");
      if (c != '\\') {
        out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      if (pos_ + 1 >= s_.size()) error("Unterminated string starting");
      char e = s_[pos_ + 1];
      pos_ += 2;
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          int cp = hex4(pos_);
          if (cp < 0) error("Invalid \\uXXXX escape");
          pos_ += 4;
          uint32_t code = static_cast<uint32_t>(cp);
          if (code >= 0xD800 && code <= 0xDBFF && s_.substr(pos_, 2) == "\\u") {
            int low = hex4(pos_ + 2);
            if (low >= 0xDC00 && low <= 0xDFFF) {
              code = 0x10000 + ((code - 0xD800) << 10) + (static_cast<uint32_t>(low) - 0xDC00);
              pos_ += 6;
            }
          }
          // Lone surrogates (which Python keeps) come out in the 3-byte form (WTF-8).
          utf8::append(out, static_cast<char32_t>(code));
          break;
        }
        default:
          pos_ -= 1;
          error("Invalid \\escape");
      }
    }
  }

  PyJson object() {
    ++pos_;
    PyJson obj = PyJson::object();
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return obj;
    }
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] != '"')
        error("Expecting property name enclosed in double quotes");
      std::string key = string_body();
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') error("Expecting ':' delimiter");
      ++pos_;
      skip_ws();
      PyJson v = value();
      obj.set(std::move(key), std::move(v));
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return obj;
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') error("Expecting ',' delimiter");
      ++pos_;
      skip_ws();
    }
  }

  PyJson array() {
    ++pos_;
    PyJson arr = PyJson::array();
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return arr;
    }
    while (true) {
      arr.push_back(value());
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return arr;
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') error("Expecting ',' delimiter");
      ++pos_;
      skip_ws();
    }
  }

  // Python raises RecursionError long before this on deep input; the bound
  // keeps our recursion off the end of the stack.
  static constexpr int kMaxDepth = 900;
  std::string_view s_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

PyJson py_json_loads(std::string_view text) {
  return Loader(text).run();
}

// ---------------------------------------------------------------------------
// json.dumps / repr

std::string py_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // "-d.ddde+XX": shortest round-trip digits
  bool negative = sci[0] == '-';
  size_t e_pos = sci.find('e');
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e_pos; ++i)
    if (sci[i] != '.') digits += sci[i];
  int exponent = std::atoi(sci.c_str() + e_pos + 1);
  // Python's repr uses the shortest digits and switches to exponent form
  // when the decimal point position is <= -4 or > 16.
  int decpt = exponent + 1;
  int nd = static_cast<int>(digits.size());
  std::string out = negative ? "-" : "";
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (nd > 1) out += "." + digits.substr(1);
    out += exponent < 0 ? "e-" : "e+";
    int a = exponent < 0 ? -exponent : exponent;
    if (a < 10) out += '0';
    out += std::to_string(a);
  } else if (decpt <= 0) {
    out += "0." + std::string(-decpt, '0') + digits;
  } else if (decpt >= nd) {
    out += digits + std::string(decpt - nd, '0') + ".0";
  } else {
    out += digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  return out;
}

void py_json_dumps_string(std::string_view s, std::string& out) {
  static const char* kHex = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += ch;  // ensure_ascii=False: everything else verbatim
        }
    }
  }
  out += '"';
}

namespace {

void dumps_into(const PyJson& v, std::string& out) {
  switch (v.kind()) {
    case PyJson::Kind::kNull:
      out += "null";
      break;
    case PyJson::Kind::kBool:
      out += v.as_bool() ? "true" : "false";
      break;
    case PyJson::Kind::kInt:
      out += v.int_digits();
      break;
    case PyJson::Kind::kFloat: {
      double f = v.as_float();
      if (std::isnan(f)) {
        out += "NaN";
      } else if (std::isinf(f)) {
        out += f > 0 ? "Infinity" : "-Infinity";
      } else {
        out += py_float_repr(f);
      }
      break;
    }
    case PyJson::Kind::kString:
      py_json_dumps_string(v.as_string(), out);
      break;
    case PyJson::Kind::kArray: {
      out += '[';
      bool first = true;
      for (const auto& item : v.items()) {
        if (!first) out += ", ";
        first = false;
        dumps_into(item, out);
      }
      out += ']';
      break;
    }
    case PyJson::Kind::kObject: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : v.members()) {
        if (!first) out += ", ";
        first = false;
        py_json_dumps_string(key, out);
        out += ": ";
        dumps_into(item, out);
      }
      out += '}';
      break;
    }
  }
}

// Decodes one UTF-8 sequence at s[i] (lenient: a bad byte is returned as itself).
uint32_t next_code_point(std::string_view s, size_t& i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + len > s.size()) len = 1;
  if (len == 1) {
    ++i;
    return c;
  }
  uint32_t cp = c & (0xFF >> (len + 1));
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

// Python's str.isprintable() for the code points that matter in practice:
// controls, format characters, separators other than space, surrogates and
// private use are escaped by repr().
bool py_printable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return false;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) ||
      (cp >= 0x205F && cp <= 0x2064) || cp == 0x3000 || cp == 0xFEFF)
    return false;
  if ((cp >= 0xD800 && cp <= 0xF8FF) || cp == 0xFFFE || cp == 0xFFFF) return false;
  if (cp >= 0xF0000) return false;
  return true;
}

void repr_string(std::string_view s, std::string& out) {
  static const char* kHex = "0123456789abcdef";
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  out += quote;
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    uint32_t cp = next_code_point(s, i);
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (py_printable(cp)) {
      out.append(s.substr(start, i - start));
    } else {
      int width = cp < 0x100 ? 2 : cp < 0x10000 ? 4 : 8;
      out += width == 2 ? "\\x" : width == 4 ? "\\u" : "\\U";
      for (int k = width - 1; k >= 0; --k) out += kHex[(cp >> (4 * k)) & 15];
    }
  }
  out += quote;
}

void repr_into(const PyJson& v, std::string& out) {
  switch (v.kind()) {
    case PyJson::Kind::kNull:
      out += "None";
      break;
    case PyJson::Kind::kBool:
      out += v.as_bool() ? "True" : "False";
      break;
    case PyJson::Kind::kInt:
      out += v.int_digits();
      break;
    case PyJson::Kind::kFloat:
      out += py_float_repr(v.as_float());
      break;
    case PyJson::Kind::kString:
      repr_string(v.as_string(), out);
      break;
    case PyJson::Kind::kArray: {
      out += '[';
      bool first = true;
      for (const auto& item : v.items()) {
        if (!first) out += ", ";
        first = false;
        repr_into(item, out);
      }
      out += ']';
      break;
    }
    case PyJson::Kind::kObject: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : v.members()) {
        if (!first) out += ", ";
        first = false;
        repr_string(key, out);
        out += ": ";
        repr_into(item, out);
      }
      out += '}';
      break;
    }
  }
}

}  // namespace

std::string py_json_dumps(const PyJson& value) {
  std::string out;
  dumps_into(value, out);
  return out;
}

std::string py_repr(const PyJson& value) {
  std::string out;
  repr_into(value, out);
  return out;
}

std::string py_str(const PyJson& value) {
  if (value.is_string()) return value.as_string();
  return py_repr(value);
}

// ---------------------------------------------------------------------------
// nlohmann conversions

PyJson from_nlohmann(const nlohmann::ordered_json& j) {
  using V = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case V::null:
    case V::discarded:
      return PyJson();
    case V::boolean:
      return PyJson::boolean(j.get<bool>());
    case V::number_integer:
      return PyJson::integer(std::to_string(j.get<int64_t>()));
    case V::number_unsigned:
      return PyJson::integer(std::to_string(j.get<uint64_t>()));
    case V::number_float:
      return PyJson::floating(j.get<double>());
    case V::string:
      return PyJson::string(j.get<std::string>());
    case V::array: {
      PyJson arr = PyJson::array();
      for (const auto& item : j) arr.push_back(from_nlohmann(item));
      return arr;
    }
    case V::object: {
      PyJson obj = PyJson::object();
      for (const auto& [key, item] : j.items()) obj.set(key, from_nlohmann(item));
      return obj;
    }
    case V::binary:
      break;
  }
  fail("binary JSON values are not supported in chat messages");
}

nlohmann::ordered_json to_nlohmann(const PyJson& v) {
  switch (v.kind()) {
    case PyJson::Kind::kNull:
      return nullptr;
    case PyJson::Kind::kBool:
      return v.as_bool();
    case PyJson::Kind::kInt: {
      const std::string& d = v.int_digits();
      int64_t i;
      auto r = std::from_chars(d.data(), d.data() + d.size(), i);
      if (r.ec == std::errc() && r.ptr == d.data() + d.size()) return i;
      uint64_t u;
      auto ru = std::from_chars(d.data(), d.data() + d.size(), u);
      if (ru.ec == std::errc() && ru.ptr == d.data() + d.size()) return u;
      return std::strtod(d.c_str(), nullptr);
    }
    case PyJson::Kind::kFloat:
      return v.as_float();
    case PyJson::Kind::kString:
      return v.as_string();
    case PyJson::Kind::kArray: {
      auto arr = nlohmann::ordered_json::array();
      for (const auto& item : v.items()) arr.push_back(to_nlohmann(item));
      return arr;
    }
    case PyJson::Kind::kObject: {
      auto obj = nlohmann::ordered_json::object();
      for (const auto& [key, item] : v.members()) obj[key] = to_nlohmann(item);
      return obj;
    }
  }
  return nullptr;
}

}  // namespace dsv4::chat
