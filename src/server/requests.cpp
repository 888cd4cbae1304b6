#include "server/requests.h"

#include <cstdio>
#include <mutex>
#include <regex>
#include <set>

namespace dsv4::server {

using json = Json;

namespace {

[[noreturn]] void invalid(const std::string& message, const std::string& param = {}) {
  throw ApiError(ErrorKind::kInvalidRequest, message, param);
}

// Typed access to one JSON object's fields. Missing and null fields read as
// "not given"; a field of the wrong type is a type-mismatch error naming its
// path (422 on OpenAI routes, 400 on Anthropic routes).
class Fields {
 public:
  Fields(const json& obj, std::string path) : obj_(obj), path_(std::move(path)) {}

  std::string at(const char* key) const { return path_.empty() ? key : path_ + "." + key; }
  const json* get(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<std::string> str(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) throw_type_mismatch(at(key), *v, "a string");
    return v->get<std::string>();
  }
  std::string required_str(const char* key) const {
    auto s = str(key);
    if (!s) missing(key);
    return *s;
  }
  std::optional<bool> boolean(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw_type_mismatch(at(key), *v, "a boolean");
    return v->get<bool>();
  }
  std::optional<double> number(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw_type_mismatch(at(key), *v, "a number");
    return v->get<double>();
  }
  std::optional<int64_t> integer(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (v->is_number_float()) {
      const double d = v->get<double>();
      if (d == static_cast<double>(static_cast<int64_t>(d))) return static_cast<int64_t>(d);
    }
    if (!v->is_number_integer()) throw_type_mismatch(at(key), *v, "an integer");
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)) return INT64_MAX;
    return v->get<int64_t>();
  }
  const json* object(const char* key) const {
    const json* v = get(key);
    if (v && !v->is_object()) throw_type_mismatch(at(key), *v, "an object");
    return v;
  }
  const json* array(const char* key) const {
    const json* v = get(key);
    if (v && !v->is_array()) throw_type_mismatch(at(key), *v, "a sequence");
    return v;
  }
  [[noreturn]] void missing(const char* key) const {
    throw ApiError(ErrorKind::kTypeMismatch,
                   "Failed to deserialize the JSON body into the target type: " +
                       (path_.empty() ? std::string() : path_ + ": ") + "missing field `" + key +
                       "`",
                   at(key));
  }

 private:
  const json& obj_;
  std::string path_;
};

std::string idx(const std::string& base, size_t i) {
  return base + "[" + std::to_string(i) + "]";
}

void check_range(double v, double lo, double hi, const char* name) {
  if (!(v >= lo && v <= hi)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "Invalid %s value, the valid range of %s is [%g, %g]", name,
                  name, lo, hi);
    invalid(buf, name);
  }
}

void check_max_tokens(int64_t v, int64_t hi) {
  if (v < 1 || v > hi)
    invalid("Invalid max_tokens value, the valid range of max_tokens is [1, " + std::to_string(hi) +
                "]",
            "max_tokens");
}

std::vector<std::string> read_stop(const Fields& f, const char* key, size_t max_count) {
  const json* v = f.get(key);
  std::vector<std::string> out;
  if (!v) return out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) throw_type_mismatch(idx(f.at(key), i), (*v)[i], "a string");
      out.push_back((*v)[i].get<std::string>());
    }
  } else {
    throw_type_mismatch(f.at(key), *v, "a string or a sequence of strings");
  }
  if (out.size() > max_count)
    invalid("Invalid stop value: at most " + std::to_string(max_count) +
                " stop sequences are allowed, got " + std::to_string(out.size()),
            key);
  return out;
}

// Message content: a string, or text parts [{"type":"text","text":...}].
// Image parts are rejected with DeepSeek's deserializer text.
std::optional<std::string> read_text_content(const json& v, const std::string& path,
                                             bool allow_null) {
  if (v.is_null()) {
    if (allow_null) return std::nullopt;
    throw_type_mismatch(path, v, "a string");
  }
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) throw_type_mismatch(path, v, "a string or a sequence of content parts");
  std::string text;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& part = v[i];
    if (!part.is_object()) throw_type_mismatch(idx(path, i), part, "a content part object");
    Fields pf(part, idx(path, i));
    const std::string type = pf.str("type").value_or("text");
    if (type != "text")
      invalid("Failed to deserialize the JSON body into the target type: " + path +
                  ": unknown variant `" + type + "`, expected `text`",
              path);
    text += pf.required_str("text");
  }
  return text;
}

