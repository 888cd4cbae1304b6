// API keys: which keys may call the server and which key a request carries.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace dsv4::server {

class ApiKeys {
 public:
  explicit ApiKeys(std::vector<std::string> keys);
  bool enabled() const { return !keys_.empty(); }
  // Compares against every configured key in time independent of where the
  // strings differ, so response timing does not leak key prefixes.
  bool valid(const std::string& key) const;

 private:
  std::vector<std::string> keys_;
};

// The key of a request: "Authorization: Bearer K" wins over "x-api-key: K"
// (DeepSeek's later Anthropic docs). nullopt when neither header is present.
std::optional<std::string> request_key(const std::string& authorization,
                                       const std::string& x_api_key);

// Parses DSV4_API_KEYS-style lists: keys separated by commas or whitespace.
std::vector<std::string> split_keys(const std::string& list);

// "****e78f": what the 401 message shows of a key.
std::string mask_key(const std::string& key);

bool constant_time_equal(const std::string& a, const std::string& b);

}  // namespace dsv4::server
