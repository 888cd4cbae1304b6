// Errors of the HTTP API and their two wire shapes: the OpenAI/DeepSeek body
// {"error":{message,type,param,code}} on OpenAI routes and the Anthropic body
// {"type":"error","error":{type,message}} on Anthropic routes.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace dsv4::server {

enum class ErrorKind {
  kInvalidRequest,  // 400
  kTypeMismatch,    // 422 on OpenAI routes (serde-style), 400 on Anthropic routes
  kAuthentication,  // 401
  kBalance,         // 402
  kNotFound,        // 404
  kTooLarge,        // 413
  kRateLimit,       // 429
  kServer,          // 500
  kOverloaded,      // 503 (OpenAI) / 529 (Anthropic)
};

enum class ApiStyle { kOpenAI, kAnthropic };

class ApiError : public std::runtime_error {
 public:
  ApiError(ErrorKind kind, const std::string& message, std::string param = {})
      : std::runtime_error(message), kind_(kind), param_(std::move(param)) {}
  ErrorKind kind() const { return kind_; }
  const std::string& param() const { return param_; }

 private:
  ErrorKind kind_;
  std::string param_;
};

int error_status(ErrorKind kind, ApiStyle style);
nlohmann::json error_body(ErrorKind kind, const std::string& message, const std::string& param,
                          ApiStyle style);
inline nlohmann::json error_body(const ApiError& e, ApiStyle style) {
  return error_body(e.kind(), e.what(), e.param(), style);
}

// The type mismatch message DeepSeek's (serde) deserializer produces, e.g.
// "Failed to deserialize the JSON body into the target type: temperature:
// invalid type: string \"hot\", expected a number".
[[noreturn]] void throw_type_mismatch(const std::string& path, const nlohmann::json& value,
                                      const std::string& expected);

}  // namespace dsv4::server