bool valid_tool_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

// A strict tool's schema must be one the constrained decoder supports:
// objects list every property in `required` and set additionalProperties
// false (api-surface.md §3.4).
void check_strict_schema(const json& s, const std::string& path) {
  if (!s.is_object()) invalid("Invalid strict schema at " + path + ": expected an object");
  if (s.contains("type") && s["type"] == "object") {
    const json props = s.value("properties", json::object());
    std::set<std::string> required;
    if (s.contains("required") && s["required"].is_array())
      for (const auto& r : s["required"])
        if (r.is_string()) required.insert(r.get<std::string>());
    for (const auto& [k, sub] : props.items()) {
      if (!required.count(k))
        invalid("Invalid strict schema at " + path + ": property \"" + k +
                "\" must be listed in required (strict mode requires every property)");
      check_strict_schema(sub, path + ".properties." + k);
    }
    if (!s.contains("additionalProperties") || s["additionalProperties"] != false)
      invalid("Invalid strict schema at " + path +
              ": strict mode requires \"additionalProperties\": false on every object");
  }
  for (const char* k : {"minLength", "maxLength", "minItems", "maxItems"})
    if (s.contains(k))
      invalid("Invalid strict schema at " + path + ": \"" + k +
              "\" is not supported in strict mode");
  if (s.contains("items")) check_strict_schema(s["items"], path + ".items");
  for (const char* k : {"anyOf", "$defs", "definitions"})
    if (s.contains(k)) {
      if (s[k].is_array())
        for (size_t i = 0; i < s[k].size(); ++i)
          check_strict_schema(s[k][i], idx(path + "." + k, i));
      else if (s[k].is_object())
        for (const auto& [n, sub] : s[k].items())
          check_strict_schema(sub, path + "." + k + "." + n);
    }
}

// OpenAI tools -> the encoder's tool list. Returns the tool names.
std::set<std::string> read_openai_tools(const json& tools, bool beta, json* out) {
  if (tools.size() > 128) invalid("Invalid tools: at most 128 tools are allowed", "tools");
  std::set<std::string> names;
  size_t strict_count = 0;
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string path = idx("tools", i);
    if (!tools[i].is_object()) throw_type_mismatch(path, tools[i], "a tool object");
    Fields tf(tools[i], path);
    const std::string type = tf.str("type").value_or("function");
    if (type != "function")
      throw ApiError(ErrorKind::kTypeMismatch,
                     "Failed to deserialize the JSON body into the target type: " + path +
                         ".type: unknown variant `" + type + "`, expected `function`",
                     path);
    const json* fn = tf.object("function");
    if (!fn) tf.missing("function");
    Fields ff(*fn, path + ".function");
    const std::string name = ff.required_str("name");
    if (!valid_tool_name(name))
      invalid("Invalid tool name \"" + name + "\" at " + path +
                  ".function.name: must match ^[a-zA-Z0-9_-]{1,64}$",
              path);
    ff.str("description");
    const json* params = ff.object("parameters");
    const bool strict = ff.boolean("strict").value_or(false);
    if (strict) {
      if (!beta)
        invalid("strict mode tools are a beta feature: use the /beta base URL (" + path + ")");
      check_strict_schema(params ? *params : json::object(), path + ".function.parameters");
      ++strict_count;
    }
    names.insert(name);
    json t = {{"type", "function"}, {"function", {{"name", name}}}};
    if (fn->contains("description")) t["function"]["description"] = (*fn)["description"];
    t["function"]["parameters"] =
        params ? *params : json{{"type", "object"}, {"properties", json::object()}};
    out->push_back(std::move(t));
  }
  if (strict_count != 0 && strict_count != tools.size())
    invalid("In strict mode every function must set \"strict\": true", "tools");
  return names;
}

struct ToolChoice {
  std::string mode = "";  // "", none, auto, required, named
  std::string name;
};

