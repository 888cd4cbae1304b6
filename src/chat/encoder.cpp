#include "chat/encoder.h"

#include <algorithm>
#include <array>
#include <vector>

namespace dsv4::chat {
namespace {

using Messages = std::vector<PyJson>;

constexpr std::string_view kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n";

constexpr std::string_view kToolsTemplateHead =
    "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can "
    "invoke tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n"
    "<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE"
    "</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";
constexpr std::string_view kToolsTemplateTail =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool "
    "calls.\n";

constexpr std::string_view kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

struct Task {
  std::string_view name;
  std::string_view token;
};
constexpr std::array<Task, 6> kTasks = {{{"action", "<｜action｜>"},
                                         {"query", "<｜query｜>"},
                                         {"authority", "<｜authority｜>"},
                                         {"domain", "<｜domain｜>"},
                                         {"title", "<｜title｜>"},
                                         {"read_url", "<｜read_url｜>"}}};

[[noreturn]] void reject(const char* python_type, const std::string& message) {
  throw EncodeError(python_type, message);
}

const PyJson kNull;

// dict.get(key) on a message; the official code calls .get on every message,
// so anything that is not an object is an AttributeError there.
const PyJson& get(const PyJson& obj, std::string_view key) {
  if (!obj.is_object())
    reject("AttributeError", str_cat("each message must be a JSON object, got ", py_repr(obj)));
  const PyJson* v = obj.find(key);
  return v ? *v : kNull;
}

// dict.get(key, default) where the default is returned only for a missing key.
PyJson get_or(const PyJson& obj, std::string_view key, PyJson fallback) {
  if (!obj.is_object())
    reject("AttributeError", str_cat("each message must be a JSON object, got ", py_repr(obj)));
  const PyJson* v = obj.find(key);
  return v ? *v : fallback;
}

bool is_str(const PyJson& v, std::string_view s) {
  return v.is_string() && v.as_string() == s;
}

bool hashable(const PyJson& v) {
  return !v.is_array() && !v.is_object();
}

// "{x or ''}" in a str.format call.
std::string str_or_empty(const PyJson& v) {
  return v.truthy() ? py_str(v) : "";
}

// "\n\n".join(parts): every part must be a str.
std::string join_strings(const std::vector<PyJson>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].is_string())
      reject("TypeError", str_cat("sequence item ", i, ": expected str instance, got ",
                                  py_repr(parts[i]), " (message text must be a string)"));
    if (i) out += sep;
    out += parts[i].as_string();
  }
  return out;
}

// Python iterates lists; the official code would fail (or misbehave on
// strings/dicts) for anything else, so we reject those shapes.
const PyJson::Array& as_list(const PyJson& v, const char* what) {
  if (!v.is_array()) reject("TypeError", str_cat(what, " must be a JSON array, got ", py_repr(v)));
  return v.items();
}

const PyJson& subscript(const PyJson& obj, std::string_view key, const char* what) {
  if (!obj.is_object())
    reject("TypeError", str_cat(what, " must be a JSON object, got ", py_repr(obj)));
  const PyJson* v = obj.find(key);
  if (!v) reject("KeyError", str_cat(what, " has no '", key, "' field: ", py_repr(obj)));
  return *v;
}

std::string render_tools(const PyJson::Array& tools) {
  std::string out(kToolsTemplateHead);
  for (size_t i = 0; i < tools.size(); ++i) {
    if (i) out += '\n';
    out += py_json_dumps(tools[i]);
  }
  out += kToolsTemplateTail;
  return out;
}

// tools_from_openai_format: [tool["function"] for tool in tools]
PyJson::Array tools_from_openai_format(const PyJson& tools) {
  PyJson::Array out;
  for (const auto& tool : as_list(tools, "tools"))
    out.push_back(subscript(tool, "function", "tool"));
  return out;
}

struct ToolCall {
  PyJson name;
  PyJson arguments;
};

std::vector<ToolCall> tool_calls_from_openai_format(const PyJson& tool_calls) {
  std::vector<ToolCall> out;
  for (const auto& tc : as_list(tool_calls, "tool_calls")) {
    const PyJson& function = subscript(tc, "function", "tool call");
    out.push_back({subscript(function, "name", "tool call function"),
                   subscript(function, "arguments", "tool call function")});
  }
  return out;
}

