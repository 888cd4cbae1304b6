#include "engine/json_constraint.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/byte_constraint.h"

namespace dsv4::engine {

namespace {
// Whitespace runs outside strings are capped: a weak model otherwise pads
// with whitespace until max_tokens (the platform's documented failure mode).
constexpr uint8_t kMaxWhitespaceRun = 8;

bool is_ws(uint8_t c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}
bool is_digit(uint8_t c) {
  return c >= '0' && c <= '9';
}
bool is_hex(uint8_t c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Number phases.
enum : uint8_t { kMinus, kZero, kInt, kDot, kFrac, kE, kESign, kExp };
bool number_can_end(uint8_t phase) {
  return phase == kZero || phase == kInt || phase == kFrac || phase == kExp;
}
}  // namespace

bool JsonMachine::whitespace(uint8_t c) {
  if (!is_ws(c)) return false;
  return ++ws_run_ <= kMaxWhitespaceRun;
}

bool JsonMachine::after_value() {
  if (stack_.empty()) {
    mode_ = Mode::kDone;
  } else {
    mode_ = stack_.back() == '{' ? Mode::kCommaOrObjEnd : Mode::kCommaOrArrEnd;
  }
  return true;
}

bool JsonMachine::value_start(uint8_t c) {
  switch (c) {
    case '{':
      if (stack_.size() >= 64) return false;
      stack_.push_back('{');
      mode_ = Mode::kKeyOrEnd;
      return true;
    case '[':
      if (stack_.size() >= 64) return false;
      stack_.push_back('[');
      mode_ = Mode::kValueOrArrEnd;
      return true;
    case '"':
      mode_ = Mode::kString;
      string_is_key_ = false;
      return true;
    case 't':
      literal_ = "rue";
      mode_ = Mode::kLiteral;
      return true;
    case 'f':
      literal_ = "alse";
      mode_ = Mode::kLiteral;
      return true;
    case 'n':
      literal_ = "ull";
      mode_ = Mode::kLiteral;
      return true;
    case '-':
      num_ = kMinus;
      mode_ = Mode::kNumber;
      return true;
    default:
      if (c == '0') {
        num_ = kZero;
        mode_ = Mode::kNumber;
        return true;
      }
      if (is_digit(c)) {
        num_ = kInt;
        mode_ = Mode::kNumber;
        return true;
      }
      return false;
  }
}

bool JsonMachine::feed(uint8_t c) {
  if (mode_ != Mode::kString && mode_ != Mode::kEscape && mode_ != Mode::kUnicode &&
      mode_ != Mode::kNumber && !is_ws(c))
    ws_run_ = 0;
  switch (mode_) {
    case Mode::kStart:
      if (whitespace(c)) return true;
      if (c != '{') return false;  // json_object: the top level is an object
      return value_start(c);
    case Mode::kValue:
      if (whitespace(c)) return true;
      return value_start(c);
    case Mode::kKeyOrEnd:
      if (whitespace(c)) return true;
      if (c == '}') {
        stack_.pop_back();
        return after_value();
      }
      [[fallthrough]];
    case Mode::kKey:
      if (whitespace(c)) return true;
      if (c != '"') return false;
      mode_ = Mode::kString;
      string_is_key_ = true;
      return true;
    case Mode::kColon:
      if (whitespace(c)) return true;
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kCommaOrObjEnd:
      if (whitespace(c)) return true;
      if (c == ',') {
        mode_ = Mode::kKey;
        return true;
      }
      if (c != '}') return false;
      stack_.pop_back();
      return after_value();
    case Mode::kValueOrArrEnd:
      if (whitespace(c)) return true;
      if (c == ']') {
        stack_.pop_back();
        return after_value();
      }
      return value_start(c);
    case Mode::kCommaOrArrEnd:
      if (whitespace(c)) return true;
      if (c == ',') {
        mode_ = Mode::kValue;
        return true;
      }
      if (c != ']') return false;
      stack_.pop_back();
      return after_value();
    case Mode::kString:
      if (c == '"') {
        if (string_is_key_) {
          mode_ = Mode::kColon;
          return true;
        }
        return after_value();
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      return c >= 0x20;
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kUnicode;
        count_ = 4;
        return true;
      }
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
          c == 't') {
        mode_ = Mode::kString;
        return true;
      }
      return false;
    case Mode::kUnicode:
      if (!is_hex(c)) return false;
      if (--count_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kNumber:
      switch (num_) {
        case kMinus:
          if (c == '0') return num_ = kZero, true;
          if (is_digit(c)) return num_ = kInt, true;
          return false;
        case kZero:
        case kInt:
          if (num_ == kInt && is_digit(c)) return true;
          if (c == '.') return num_ = kDot, true;
          if (c == 'e' || c == 'E') return num_ = kE, true;
          break;
        case kDot:
          if (is_digit(c)) return num_ = kFrac, true;
          return false;
        case kFrac:
          if (is_digit(c)) return true;
          if (c == 'e' || c == 'E') return num_ = kE, true;
          break;
        case kE:
          if (c == '+' || c == '-') return num_ = kESign, true;
          if (is_digit(c)) return num_ = kExp, true;
          return false;
        case kESign:
          if (is_digit(c)) return num_ = kExp, true;
          return false;
        case kExp:
          if (is_digit(c)) return true;
          break;
      }
      // The number ended: the byte belongs to what follows it.
      if (!number_can_end(num_) || stack_.empty()) return false;
      after_value();
      return feed(c);
    case Mode::kLiteral:
      if (c != static_cast<uint8_t>(*literal_)) return false;
      if (*++literal_ == '\0') return after_value();
      return true;
    case Mode::kDone:
      return whitespace(c);  // only (a little) whitespace before the end token
  }
  return false;
}

bool JsonMachine::feed(const std::string& bytes) {
  for (char ch : bytes)
    if (!feed(static_cast<uint8_t>(ch))) return false;
  return true;
}

bool JsonObjectConstraint::markup(const std::string& b) {
  // "｜" (U+FF5C) frames every DeepSeek control token; <think> / </think>.
  return b.find("\xEF\xBD\x9C") != std::string::npos || b.find("think>") != std::string::npos;
}

JsonObjectConstraint::JsonObjectConstraint(
    std::shared_ptr<const std::vector<std::string>> token_bytes, std::vector<int32_t> end_tokens,
    int32_t start_token)
    : bytes_(std::move(token_bytes)),
      end_tokens_(std::move(end_tokens)),
      start_token_(start_token),
      active_(start_token < 0) {}

void JsonObjectConstraint::mask(std::span<float> logits) {
  if (!active_) return;
  // Once the object is closed only an end token may follow, and only then.
  const bool done = machine_.complete();
  mask_by_machine(logits, *bytes_, end_tokens_, machine_, /*end_ok=*/done, /*text_ok=*/!done,
                  markup);
}

void JsonObjectConstraint::accept(int32_t token) {
  accept_token(token, start_token_, *bytes_, active_, machine_);
}

}  // namespace dsv4::engine