void common_sampling(const Fields& f, ChatJob& job) {
  auto& s = job.gen.sampling;
  if (auto t = f.number("temperature")) {
    check_range(*t, 0, 2, "temperature");
    s.temperature = static_cast<float>(*t);
  }
  if (auto p = f.number("top_p")) {
    check_range(*p, 0, 1, "top_p");
    s.top_p = *p <= 0 ? 1e-6f : static_cast<float>(*p);  // top_p 0 = greedy-like nucleus
  }
}

}  // namespace

std::string normalize_effort(const std::string& effort, const std::string& path, ApiStyle style) {
  static const std::set<std::string> high = {"minimal", "low", "medium", "high"};
  static const std::set<std::string> max = {"xhigh", "max", "ultra"};
  if (high.count(effort)) return "high";
  if (max.count(effort)) return "max";
  (void)style;
  throw ApiError(ErrorKind::kTypeMismatch,
                 "Failed to deserialize the JSON body into the target type: " + path +
                     ": unknown variant `" + effort + "`, expected `high` or `max`",
                 path);
}

ModelNames::ModelNames(std::vector<std::string> served) : served_(std::move(served)) {}

std::vector<std::string> ModelNames::listed() const {
  std::vector<std::string> out = {"deepseek-v4-flash", "deepseek-v4-pro"};
  for (const auto& s : served_)
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  return out;
}

namespace {
void warn_legacy_once(const std::string& name) {
  static std::mutex mu;
  static std::set<std::string> warned;
  std::lock_guard<std::mutex> lock(mu);
  if (warned.insert(name).second)
    std::fprintf(stderr,
                 "dsv4 serve: warning: model name \"%s\" is a deprecated alias (retired by "
                 "DeepSeek on 2026-07-24); use deepseek-v4-flash with thinking "
                 "enabled/disabled instead\n",
                 name.c_str());
}
}  // namespace

ModelNames::Resolved ModelNames::resolve_openai(const std::string& model) const {
  if (model == "deepseek-v4-flash" || model == "deepseek-v4-pro") return {model, model, {}};
  for (const auto& s : served_)
    if (model == s) return {model, model, {}};
  if (model == "deepseek-flash") return {"deepseek-v4-flash", "deepseek-v4-flash", {}};
  if (model == "deepseek-chat") {
    warn_legacy_once(model);
    return {model, "deepseek-v4-flash", false};
  }
  if (model == "deepseek-reasoner") {
    warn_legacy_once(model);
    return {model, "deepseek-v4-flash", true};
  }
  invalid("Model Not Exist", "model");
}

ModelNames::Resolved ModelNames::resolve_anthropic(const std::string& requested) const {
  std::string model = requested;
  // Claude Code's "[1m]" (1M-context selector) sometimes leaks into requests.
  while (model.size() >= 4) {
    std::string tail = model.substr(model.size() - 4);
    if (tail == "[1m]" || tail == "[1M]")
      model.resize(model.size() - 4);
    else
      break;
  }
  try {
    return resolve_openai(model);
  } catch (const ApiError&) {
  }
  if (model.rfind("claude-opus", 0) == 0) return {"deepseek-v4-pro", "deepseek-v4-pro", {}};
  if (model.rfind("claude", 0) == 0) return {"deepseek-v4-flash", "deepseek-v4-flash", {}};
  throw ApiError(ErrorKind::kNotFound, "model: " + requested + " (Model Not Exist)", "model");
}

// ---------------------------------------------------------------- OpenAI chat