std::string encode_arguments_to_dsml(const ToolCall& tc) {
  PyJson arguments;
  if (tc.arguments.is_string()) {
    try {
      arguments = py_json_loads(tc.arguments.as_string());
    } catch (const PyJsonError&) {
      // Not JSON: the whole text becomes one "arguments" string parameter.
      arguments = PyJson::object({{"arguments", tc.arguments}});
    }
  } else {
    // json.loads raises TypeError on a non-string, which the same fallback catches.
    arguments = PyJson::object({{"arguments", tc.arguments}});
  }
  if (!arguments.is_object())
    reject("AttributeError",
           str_cat("tool call arguments must encode a JSON object, got ", py_repr(tc.arguments)));
  std::string out;
  bool first = true;
  for (const auto& [key, value] : arguments.members()) {
    if (!first) out += '\n';
    first = false;
    out += str_cat("<", kDsmlToken, "parameter name=\"", key, "\" string=\"",
                   value.is_string() ? "true" : "false", "\">");
    out += value.is_string() ? value.as_string() : py_json_dumps(value);
    out += str_cat("</", kDsmlToken, "parameter>");
  }
  return out;
}

bool role_is_user_like(const PyJson& role) {
  return is_str(role, "user") || is_str(role, "developer");
}

int find_last_user_index(const Messages& messages) {
  for (int idx = static_cast<int>(messages.size()) - 1; idx >= 0; --idx)
    if (role_is_user_like(get(messages[idx], "role"))) return idx;
  return -1;
}

// ---------------------------------------------------------------------------
// Preprocessing

Messages merge_tool_messages(const Messages& messages) {
  Messages merged;
  auto last_is_open_user_block = [&]() {
    if (merged.empty()) return false;
    const PyJson& last = merged.back();
    return is_str(get(last, "role"), "user") && last.contains("content_blocks");
  };
  for (const PyJson& msg : messages) {
    const PyJson& role = get(msg, "role");
    if (is_str(role, "tool")) {
      PyJson block =
          PyJson::object({{"type", PyJson::string("tool_result")},
                          {"tool_use_id", get_or(msg, "tool_call_id", PyJson::string(""))},
                          {"content", get_or(msg, "content", PyJson::string(""))}});
      if (last_is_open_user_block()) {
        PyJson blocks = *merged.back().find("content_blocks");
        blocks.push_back(std::move(block));
        merged.back().set("content_blocks", std::move(blocks));
      } else {
        merged.push_back(PyJson::object({{"role", PyJson::string("user")},
                                         {"content_blocks", PyJson::array({std::move(block)})}}));
      }
    } else if (is_str(role, "user")) {
      PyJson content = get_or(msg, "content", PyJson::string(""));
      PyJson text_block = PyJson::object({{"type", PyJson::string("text")}, {"text", content}});
      if (last_is_open_user_block() && get(merged.back(), "task").is_null()) {
        PyJson blocks = *merged.back().find("content_blocks");
        blocks.push_back(std::move(text_block));
        merged.back().set("content_blocks", std::move(blocks));
      } else {
        PyJson rebuilt =
            PyJson::object({{"role", PyJson::string("user")},
                            {"content", content},
                            {"content_blocks", PyJson::array({std::move(text_block)})}});
        for (std::string_view key : {"task", "wo_eos", "mask"})
          if (const PyJson* v = msg.find(key)) rebuilt.set(std::string(key), *v);
        merged.push_back(std::move(rebuilt));
      }
    } else {
      merged.push_back(msg);
    }
  }
  return merged;
}

// Python dict semantics for the id -> call index map.
struct CallOrder {
  std::vector<std::pair<PyJson, int>> entries;
  void set(const PyJson& id, int idx) {
    for (auto& [k, v] : entries)
      if (k == id) {
        v = idx;
        return;
      }
    entries.emplace_back(id, idx);
  }
  int get(const PyJson& id) const {
    for (const auto& [k, v] : entries)
      if (k == id) return v;
    return 0;
  }
};

