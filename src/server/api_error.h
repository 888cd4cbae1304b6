// Errors of the HTTP API and their two wire shapes: the OpenAI/DeepSeek body
// {"error":{message,type,param,code}} on OpenAI routes and the Anthropic body
// {"type":"error","error":{type,message}} on Anthropic routes.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace dsv4::server {

// The server's JSON type: objects keep their insertion order, so tool schemas
// and arguments reach the chat encoder in the order the client wrote them
// (the official encoder's json.dumps output depends on it).
using Json = nlohmann::ordered_json;

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
Json error_body(ErrorKind kind, const std::string& message, const std::string& param,
                ApiStyle style);
inline Json error_body(const ApiError& e, ApiStyle style) {
  return error_body(e.kind(), e.what(), e.param(), style);
}

// The type mismatch message DeepSeek's (serde) deserializer produces, e.g.
// "Failed to deserialize the JSON body into the target type: temperature:
// invalid type: string \"hot\", expected a number".
[[noreturn]] void throw_type_mismatch(const std::string& path, const Json& value,
                                      const std::string& expected);

}  // namespace dsv4::server