ChatJob parse_openai_chat(const json& body, bool beta, const ModelNames& names) {
  if (!body.is_object()) throw_type_mismatch("body", body, "a chat completion request object");
  Fields f(body, "");
  ChatJob job;
  job.style = ApiStyle::kOpenAI;
  job.model = names.resolve_openai(f.required_str("model"));

  // Thinking mode: default enabled; legacy aliases fix it.
  bool thinking = true;
  if (const json* t = f.get("thinking")) {
    if (!t->is_object()) throw_type_mismatch("thinking", *t, "struct Thinking");
    Fields tf(*t, "thinking");
    const std::string type = tf.str("type").value_or("enabled");
    if (type == "enabled" || type == "adaptive")
      thinking = true;
    else if (type == "disabled")
      thinking = false;
    else
      throw ApiError(ErrorKind::kTypeMismatch,
                     "Failed to deserialize the JSON body into the target type: thinking.type: "
                     "unknown variant `" +
                         type + "`, expected `enabled` or `disabled`",
                     "thinking");
  }
  if (job.model.force_thinking) thinking = *job.model.force_thinking;
  job.thinking = thinking;
  std::optional<std::string> effort;
  if (auto e = f.str("reasoning_effort"))
    effort = normalize_effort(*e, "reasoning_effort", ApiStyle::kOpenAI);

  // Output limits and sampling.
  auto max_tokens = f.integer("max_tokens");
  if (!max_tokens) max_tokens = f.integer("max_completion_tokens");
  if (max_tokens) check_max_tokens(*max_tokens, kMaxOutputTokens);
  job.max_tokens = max_tokens;
  common_sampling(f, job);
  if (auto v = f.number("frequency_penalty")) {
    check_range(*v, -2, 2, "frequency_penalty");
    job.gen.sampling.frequency_penalty = static_cast<float>(*v);
  }
  if (auto v = f.number("presence_penalty")) {
    check_range(*v, -2, 2, "presence_penalty");
    job.gen.sampling.presence_penalty = static_cast<float>(*v);
  }
  if (thinking) {
    // DeepSeek: temperature and top_p are accepted but have no effect in
    // thinking mode.
    job.gen.sampling.temperature = 1.0f;
    job.gen.sampling.top_p = 1.0f;
  }
  if (auto seed = f.integer("seed")) job.gen.sampling.seed = static_cast<uint64_t>(*seed);
  if (auto n = f.integer("n"); n && *n != 1)
    invalid("Invalid n value: only n = 1 is supported", "n");
  job.gen.stop = read_stop(f, "stop", 16);
  job.stream = f.boolean("stream").value_or(false);
  if (const json* so = f.object("stream_options")) {
    Fields sf(*so, "stream_options");
    job.include_usage = sf.boolean("include_usage").value_or(false);
  }
  job.logprobs = f.boolean("logprobs").value_or(false);
  if (auto k = f.integer("top_logprobs")) {
    check_range(double(*k), 0, 20, "top_logprobs");
    if (!job.logprobs) invalid("top_logprobs requires logprobs to be true", "top_logprobs");
    job.top_logprobs = static_cast<int>(*k);
  }
  job.gen.sampling.logprobs = job.logprobs;
  job.gen.sampling.top_logprobs = job.top_logprobs;
  if (auto u = f.str("user_id")) job.user_id = *u;

  json response_format;
  if (const json* rf = f.object("response_format")) {
    Fields rff(*rf, "response_format");
    const std::string type = rff.str("type").value_or("text");
    if (type != "text" && type != "json_object")
      throw ApiError(ErrorKind::kTypeMismatch,
                     "Failed to deserialize the JSON body into the target type: "
                     "response_format.type: unknown variant `" +
                         type + "`, expected `text` or `json_object`",
                     "response_format");
    if (type == "json_object") {
      response_format = {{"type", "json_object"}};
      job.json_mode = true;
    }
  }

  // Tools.
  json tools = json::array();
  std::set<std::string> tool_names;
  if (const json* t = f.array("tools")) tool_names = read_openai_tools(*t, beta, &tools);
  ToolChoice choice;
  if (const json* tc = f.get("tool_choice")) {
    if (tc->is_string()) {
      choice.mode = tc->get<std::string>();
      if (choice.mode != "none" && choice.mode != "auto" && choice.mode != "required")
        throw ApiError(ErrorKind::kTypeMismatch,
                       "Failed to deserialize the JSON body into the target type: tool_choice: "
                       "unknown variant `" +
                           choice.mode + "`, expected one of `none`, `auto`, `required`",
                       "tool_choice");
    } else if (tc->is_object()) {
      Fields cf(*tc, "tool_choice");
      const json* fn = cf.object("function");
      if (!fn) cf.missing("function");
      choice.mode = "named";
      choice.name = Fields(*fn, "tool_choice.function").required_str("name");
      if (!tool_names.count(choice.name))
        invalid("tool_choice names the function \"" + choice.name + "\", which is not in tools",
                "tool_choice");
    } else {
      throw_type_mismatch("tool_choice", *tc, "a string or an object");
    }
    if ((choice.mode == "required" || choice.mode == "named") && tools.empty())
      invalid("tool_choice \"" + choice.mode + "\" needs tools", "tool_choice");
    if (thinking && (choice.mode == "required" || choice.mode == "named"))
      invalid("tool_choice \"" + (choice.mode == "named" ? std::string("function") : choice.mode) +
                  "\" is not supported in thinking mode; use \"auto\" or disable thinking",
              "tool_choice");
  }
  job.has_tools = !tools.empty() && choice.mode != "none";
  bool strict = false;
  if (const json* t = f.array("tools"))
    for (const auto& tool : *t)
      strict |= tool.contains("function") && tool["function"].is_object() &&
                tool["function"].value("strict", false) == true;
  if (job.has_tools && (strict || choice.mode == "required" || choice.mode == "named")) {
    for (const auto& t : tools)
      job.constrained_tools.push_back(
          {t["function"]["name"].get<std::string>(), t["function"]["parameters"]});
    job.tool_required = choice.mode == "required" || choice.mode == "named";
    if (choice.mode == "named") job.tool_allowed = {choice.name};
  }

  // Messages.
  const json* msgs = f.array("messages");
  if (!msgs) f.missing("messages");
  if (msgs->empty()) invalid("Invalid messages: at least one message is required", "messages");
  json out_msgs = json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const std::string path = idx("messages", i);
    const json& m = (*msgs)[i];
    if (!m.is_object()) throw_type_mismatch(path, m, "a message object");
    Fields mf(m, path);
    const std::string role = mf.required_str("role");
    json o = {{"role", role}};
    const bool last = i + 1 == msgs->size();
    if (role == "system" || role == "developer") {
      // Lenient: a null system content renders as empty, as the encoder does.
      const json* c = mf.get("content");
      o["content"] = c ? json(*read_text_content(*c, path + ".content", false)) : json(nullptr);
    } else if (role == "user") {
      const json* c = mf.get("content");
      if (!c) mf.missing("content");
      o["content"] = *read_text_content(*c, path + ".content", false);
    } else if (role == "tool") {
      const json* c = mf.get("content");
      if (!c) mf.missing("content");
      read_text_content(*c, path + ".content", false);  // validates: text parts only
      // Text-part lists go to the encoder as they are: it renders them itself.
      o["content"] = *c;
      o["tool_call_id"] = mf.required_str("tool_call_id");
    } else if (role == "assistant") {
      const json* c = mf.get("content");
      auto content = c ? read_text_content(*c, path + ".content", true) : std::nullopt;
      o["content"] = content ? json(*content) : json(nullptr);
      auto reasoning = mf.str("reasoning_content");
      if (reasoning) o["reasoning_content"] = *reasoning;
      bool has_calls = false;
      if (const json* calls = mf.array("tool_calls"); calls && !calls->empty()) {
        json oc = json::array();
        for (size_t k = 0; k < calls->size(); ++k) {
          const std::string cp = idx(path + ".tool_calls", k);
          if (!(*calls)[k].is_object()) throw_type_mismatch(cp, (*calls)[k], "a tool call");
          Fields cf((*calls)[k], cp);
          const json* fn = cf.object("function");
          if (!fn) cf.missing("function");
          Fields ff(*fn, cp + ".function");
          std::string args;
          if (const json* a = ff.get("arguments"))
            args = a->is_string() ? a->get<std::string>() : a->dump();  // lenient
          oc.push_back({{"id", cf.str("id").value_or("call_" + std::to_string(k))},
                        {"type", "function"},
                        {"function", {{"name", ff.required_str("name")}, {"arguments", args}}}});
        }
        o["tool_calls"] = std::move(oc);
        has_calls = true;
      }
      // Thinking-mode replay rule: a tool-calling assistant turn must carry
      // its reasoning_content (an empty string is accepted).
      if (thinking && has_calls && !reasoning)
        invalid("The `reasoning_content` in the thinking mode must be passed back to the API.",
                "messages");
      if (mf.boolean("prefix").value_or(false)) {
        if (!last)
          invalid("Invalid " + path + ": only the last message may set prefix", "messages");
        job.prefix = true;
        o["wo_eos"] = true;
        // Continuing the answer: output starts in content unless only the
        // reasoning prefix was given.
        job.parser_thinking = thinking && !(content && !content->empty());
      }
    } else {
      throw ApiError(ErrorKind::kTypeMismatch,
                     "Failed to deserialize the JSON body into the target type: " + path +
                         ".role: unknown variant `" + role +
                         "`, expected one of `system`, `user`, `assistant`, `tool`",
                     path);
    }
    out_msgs.push_back(std::move(o));
  }
  if (!job.prefix) {
    job.parser_thinking = thinking;
    if (out_msgs.back()["role"] == "assistant")
      invalid(
          "Invalid messages: the last message is from the assistant; set \"prefix\": true "
          "(beta) to continue it",
          "messages");
  }

  job.conversation = {{"messages", std::move(out_msgs)},
                      {"thinking_mode", thinking ? "thinking" : "chat"},
                      {"reasoning_effort", effort ? json(*effort) : json(nullptr)}};
  if (job.has_tools) job.conversation["tools"] = std::move(tools);
  if (!response_format.is_null()) job.conversation["response_format"] = response_format;
  return job;
}