void sort_tool_results_by_call_order(Messages& messages) {
  CallOrder order;
  for (PyJson& msg : messages) {
    const PyJson& role = get(msg, "role");
    if (is_str(role, "assistant") && get(msg, "tool_calls").truthy()) {
      order = {};
      const auto& calls = as_list(get(msg, "tool_calls"), "tool_calls");
      for (size_t idx = 0; idx < calls.size(); ++idx) {
        const PyJson& tc = calls[idx];
        PyJson id = get(tc, "id");
        if (!id.truthy()) {
          PyJson function = get_or(tc, "function", PyJson::object());
          if (!function.is_object())
            reject("AttributeError",
                   str_cat("tool call 'function' must be a JSON object: ", py_repr(tc)));
          id = get_or(function, "id", PyJson::string(""));
        }
        if (id.truthy()) {
          if (!hashable(id)) reject("TypeError", str_cat("unhashable tool call id ", py_repr(id)));
          order.set(id, static_cast<int>(idx));
        }
      }
    } else if (is_str(role, "user") && get(msg, "content_blocks").truthy()) {
      const auto& blocks = as_list(get(msg, "content_blocks"), "content_blocks");
      std::vector<PyJson> tool_blocks;
      for (const auto& b : blocks)
        if (is_str(get(b, "type"), "tool_result")) tool_blocks.push_back(b);
      if (tool_blocks.size() > 1 && !order.entries.empty()) {
        std::vector<int> keys;
        for (const auto& b : tool_blocks) {
          PyJson id = get_or(b, "tool_use_id", PyJson::string(""));
          if (!hashable(id)) reject("TypeError", str_cat("unhashable tool_call_id ", py_repr(id)));
          keys.push_back(order.get(id));
        }
        std::vector<size_t> perm(tool_blocks.size());
        for (size_t i = 0; i < perm.size(); ++i) perm[i] = i;
        std::stable_sort(perm.begin(), perm.end(),
                         [&](size_t a, size_t b) { return keys[a] < keys[b]; });
        PyJson rebuilt = PyJson::array();
        size_t next = 0;
        for (const auto& b : blocks)
          rebuilt.push_back(is_str(get(b, "type"), "tool_result") ? tool_blocks[perm[next++]] : b);
        msg.set("content_blocks", std::move(rebuilt));
      }
    }
  }
}

Messages drop_thinking_messages(const Messages& messages) {
  int last_user_idx = find_last_user_index(messages);
  Messages result;
  for (size_t idx = 0; idx < messages.size(); ++idx) {
    const PyJson& msg = messages[idx];
    const PyJson& role = get(msg, "role");
    if (!hashable(role)) reject("TypeError", str_cat("unhashable message role ", py_repr(role)));
    bool keep_role = is_str(role, "user") || is_str(role, "system") || is_str(role, "tool") ||
                     is_str(role, "latest_reminder") || is_str(role, "direct_search_results");
    if (keep_role || static_cast<int>(idx) >= last_user_idx) {
      result.push_back(msg);
    } else if (is_str(role, "assistant")) {
      PyJson copy = msg;
      copy.erase("reasoning_content");
      result.push_back(std::move(copy));
    }
    // Anything else before the last user turn (developer messages, unknown
    // roles) is dropped, as the official code does.
  }
  return result;
}

// ---------------------------------------------------------------------------
// Rendering

