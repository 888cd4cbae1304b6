// JSON with Python's semantics. The official V4 encoder (encoding_dsv4.py)
// round-trips tool schemas and tool-call arguments through Python's
// json.loads / json.dumps(ensure_ascii=False) and formats other values with
// str(), so a byte-exact prompt needs the same number model (arbitrary
// precision ints kept apart from floats, floats printed like repr()), the
// same dict semantics (duplicate keys: first position, last value) and the
// same escaping. nlohmann::json cannot carry big ints or remember int vs
// float for every input, hence this small value type.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace dsv4::chat {

// What json.loads raised: the encoder falls back on it (non-JSON arguments).
class PyJsonError : public Error {
 public:
  explicit PyJsonError(const std::string& message) : Error(message) {}
};

class PyJson {
 public:
  enum class Kind { kNull, kBool, kInt, kFloat, kString, kArray, kObject };
  using Array = std::vector<PyJson>;
  using Member = std::pair<std::string, PyJson>;
  using Object = std::vector<Member>;  // insertion order, unique keys

  PyJson() = default;  // null
  static PyJson boolean(bool b);
  // `digits` is a canonical decimal integer ("-12", "0"): Python ints are exact.
  static PyJson integer(std::string digits);
  static PyJson integer(int64_t v) { return integer(std::to_string(v)); }
  static PyJson floating(double v);
  static PyJson string(std::string s);
  static PyJson array(Array items = {});
  static PyJson object(Object members = {});

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }

  bool as_bool() const { return bool_; }
  double as_float() const { return float_; }
  const std::string& int_digits() const { return text_; }
  const std::string& as_string() const { return text_; }
  const Array& items() const { return array_; }
  Array& items() { return array_; }
  const Object& members() const { return object_; }

  // Object access. find() returns nullptr when the key is absent (dict.get).
  const PyJson* find(std::string_view key) const;
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  // Python dict assignment: an existing key keeps its position.
  void set(std::string key, PyJson value);
  void erase(std::string_view key);
  void push_back(PyJson value) { array_.push_back(std::move(value)); }

  // Python equality for the values JSON can carry (1 == 1.0 == True).
  bool operator==(const PyJson& other) const;

  // Python truthiness: None, False, 0, 0.0, "", [], {} are false.
  bool truthy() const;

 private:
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  double float_ = 0;
  std::string text_;  // string value or integer digits
  Array array_;
  Object object_;
};

// json.loads(text): strict RFC 8259 plus NaN/Infinity/-Infinity, control
// characters rejected inside strings, lone surrogates kept (as WTF-8), ints
// over 4300 digits rejected (Python 3.11's int conversion limit).
PyJson py_json_loads(std::string_view text);

// json.dumps(value, ensure_ascii=False) with the default separators ", " / ": ".
std::string py_json_dumps(const PyJson& value);
void py_json_dumps_string(std::string_view s, std::string& out);

// repr(float) / str(float): shortest round-trip digits, "1.0", "1e-05", "1e+16", "inf".
std::string py_float_repr(double v);
// repr(value) (strings quoted) and str(value) (strings as they are), as the
// official code gets them through str.format().
std::string py_repr(const PyJson& value);
std::string py_str(const PyJson& value);

// Conversions to and from nlohmann::ordered_json (the server's JSON type).
// Integers outside int64/uint64 become floats in nlohmann, as nlohmann parses them.
PyJson from_nlohmann(const nlohmann::ordered_json& j);
nlohmann::ordered_json to_nlohmann(const PyJson& v);

}  // namespace dsv4::chat