// ------------------------------------------------------------ Anthropic messages

namespace {

// Anthropic content blocks -> text (system prompts, tool results).
std::string anthropic_text(const json& v, const std::string& path) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) throw_type_mismatch(path, v, "a string or a list of text blocks");
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& b = v[i];
    if (!b.is_object()) throw_type_mismatch(idx(path, i), b, "a content block");
    const std::string type = b.value("type", "text");
    if (type == "text") {
      if (!out.empty()) out += "\n\n";
      out += Fields(b, idx(path, i)).required_str("text");
    } else {
      invalid(path + ": content blocks of type \"" + type + "\" are not supported here");
    }
  }
  return out;
}

}  // namespace

ChatJob parse_anthropic_messages(const json& body, const ModelNames& names, bool count_only) {
  if (!body.is_object()) throw_type_mismatch("body", body, "a messages request object");
  Fields f(body, "");
  ChatJob job;
  job.style = ApiStyle::kAnthropic;
  job.model = names.resolve_anthropic(f.required_str("model"));

  bool thinking = true;
  if (const json* t = f.object("thinking")) {
    const std::string type = Fields(*t, "thinking").str("type").value_or("enabled");
    if (type == "enabled" || type == "adaptive")
      thinking = true;
    else if (type == "disabled")
      thinking = false;
    else
      invalid("thinking.type: unknown variant `" + type +
              "`, expected `enabled`, `adaptive` or `disabled`");
  }
  if (job.model.force_thinking) thinking = *job.model.force_thinking;
  job.thinking = thinking;
  std::optional<std::string> effort;
  if (const json* oc = f.object("output_config"))
    if (auto e = Fields(*oc, "output_config").str("effort"))
      effort = normalize_effort(*e, "output_config.effort", ApiStyle::kAnthropic);

  auto max_tokens = f.integer("max_tokens");
  if (!count_only) {
    if (!max_tokens) f.missing("max_tokens");
    check_max_tokens(*max_tokens, kMaxOutputTokens);
    job.max_tokens = max_tokens;
  }
  common_sampling(f, job);
  if (thinking) {
    job.gen.sampling.temperature = 1.0f;
    job.gen.sampling.top_p = 1.0f;
  }
  job.gen.stop = read_stop(f, "stop_sequences", 16);
  job.stream = !count_only && f.boolean("stream").value_or(false);
  if (const json* md = f.object("metadata"))
    if (auto u = Fields(*md, "metadata").str("user_id")) job.user_id = *u;

  json tools = json::array();
  std::set<std::string> tool_names;
  if (const json* t = f.array("tools")) {
    for (size_t i = 0; i < t->size(); ++i) {
      const std::string path = idx("tools", i);
      if (!(*t)[i].is_object()) throw_type_mismatch(path, (*t)[i], "a tool");
      Fields tf((*t)[i], path);
      const std::string name = tf.required_str("name");
      // Server tools (web search, ...) have a "type" and no input_schema; they
      // cannot run here, so they are left out of the prompt.
      const json* schema = tf.object("input_schema");
      if (!schema && (*t)[i].contains("type") && (*t)[i]["type"] != "custom") continue;
      json fn = {{"name", name},
                 {"parameters",
                  schema ? *schema : json{{"type", "object"}, {"properties", json::object()}}}};
      if (auto d = tf.str("description")) fn["description"] = *d;
      tools.push_back({{"type", "function"}, {"function", std::move(fn)}});
      tool_names.insert(name);
    }
  }
  std::string choice = "auto";
  if (const json* tc = f.object("tool_choice")) {
    Fields cf(*tc, "tool_choice");
    choice = cf.str("type").value_or("auto");
    if (choice == "tool") {
      const std::string name = cf.required_str("name");
      if (!tool_names.count(name))
        invalid("tool_choice names the tool \"" + name + "\", which is not in tools");
    } else if (choice != "auto" && choice != "any" && choice != "none") {
      invalid("tool_choice.type: unknown variant `" + choice +
              "`, expected `auto`, `any`, `tool` or `none`");
    }
  }
  job.has_tools = !tools.empty() && choice != "none";
  if (job.has_tools && (choice == "any" || choice == "tool")) {
    for (const auto& t : tools)
      job.constrained_tools.push_back(
          {t["function"]["name"].get<std::string>(), t["function"]["parameters"]});
    job.tool_required = true;
    if (choice == "tool")
      job.tool_allowed = {(*f.object("tool_choice"))["name"].get<std::string>()};
  }

  json out_msgs = json::array();
  if (const json* sys = f.get("system"))
    out_msgs.push_back({{"role", "system"}, {"content", anthropic_text(*sys, "system")}});

  const json* msgs = f.array("messages");
  if (!msgs) f.missing("messages");
  if (msgs->empty()) invalid("messages: at least one message is required");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const std::string path = idx("messages", i);
    const json& m = (*msgs)[i];
    if (!m.is_object()) throw_type_mismatch(path, m, "a message");
    Fields mf(m, path);
    const std::string role = mf.required_str("role");
    const json* content = mf.get("content");
    if (!content) mf.missing("content");
    if (role == "system") {  // Claude Code's mid-conversation system entries
      out_msgs.push_back(
          {{"role", "system"}, {"content", anthropic_text(*content, path + ".content")}});
      continue;
    }
    if (role != "user" && role != "assistant")
      invalid(path + ".role: unknown variant `" + role + "`, expected `user` or `assistant`");
    if (content->is_string()) {
      out_msgs.push_back({{"role", role}, {"content", content->get<std::string>()}});
      continue;
    }
    if (!content->is_array())
      throw_type_mismatch(path + ".content", *content, "a string or blocks");
    if (role == "user") {
      // Tool results become tool messages (in order); text becomes a user message.
      std::string text;
      auto flush_text = [&]() {
        if (!text.empty()) out_msgs.push_back({{"role", "user"}, {"content", text}});
        text.clear();
      };
      for (size_t k = 0; k < content->size(); ++k) {
        const json& b = (*content)[k];
        const std::string bp = idx(path + ".content", k);
        if (!b.is_object()) throw_type_mismatch(bp, b, "a content block");
        const std::string type = b.value("type", "");
        if (type == "text") {
          if (!text.empty()) text += "\n\n";
          text += Fields(b, bp).required_str("text");
        } else if (type == "tool_result") {
          flush_text();
          Fields bf(b, bp);
          std::string result;
          if (const json* c = bf.get("content")) result = anthropic_text(*c, bp + ".content");
          out_msgs.push_back({{"role", "tool"},
                              {"tool_call_id", bf.required_str("tool_use_id")},
                              {"content", result}});
        } else {
          invalid(bp + ": content blocks of type \"" + type + "\" are not supported");
        }
      }
      flush_text();
    } else {
      json o = {{"role", "assistant"}, {"content", ""}};
      bool has_thinking = false;
      std::string text, reasoning;
      json calls = json::array();
      for (size_t k = 0; k < content->size(); ++k) {
        const json& b = (*content)[k];
        const std::string bp = idx(path + ".content", k);
        if (!b.is_object()) throw_type_mismatch(bp, b, "a content block");
        const std::string type = b.value("type", "");
        Fields bf(b, bp);
        if (type == "text") {
          text += bf.required_str("text");
        } else if (type == "thinking") {
          has_thinking = true;
          reasoning += bf.str("thinking").value_or("");
        } else if (type == "redacted_thinking") {
          has_thinking = true;
        } else if (type == "tool_use") {
          const json* input = bf.object("input");
          calls.push_back({{"id", bf.required_str("id")},
                           {"type", "function"},
                           {"function",
                            {{"name", bf.required_str("name")},
                             {"arguments", input ? input->dump() : std::string("{}")}}}});
        } else {
          invalid(bp + ": content blocks of type \"" + type + "\" are not supported");
        }
      }
      if (thinking && !calls.empty() && !has_thinking)
        invalid("The `content[].thinking` in the thinking mode must be passed back to the API.");
      o["content"] = text;
      if (has_thinking) o["reasoning_content"] = reasoning;
      if (!calls.empty()) o["tool_calls"] = std::move(calls);
      out_msgs.push_back(std::move(o));
    }
  }
  // A final assistant message is a prefill: the model continues it.
  if (!out_msgs.empty() && out_msgs.back()["role"] == "assistant") {
    out_msgs.back()["wo_eos"] = true;
    job.prefix = true;
    const std::string c = out_msgs.back().value("content", "");
    job.parser_thinking = thinking && c.empty();
  } else {
    job.parser_thinking = thinking;
  }
  job.conversation = {{"messages", std::move(out_msgs)},
                      {"thinking_mode", thinking ? "thinking" : "chat"},
                      {"reasoning_effort", effort ? json(*effort) : json(nullptr)}};
  if (job.has_tools) job.conversation["tools"] = std::move(tools);
  return job;
}