std::string render_message(size_t index, const Messages& messages, const PyJson& thinking_mode,
                           bool drop_thinking, const PyJson& reasoning_effort) {
  if (!is_str(thinking_mode, "chat") && !is_str(thinking_mode, "thinking"))
    reject("AssertionError", str_cat("Invalid thinking_mode `", py_str(thinking_mode), "`"));
  const bool thinking = is_str(thinking_mode, "thinking");

  std::string prompt;
  const PyJson& msg = messages[index];
  const int last_user_idx = find_last_user_index(messages);
  const int idx = static_cast<int>(index);

  const PyJson& role = get(msg, "role");
  const PyJson& content = get(msg, "content");
  PyJson::Array tools;
  const bool has_tools = get(msg, "tools").truthy();
  if (has_tools) tools = tools_from_openai_format(get(msg, "tools"));
  const PyJson& response_format = get(msg, "response_format");
  std::vector<ToolCall> tool_calls;
  if (get(msg, "tool_calls").truthy())
    tool_calls = tool_calls_from_openai_format(get(msg, "tool_calls"));
  const PyJson& reasoning_content = get(msg, "reasoning_content");
  const bool wo_eos = get(msg, "wo_eos").truthy();

  if (!(reasoning_effort.is_null() || is_str(reasoning_effort, "max") ||
        is_str(reasoning_effort, "high")))
    reject("AssertionError", str_cat("Invalid reasoning effort: ", py_str(reasoning_effort)));
  if (index == 0 && thinking && is_str(reasoning_effort, "max")) prompt += kReasoningEffortMax;

  auto append_tools_and_format = [&](std::string& out) {
    if (has_tools) out += "\n\n" + render_tools(tools);
    if (response_format.truthy())
      out += str_cat("\n\n", kResponseFormatHead, py_json_dumps(response_format));
  };

  if (is_str(role, "system")) {
    prompt += str_or_empty(content);
    append_tools_and_format(prompt);
  } else if (is_str(role, "developer")) {
    if (!content.truthy())
      reject("AssertionError", str_cat("Invalid message for role `developer`: ", py_repr(msg)));
    if (!content.is_string())
      reject("TypeError",
             str_cat("developer message content must be a string, got ", py_repr(content)));
    std::string body = str_cat(kUserToken, content.as_string());
    append_tools_and_format(body);
    prompt += body;
  } else if (is_str(role, "user")) {
    prompt += kUserToken;
    const PyJson& content_blocks = get(msg, "content_blocks");
    if (content_blocks.truthy()) {
      std::vector<PyJson> parts;
      for (const auto& block : as_list(content_blocks, "content_blocks")) {
        const PyJson& type = get(block, "type");
        if (is_str(type, "text")) {
          parts.push_back(get_or(block, "text", PyJson::string("")));
        } else if (is_str(type, "tool_result")) {
          PyJson tool_content = get_or(block, "content", PyJson::string(""));
          if (tool_content.is_array()) {
            std::vector<PyJson> text_parts;
            for (const auto& b : tool_content.items()) {
              if (is_str(get(b, "type"), "text")) {
                text_parts.push_back(get_or(b, "text", PyJson::string("")));
              } else {
                text_parts.push_back(
                    PyJson::string(str_cat("[Unsupported ", py_str(get(b, "type")), "]")));
              }
            }
            tool_content = PyJson::string(join_strings(text_parts, "\n\n"));
          }
          parts.push_back(
              PyJson::string(str_cat("<tool_result>", py_str(tool_content), "</tool_result>")));
        } else {
          parts.push_back(PyJson::string(str_cat("[Unsupported ", py_str(type), "]")));
        }
      }
      prompt += join_strings(parts, "\n\n");
    } else {
      prompt += str_or_empty(content);
    }
  } else if (is_str(role, "latest_reminder")) {
    prompt += str_cat(kLatestReminderToken, py_str(content));
  } else if (is_str(role, "tool")) {
    reject("NotImplementedError",
           "deepseek_v4 merges tool messages into user; please preprocess with "
           "merge_tool_messages()");
  } else if (is_str(role, "assistant")) {
    std::string tc_content;
    if (!tool_calls.empty()) {
      std::string invokes;
      for (size_t i = 0; i < tool_calls.size(); ++i) {
        if (i) invokes += '\n';
        invokes += str_cat("<", kDsmlToken, "invoke name=\"", py_str(tool_calls[i].name), "\">\n",
                           encode_arguments_to_dsml(tool_calls[i]), "\n</", kDsmlToken, "invoke>");
      }
      tc_content =
          str_cat("\n\n<", kDsmlToken, "tool_calls>\n", invokes, "\n</", kDsmlToken, "tool_calls>");
    }
    const bool prev_has_task = idx >= 1 && !get(messages[index - 1], "task").is_null();
    std::string thinking_part;
    if (thinking && !prev_has_task && (!drop_thinking || idx > last_user_idx))
      thinking_part = str_cat(str_or_empty(reasoning_content), kThinkEnd);
    prompt += thinking_part + str_or_empty(content) + tc_content;
    if (!wo_eos) prompt += kEosToken;
  } else {
    reject("NotImplementedError", str_cat("Unknown role: ", py_str(role)));
  }

  if (index + 1 < messages.size()) {
    const PyJson& next_role = get(messages[index + 1], "role");
    if (!is_str(next_role, "assistant") && !is_str(next_role, "latest_reminder")) return prompt;
  }

  const PyJson& task = get(msg, "task");
  if (!task.is_null()) {
    if (!hashable(task)) reject("TypeError", str_cat("unhashable task ", py_repr(task)));
    const Task* found = nullptr;
    for (const auto& t : kTasks)
      if (is_str(task, t.name)) found = &t;
    if (!found) {
      std::string valid;
      for (const auto& t : kTasks) valid += str_cat(valid.empty() ? "" : ", ", "'", t.name, "'");
      reject("AssertionError",
             str_cat("Invalid task: ", py_repr(task), ". Valid tasks are: [", valid, "]"));
    }
    if (found->name != "action") {
      prompt += found->token;
    } else {
      prompt += kAssistantToken;
      prompt += thinking ? kThinkStart : kThinkEnd;
      prompt += found->token;
    }
  } else if (role_is_user_like(role)) {
    prompt += kAssistantToken;
    if (thinking && (!drop_thinking || idx >= last_user_idx)) {
      prompt += kThinkStart;
    } else {
      prompt += kThinkEnd;
    }
  }
  return prompt;
}

