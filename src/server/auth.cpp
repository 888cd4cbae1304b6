#include "server/auth.h"

#include <cstdint>

namespace dsv4::server {

bool constant_time_equal(const std::string& a, const std::string& b) {
  // Touch max(len) bytes of both whatever their content; the length
  // difference is folded into the result instead of returning early.
  const size_t n = std::max(a.size(), b.size());
  uint8_t diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t x = i < a.size() ? static_cast<uint8_t>(a[i]) : 0;
    const uint8_t y = i < b.size() ? static_cast<uint8_t>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

ApiKeys::ApiKeys(std::vector<std::string> keys) {
  for (auto& k : keys)
    if (!k.empty()) keys_.push_back(std::move(k));
}

bool ApiKeys::valid(const std::string& key) const {
  bool ok = false;
  for (const auto& k : keys_) ok |= constant_time_equal(k, key);  // no early exit
  return ok;
}

std::optional<std::string> request_key(const std::string& authorization,
                                       const std::string& x_api_key) {
  if (!authorization.empty()) {
    std::string v = authorization;
    const std::string bearer = "bearer ";
    if (v.size() >= bearer.size()) {
      bool is_bearer = true;
      for (size_t i = 0; i < bearer.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(v[i])) != bearer[i]) is_bearer = false;
      if (is_bearer) v = v.substr(bearer.size());
    }
    while (!v.empty() && v.front() == ' ') v.erase(v.begin());
    while (!v.empty() && v.back() == ' ') v.pop_back();
    return v;
  }
  if (!x_api_key.empty()) return x_api_key;
  return std::nullopt;
}

std::vector<std::string> split_keys(const std::string& list) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : list) {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string mask_key(const std::string& key) {
  return "****" + (key.size() > 4 ? key.substr(key.size() - 4) : key);
}

}  // namespace dsv4::server