// -------------------------------------------------------------- completions

FimJob parse_completion(const json& body, const ModelNames& names) {
  if (!body.is_object()) throw_type_mismatch("body", body, "a completion request object");
  Fields f(body, "");
  FimJob job;
  job.model = names.resolve_openai(f.required_str("model"));
  const json* p = f.get("prompt");
  if (!p) f.missing("prompt");
  if (!p->is_string()) throw_type_mismatch("prompt", *p, "a string");
  job.prompt = p->get<std::string>();
  job.suffix = f.str("suffix");
  job.echo = f.boolean("echo").value_or(false);
  job.stream = f.boolean("stream").value_or(false);
  if (const json* so = f.object("stream_options"))
    job.include_usage = Fields(*so, "stream_options").boolean("include_usage").value_or(false);
  if (auto lp = f.integer("logprobs")) {
    check_range(double(*lp), 0, 20, "logprobs");
    job.logprobs = static_cast<int>(*lp);
  }
  job.max_tokens = f.integer("max_tokens");
  if (job.max_tokens) check_max_tokens(*job.max_tokens, kMaxFimTokens);
  auto& s = job.gen.sampling;
  if (auto t = f.number("temperature")) {
    check_range(*t, 0, 2, "temperature");
    s.temperature = static_cast<float>(*t);
  }
  if (auto v = f.number("top_p")) {
    check_range(*v, 0, 1, "top_p");
    s.top_p = *v <= 0 ? 1e-6f : static_cast<float>(*v);
  }
  if (auto v = f.number("frequency_penalty")) {
    check_range(*v, -2, 2, "frequency_penalty");
    s.frequency_penalty = static_cast<float>(*v);
  }
  if (auto v = f.number("presence_penalty")) {
    check_range(*v, -2, 2, "presence_penalty");
    s.presence_penalty = static_cast<float>(*v);
  }
  if (auto seed = f.integer("seed")) s.seed = static_cast<uint64_t>(*seed);
  s.logprobs = job.logprobs > 0;
  s.top_logprobs = job.logprobs;
  job.gen.stop = read_stop(f, "stop", 16);
  return job;
}

}  // namespace dsv4::server