std::string encode_impl(const PyJson& messages_in, const PyJson& thinking_mode,
                        const PyJson& context_in, bool drop_thinking, bool add_default_bos_token,
                        const PyJson& reasoning_effort) {
  Messages raw_context;
  if (context_in.truthy()) raw_context = as_list(context_in, "context");
  Messages messages = merge_tool_messages(as_list(messages_in, "messages"));
  {
    // Tool-result order in `messages` follows the last tool call anywhere,
    // context included (the official code sorts context + messages).
    Messages joined = raw_context;
    joined.insert(joined.end(), messages.begin(), messages.end());
    sort_tool_results_by_call_order(joined);
    messages.assign(joined.begin() + static_cast<long>(raw_context.size()), joined.end());
  }
  Messages context;
  if (!raw_context.empty()) {
    context = merge_tool_messages(raw_context);
    sort_tool_results_by_call_order(context);
  }
  Messages full = context;
  full.insert(full.end(), messages.begin(), messages.end());

  std::string prompt =
      add_default_bos_token && context.empty() ? std::string(kBosToken) : std::string();

  bool effective_drop_thinking = drop_thinking;
  for (const auto& m : full)
    if (get(m, "tools").truthy()) effective_drop_thinking = false;

  long num_to_render, context_len;
  if (is_str(thinking_mode, "thinking") && effective_drop_thinking) {
    full = drop_thinking_messages(full);
    num_to_render =
        static_cast<long>(full.size()) - static_cast<long>(drop_thinking_messages(context).size());
    context_len = static_cast<long>(full.size()) - num_to_render;
  } else {
    num_to_render = static_cast<long>(messages.size());
    context_len = static_cast<long>(context.size());
  }
  for (long i = 0; i < num_to_render; ++i)
    prompt += render_message(static_cast<size_t>(i + context_len), full, thinking_mode,
                             effective_drop_thinking, reasoning_effort);
  return prompt;
}

}  // namespace

std::string encode_messages(const PyJson& messages, const EncodeOptions& options) {
  return encode_impl(
      messages, PyJson::string(options.thinking_mode), options.context, options.drop_thinking,
      options.add_default_bos_token,
      options.reasoning_effort ? PyJson::string(*options.reasoning_effort) : PyJson());
}

