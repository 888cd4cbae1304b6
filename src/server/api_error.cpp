#include "server/api_error.h"

namespace dsv4::server {

int error_status(ErrorKind kind, ApiStyle style) {
  switch (kind) {
    case ErrorKind::kInvalidRequest:
      return 400;
    case ErrorKind::kTypeMismatch:
      return style == ApiStyle::kOpenAI ? 422 : 400;
    case ErrorKind::kAuthentication:
      return 401;
    case ErrorKind::kBalance:
      return 402;
    case ErrorKind::kNotFound:
      return 404;
    case ErrorKind::kTooLarge:
      return 413;
    case ErrorKind::kRateLimit:
      return 429;
    case ErrorKind::kServer:
      return 500;
    case ErrorKind::kOverloaded:
      return style == ApiStyle::kOpenAI ? 503 : 529;
  }
  return 500;
}

namespace {

const char* openai_type(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidRequest:
    case ErrorKind::kTypeMismatch:
    case ErrorKind::kNotFound:
    case ErrorKind::kTooLarge:
      return "invalid_request_error";
    case ErrorKind::kAuthentication:
      return "authentication_error";
    case ErrorKind::kBalance:
      return "unknown_error";  // what DeepSeek sends with 402
    case ErrorKind::kRateLimit:
      return "rate_limit_error";
    case ErrorKind::kServer:
      return "server_error";
    case ErrorKind::kOverloaded:
      return "server_overloaded";
  }
  return "server_error";
}

const char* anthropic_type(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidRequest:
    case ErrorKind::kTypeMismatch:
      return "invalid_request_error";
    case ErrorKind::kAuthentication:
      return "authentication_error";
    case ErrorKind::kBalance:
      return "billing_error";
    case ErrorKind::kNotFound:
      return "not_found_error";
    case ErrorKind::kTooLarge:
      return "request_too_large";
    case ErrorKind::kRateLimit:
      return "rate_limit_error";
    case ErrorKind::kServer:
      return "api_error";
    case ErrorKind::kOverloaded:
      return "overloaded_error";
  }
  return "api_error";
}

std::string describe(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return std::string("boolean `") + (v.get<bool>() ? "true" : "false") + "`";
    case Json::value_t::string: {
      std::string s = v.get<std::string>();
      if (s.size() > 40) s = s.substr(0, 40) + "...";
      return "string " + Json(s).dump();
    }
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer `" + v.dump() + "`";
    case Json::value_t::number_float:
      return "floating point `" + v.dump() + "`";
    case Json::value_t::array:
      return "sequence";
    case Json::value_t::object:
      return "map";
    default:
      return "value";
  }
}

}  // namespace

Json error_body(ErrorKind kind, const std::string& message, const std::string& param,
                ApiStyle style) {
  if (style == ApiStyle::kAnthropic)
    return {{"type", "error"}, {"error", {{"type", anthropic_type(kind)}, {"message", message}}}};
  return {{"error",
           {{"message", message},
            {"type", openai_type(kind)},
            {"param", param.empty() ? Json(nullptr) : Json(param)},
            {"code", "invalid_request_error"}}}};
}

void throw_type_mismatch(const std::string& path, const Json& value, const std::string& expected) {
  throw ApiError(ErrorKind::kTypeMismatch,
                 "Failed to deserialize the JSON body into the target type: " + path +
                     ": invalid type: " + describe(value) + ", expected " + expected,
                 path);
}

}  // namespace dsv4::server