std::string render(const PyJson& input) {
  if (!input.is_object()) reject("TypeError", "the chat input must be a JSON object");
  PyJson messages = subscript(input, "messages", "the chat input");
  if (const PyJson* tools = input.find("tools")) {
    const PyJson& where = subscript(input, "tools_attached_to", "the chat input (with tools)");
    if (!where.is_int() || !messages.is_array())
      reject("TypeError", "tools_attached_to must be an integer index into messages");
    long n = static_cast<long>(messages.items().size());
    long i = std::strtol(where.int_digits().c_str(), nullptr, 10);
    if (i < 0) i += n;
    if (i < 0 || i >= n)
      reject("IndexError",
             str_cat("tools_attached_to ", where.int_digits(), " is outside the ", n, " messages"));
    PyJson& target = messages.items()[static_cast<size_t>(i)];
    if (!target.is_object()) reject("TypeError", "tools_attached_to must name a message object");
    target.set("tools", *tools);
  }
  const PyJson& thinking_mode = subscript(input, "thinking_mode", "the chat input");
  const PyJson& context = get(input, "context");
  bool drop_thinking = get_or(input, "drop_thinking", PyJson::boolean(true)).truthy();
  bool add_bos = get_or(input, "add_default_bos_token", PyJson::boolean(true)).truthy();
  const PyJson& reasoning_effort = get(input, "reasoning_effort");
  return encode_impl(messages, thinking_mode, context, drop_thinking, add_bos, reasoning_effort);
}

std::string render(const nlohmann::ordered_json& input) {
  return render(from_nlohmann(input));
}

std::string render_json_text(std::string_view input_json) {
  PyJson input;
  try {
    input = py_json_loads(input_json);
  } catch (const PyJsonError& e) {
    fail("the chat input is not valid JSON: ", e.what());
  }
  return render(input);
}

// ---------------------------------------------------------------------------
// Anthropic Messages -> OpenAI-style conversation

namespace {

[[noreturn]] void bad_request(const std::string& message) {
  fail("Anthropic request: ", message);
}

std::string text_of_block(const PyJson& block, const char* where) {
  const PyJson* text = block.find("text");
  if (!text || !text->is_string()) bad_request(str_cat(where, " text block has no string 'text'"));
  return text->as_string();
}

const std::string& block_type(const PyJson& block, const char* where) {
  if (!block.is_object()) bad_request(str_cat(where, " content blocks must be objects"));
  const PyJson* type = block.find("type");
  if (!type || !type->is_string()) bad_request(str_cat(where, " content block has no 'type'"));
  return type->as_string();
}

[[noreturn]] void unsupported_block(const std::string& type, const char* where) {
  if (type == "image" || type == "document")
    bad_request(str_cat(where, " content block of type '", type,
                        "' is not supported: DeepSeek V4 reads text only"));
  bad_request(str_cat("unsupported ", where, " content block type '", type, "'"));
}

// {"type": "enabled" | "adaptive" | "disabled"}; absent or null: the default.
bool thinking_enabled(const PyJson* cfg, bool thinking_default) {
  if (!cfg || cfg->is_null()) return thinking_default;
  if (cfg->is_object()) {
    const PyJson& type = get(*cfg, "type");
    if (is_str(type, "enabled") || is_str(type, "adaptive")) return true;
    if (is_str(type, "disabled")) return false;
  }
  fail("thinking must be {\"type\": \"enabled\"} or {\"type\": \"disabled\"}, got ", py_repr(*cfg));
}

PyJson map_tool(const PyJson& tool) {
  if (!tool.is_object()) bad_request("each tool must be an object");
  if (const PyJson* type = tool.find("type"); type && !type->is_null() && !is_str(*type, "custom"))
    bad_request(str_cat("server tool type ", py_str(*type),
                        " is not supported; only client tools with an input_schema are"));
  const PyJson* name = tool.find("name");
  if (!name || !name->is_string()) bad_request("a tool has no string 'name'");
  PyJson function = PyJson::object({{"name", *name}});
  if (const PyJson* description = tool.find("description"))
    function.set("description", *description);
  const PyJson* schema = tool.find("input_schema");
  if (!schema) bad_request(str_cat("tool '", name->as_string(), "' has no input_schema"));
  function.set("parameters", *schema);
  return PyJson::object({{"type", PyJson::string("function")}, {"function", std::move(function)}});
}

void map_user_message(const PyJson& content, PyJson& out) {
  if (content.is_string()) {
    out.push_back(PyJson::object({{"role", PyJson::string("user")}, {"content", content}}));
    return;
  }
  if (!content.is_array()) bad_request("user content must be a string or a list of blocks");
  for (const auto& block : content.items()) {
    const std::string& type = block_type(block, "user");
    if (type == "text") {
      out.push_back(PyJson::object({{"role", PyJson::string("user")},
                                    {"content", PyJson::string(text_of_block(block, "user"))}}));
    } else if (type == "tool_result") {
      const PyJson* id = block.find("tool_use_id");
      if (!id || !id->is_string()) bad_request("tool_result block has no string 'tool_use_id'");
      const PyJson* result = block.find("content");
      PyJson tool_content = result ? *result : PyJson::string("");
      if (!tool_content.is_string() && !tool_content.is_array())
        bad_request("tool_result content must be a string or a list of blocks");
      out.push_back(PyJson::object({{"role", PyJson::string("tool")},
                                    {"tool_call_id", *id},
                                    {"content", std::move(tool_content)}}));
    } else {
      unsupported_block(type, "user");
    }
  }
}

void map_assistant_message(const PyJson& content, PyJson& out) {
  PyJson msg = PyJson::object({{"role", PyJson::string("assistant")}});
  if (content.is_string()) {
    msg.set("content", content);
    out.push_back(std::move(msg));
    return;
  }
  if (!content.is_array()) bad_request("assistant content must be a string or a list of blocks");
  std::string text, reasoning;
  bool has_reasoning = false;
  PyJson tool_calls = PyJson::array();
  for (const auto& block : content.items()) {
    const std::string& type = block_type(block, "assistant");
    if (type == "text") {
      text += text_of_block(block, "assistant");
    } else if (type == "thinking") {
      const PyJson* thinking = block.find("thinking");
      if (!thinking || !thinking->is_string())
        bad_request("thinking block has no string 'thinking'");
      reasoning += thinking->as_string();
      has_reasoning = true;
    } else if (type == "redacted_thinking") {
      // Encrypted reasoning from another model: nothing we can render.
    } else if (type == "tool_use") {
      const PyJson* id = block.find("id");
      const PyJson* name = block.find("name");
      if (!name || !name->is_string()) bad_request("tool_use block has no string 'name'");
      const PyJson* input = block.find("input");
      PyJson arguments = input ? *input : PyJson::object();
      PyJson call = PyJson::object();
      if (id) call.set("id", *id);
      call.set("type", PyJson::string("function"));
      call.set("function",
               PyJson::object(
                   {{"name", *name}, {"arguments", PyJson::string(py_json_dumps(arguments))}}));
      tool_calls.push_back(std::move(call));
    } else {
      unsupported_block(type, "assistant");
    }
  }
  if (has_reasoning) msg.set("reasoning_content", PyJson::string(reasoning));
  msg.set("content", PyJson::string(text));
  if (!tool_calls.items().empty()) msg.set("tool_calls", std::move(tool_calls));
  out.push_back(std::move(msg));
}

}  // namespace

PyJson anthropic_to_conversation(const PyJson& request, bool thinking_default) {
  if (!request.is_object()) bad_request("the request must be a JSON object");
  PyJson messages = PyJson::array();

  if (const PyJson* system = request.find("system"); system && !system->is_null()) {
    std::string text;
    if (system->is_string()) {
      text = system->as_string();
    } else if (system->is_array()) {
      bool first = true;
      for (const auto& block : system->items()) {
        const std::string& type = block_type(block, "system");
        if (type != "text") unsupported_block(type, "system");
        if (!first) text += "\n\n";
        first = false;
        text += text_of_block(block, "system");
      }
    } else {
      bad_request("system must be a string or a list of text blocks");
    }
    messages.push_back(PyJson::object(
        {{"role", PyJson::string("system")}, {"content", PyJson::string(std::move(text))}}));
  }

  if (const PyJson* tools = request.find("tools"); tools && tools->truthy()) {
    if (!tools->is_array()) bad_request("tools must be a list");
    PyJson mapped = PyJson::array();
    for (const auto& tool : tools->items()) mapped.push_back(map_tool(tool));
    attach_tools(messages, std::move(mapped));
  }

  const PyJson* turns = request.find("messages");
  if (!turns || !turns->is_array()) bad_request("'messages' must be a list");
  for (const auto& turn : turns->items()) {
    if (!turn.is_object()) bad_request("each message must be an object");
    const PyJson* role = turn.find("role");
    const PyJson* content = turn.find("content");
    if (!content) bad_request("a message has no 'content'");
    if (role && is_str(*role, "user")) {
      map_user_message(*content, messages);
    } else if (role && is_str(*role, "assistant")) {
      map_assistant_message(*content, messages);
    } else {
      bad_request(str_cat("message role must be 'user' or 'assistant', got ",
                          role ? py_repr(*role) : "nothing"));
    }
  }

  PyJson out = PyJson::object({{"messages", std::move(messages)}});
  const bool thinking = thinking_enabled(request.find("thinking"), thinking_default);
  out.set("thinking_mode", PyJson::string(thinking ? "thinking" : "chat"));
  if (const PyJson* cfg = request.find("output_config"); thinking && cfg && cfg->is_object()) {
    if (auto effort = normalize_reasoning_effort(get(*cfg, "effort")))
      out.set("reasoning_effort", PyJson::string(*effort));
  }
  return out;
}

PyJson anthropic_to_conversation(const nlohmann::ordered_json& request, bool thinking_default) {
  return anthropic_to_conversation(from_nlohmann(request), thinking_default);
}

PyJson openai_to_conversation(const PyJson& request, bool thinking_default) {
  if (!request.is_object()) fail("the request must be a JSON object");
  const PyJson* in = request.find("messages");
  if (!in || !in->is_array()) fail("'messages' must be a list");
  PyJson messages = PyJson::array();
  for (const auto& m : in->items()) {
    PyJson msg = m;
    // Chat prefix completion: the final assistant message is continued, not closed.
    if (msg.is_object() && is_str(get(msg, "role"), "assistant") && get(msg, "prefix").truthy())
      msg.set("wo_eos", PyJson::boolean(true));
    messages.push_back(std::move(msg));
  }
  if (const PyJson* tools = request.find("tools"); tools && tools->truthy())
    attach_tools(messages, *tools);
  PyJson out = PyJson::object({{"messages", std::move(messages)}});
  const bool thinking = thinking_enabled(request.find("thinking"), thinking_default);
  out.set("thinking_mode", PyJson::string(thinking ? "thinking" : "chat"));
  if (thinking) {
    if (auto effort = normalize_reasoning_effort(get(request, "reasoning_effort")))
      out.set("reasoning_effort", PyJson::string(*effort));
  }
  return out;
}

PyJson openai_to_conversation(const nlohmann::ordered_json& request, bool thinking_default) {
  return openai_to_conversation(from_nlohmann(request), thinking_default);
}

std::optional<std::string> normalize_reasoning_effort(const PyJson& effort) {
  if (effort.is_null()) return std::nullopt;
  if (effort.is_string()) {
    const std::string& e = effort.as_string();
    if (e == "minimal" || e == "low" || e == "medium" || e == "high") return "high";
    if (e == "xhigh" || e == "max" || e == "ultra") return "max";
  }
  fail("reasoning effort must be one of minimal, low, medium, high, xhigh, max, got ",
       py_repr(effort));
}

void attach_tools(PyJson& messages, PyJson tools) {
  if (!messages.is_array()) fail("messages must be a list");
  auto& items = messages.items();
  if (items.empty() || !items[0].is_object() || !is_str(get(items[0], "role"), "system"))
    items.insert(items.begin(), PyJson::object({{"role", PyJson::string("system")},
                                                {"content", PyJson::string("")}}));
  items[0].set("tools", std::move(tools));
}

}  // namespace dsv4::chat
