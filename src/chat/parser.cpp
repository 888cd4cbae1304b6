#include "chat/parser.h"

#include <algorithm>
#include <optional>

#include "chat/encoder.h"
#include "chat/json_py.h"

namespace dsv4::chat {
namespace {

// The stop strings of the official parser (_read_until_stop calls).
constexpr std::string_view kToolCallsStart = "\n\n<｜DSML｜tool_calls";
constexpr std::string_view kToolCallsEnd = "</｜DSML｜tool_calls>";
constexpr std::string_view kInvokeOpen = "<｜DSML｜invoke";
constexpr std::string_view kInvokeClose = "</｜DSML｜invoke";
constexpr std::string_view kParamOpen = "<｜DSML｜parameter";
constexpr std::string_view kParamClose = "/｜DSML｜parameter";

constexpr std::string_view kNameAttr = " name=\"";
constexpr std::string_view kStringTrue = "\" string=\"true\">";
constexpr std::string_view kStringFalse = "\" string=\"false\">";

// Python's str.isspace(), i.e. what \s matches in a str pattern.
bool py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

size_t utf8_length(unsigned char c) {
  return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

uint32_t decode_at(std::string_view s, size_t i, size_t& len) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  len = utf8_length(c);
  if (len == 1 || i + len > s.size()) {
    len = 1;
    return c;
  }
  uint32_t cp = c & (0xFF >> (len + 1));
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return cp;
}

// Moves `end` back so that a delta never ends inside a UTF-8 sequence.
size_t utf8_boundary(const std::string& s, size_t begin, size_t end) {
  for (size_t i = end, back = 0; i > begin && back < 4; --i, ++back) {
    unsigned char c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    return end - (i - 1) < utf8_length(c) ? i - 1 : end;
  }
  return end;
}

// re.findall(r'^\s*name="(.*?)">\n$', content, flags=re.DOTALL) == [name]
std::optional<std::string> match_invoke_name(std::string_view seg) {
  size_t i = 0;
  while (i < seg.size()) {
    size_t len;
    if (!py_space(decode_at(seg, i, len))) break;
    i += len;
  }
  if (seg.substr(i, 6) != "name=\"") return std::nullopt;
  std::string_view rest = seg.substr(i + 6);
  // `$` also matches before a final "\n", and the lazy group takes the
  // shortest name, so a trailing "\">\n\n" wins over "\">\n".
  if (rest.size() >= 4 && rest.substr(rest.size() - 4) == "\">\n\n")
    return std::string(rest.substr(0, rest.size() - 4));
  if (rest.size() >= 3 && rest.substr(rest.size() - 3) == "\">\n")
    return std::string(rest.substr(0, rest.size() - 3));
  return std::nullopt;
}

struct ParamHeader {
  std::string name;
  bool is_string;
  size_t value_begin;  // offset in the segment
};

// The first ` string="true|false">` after ` name="`: with the lazy name group
// this is where the official regex splits, whatever the value turns out to be.
// `from` lets a streaming caller skip what it already searched.
std::optional<ParamHeader> find_param_header(std::string_view seg, size_t from = 0) {
  if (seg.substr(0, kNameAttr.size()) != kNameAttr) return std::nullopt;
  for (size_t p = seg.find("\" string=\"", std::max(from, kNameAttr.size()));
       p != std::string_view::npos; p = seg.find("\" string=\"", p + 1)) {
    if (seg.substr(p, kStringTrue.size()) == kStringTrue)
      return ParamHeader{std::string(seg.substr(kNameAttr.size(), p - kNameAttr.size())), true,
                         p + kStringTrue.size()};
    if (seg.substr(p, kStringFalse.size()) == kStringFalse)
      return ParamHeader{std::string(seg.substr(kNameAttr.size(), p - kNameAttr.size())), false,
                         p + kStringFalse.size()};
  }
  return std::nullopt;
}

// The end of the value in re.findall(r'^ name="(.*?)" string="(true|false)">(.*?)<$', ...):
// the value stops at a final "<" or at "<" before a final "\n".
std::optional<size_t> param_value_end(std::string_view seg, size_t value_begin) {
  size_t n = seg.size();
  if (n >= value_begin + 2 && seg.substr(n - 2) == "<\n") return n - 2;
  if (n >= value_begin + 1 && seg[n - 1] == '<') return n - 1;
  return std::nullopt;
}

std::string json_string_body(std::string_view s) {
  std::string quoted;
  py_json_dumps_string(s, quoted);
  return quoted.substr(1, quoted.size() - 2);
}

}  // namespace

nlohmann::ordered_json ParsedMessage::to_json() const {
  auto calls = nlohmann::ordered_json::array();
  for (const auto& tc : tool_calls)
    calls.push_back(
        {{"type", "function"}, {"function", {{"name", tc.name}, {"arguments", tc.arguments}}}});
  return {{"role", "assistant"},
          {"content", content},
          {"reasoning_content", reasoning_content},
          {"tool_calls", calls}};
}

std::string ParsedMessage::to_json_text() const {
  PyJson calls = PyJson::array();
  for (const auto& tc : tool_calls)
    calls.push_back(PyJson::object(
        {{"type", PyJson::string("function")},
         {"function", PyJson::object({{"name", PyJson::string(tc.name)},
                                      {"arguments", PyJson::string(tc.arguments)}})}}));
  return py_json_dumps(PyJson::object({{"role", PyJson::string("assistant")},
                                       {"content", PyJson::string(content)},
                                       {"reasoning_content", PyJson::string(reasoning_content)},
                                       {"tool_calls", std::move(calls)}}));
}

struct OutputParser::Scan {
  bool found = false;
  size_t stop_index = 0;
  size_t stop_pos = 0;
  size_t stop_end = 0;
  size_t safe_end = 0;  // [seg_start_, safe_end) is certainly segment text
};

OutputParser::OutputParser(bool thinking_mode)
    : thinking_(thinking_mode), state_(thinking_mode ? State::kReasoning : State::kContent) {}

std::vector<ParseEvent> OutputParser::feed(std::string_view text) {
  if (finished_) dsv4::fail("OutputParser::feed called after finish()");
  buf_.append(text);
  std::vector<ParseEvent> events;
  if (!failed_) advance(false, events);
  return events;
}

std::vector<ParseEvent> OutputParser::finish() {
  std::vector<ParseEvent> events;
  if (finished_) return events;
  finished_ = true;
  if (!failed_) advance(true, events);
  if (failed_) return events;
  // The official parser checks the special tokens last, in this order.
  for (std::string_view token : {kBosToken, kEosToken, kThinkStart, kThinkEnd, kDsmlToken}) {
    if (result_.content.find(token) != std::string::npos ||
        result_.reasoning_content.find(token) != std::string::npos) {
      fail("AssertionError", str_cat("Unexpected special token '", token, "' in content"), events);
      return events;
    }
  }
  events.push_back({ParseEvent::Type::kEnd, "", -1});
  return events;
}

void OutputParser::fail(const char* type, std::string message, std::vector<ParseEvent>& events) {
  failed_ = true;
  error_type_ = type;
  error_message_ = message;
  events.push_back({ParseEvent::Type::kError, std::move(message), -1});
}

void OutputParser::start_segment(size_t pos) {
  seg_start_ = scan_from_ = emitted_ = pos;
}

void OutputParser::advance(bool at_end, std::vector<ParseEvent>& events) {
  while (!failed_ && step(at_end, events)) {
  }
}

// _read_until_stop on the text seen so far: a stop is reported only once no
// other stop could still appear earlier (or, at an equal position, earlier in
// the list), which the official call decides on the whole text.
OutputParser::Scan OutputParser::scan(const std::vector<std::string_view>& stops, bool at_end) {
  const size_t n = buf_.size();
  Scan sc;
  size_t best = std::string::npos;
  for (size_t i = 0; i < stops.size(); ++i) {
    size_t p = buf_.find(stops[i], scan_from_);
    if (p != std::string::npos && p < best) {
      best = p;
      sc.stop_index = i;
    }
  }
  // Earliest position whose tail is a proper prefix of some stop.
  auto partial_at = [&](size_t q, size_t max_index) {
    std::string_view tail(buf_.data() + q, n - q);
    for (size_t i = 0; i < std::min(max_index, stops.size()); ++i)
      if (tail.size() < stops[i].size() && stops[i].substr(0, tail.size()) == tail) return true;
    return false;
  };
  size_t partial = n;
  if (!at_end) {
    size_t max_len = 0;
    for (auto s : stops) max_len = std::max(max_len, s.size());
    size_t lo = std::max(scan_from_, n >= max_len ? n - max_len + 1 : size_t{0});
    for (size_t q = lo; q < n; ++q) {
      if (partial_at(q, stops.size())) {
        partial = q;
        break;
      }
    }
  }
  if (best != std::string::npos) {
    bool confirmed = partial >= best && (at_end || !partial_at(best, sc.stop_index));
    if (confirmed) {
      sc.found = true;
      sc.stop_pos = sc.safe_end = best;
      sc.stop_end = best + stops[sc.stop_index].size();
      return sc;
    }
  }
  sc.safe_end = std::min(partial, best);
  scan_from_ = sc.safe_end;
  return sc;
}

void OutputParser::emit_text(ParseEvent::Type type, size_t end, bool final,
                             std::vector<ParseEvent>& events) {
  if (!final) end = utf8_boundary(buf_, emitted_, end);
  if (end <= emitted_) return;
  std::string delta = buf_.substr(emitted_, end - emitted_);
  emitted_ = end;
  (type == ParseEvent::Type::kReasoningDelta ? result_.reasoning_content : result_.content) +=
      delta;
  events.push_back({type, std::move(delta), -1});
}

void OutputParser::emit_arguments(std::string fragment, std::vector<ParseEvent>& events) {
  if (fragment.empty()) return;
  int index = static_cast<int>(result_.tool_calls.size()) - 1;
  result_.tool_calls.back().arguments += fragment;
  events.push_back({ParseEvent::Type::kToolCallArguments, std::move(fragment), index});
}

// Streams the current parameter as it arrives: `{"name": ` once its header is
// known, then the value (JSON-escaped when string="true"). `limit` is how far
// the segment is known; when final, the segment ends at `limit`.
void OutputParser::stream_parameter(size_t limit, bool final, std::vector<ParseEvent>& events) {
  std::string_view seg(buf_.data() + seg_start_, limit - seg_start_);
  if (!header_found_) {
    auto header = find_param_header(seg, header_scan_from_);
    if (!header) {
      // No header starts before here (a longer one may still be arriving).
      header_scan_from_ = seg.size() > kStringFalse.size() ? seg.size() - kStringFalse.size() : 0;
      return;
    }
    header_found_ = true;
    value_is_string_ = header->is_string;
    value_start_ = emitted_ = seg_start_ + header->value_begin;
    std::string opening = param_names_.empty() ? "{" : ", ";
    py_json_dumps_string(header->name, opening);
    opening += ": ";
    if (value_is_string_) opening += '"';
    emit_arguments(std::move(opening), events);
  }
  size_t end;
  if (final) {
    end = seg_start_ + *param_value_end(seg, value_start_ - seg_start_);
  } else {
    // The value's last one or two bytes may be the "<" (+ "\n") that closes it.
    end = limit >= value_start_ + 2 ? limit - 2 : value_start_;
    end = utf8_boundary(buf_, emitted_, end);
  }
  if (end > emitted_) {
    std::string_view piece(buf_.data() + emitted_, end - emitted_);
    emit_arguments(value_is_string_ ? json_string_body(piece) : std::string(piece), events);
    emitted_ = end;
  }
  if (final && value_is_string_) emit_arguments("\"", events);
}

void OutputParser::end_tool_call(std::vector<ParseEvent>& events) {
  emit_arguments(param_names_.empty() ? "{}" : "}", events);
  events.push_back(
      {ParseEvent::Type::kToolCallEnd, "", static_cast<int>(result_.tool_calls.size()) - 1});
}

bool OutputParser::step(bool at_end, std::vector<ParseEvent>& events) {
  const size_t n = buf_.size();
  switch (state_) {
    case State::kReasoning:
    case State::kContent: {
      const bool reasoning = state_ == State::kReasoning;
      const auto type =
          reasoning ? ParseEvent::Type::kReasoningDelta : ParseEvent::Type::kContentDelta;
      Scan sc = scan({reasoning ? kThinkEnd : kEosToken, kToolCallsStart}, at_end);
      if (!sc.found) {
        emit_text(type, at_end ? n : sc.safe_end, at_end, events);
        if (at_end)
          fail("AssertionError",
               reasoning ? "Invalid thinking format: missing </think>"
                         : "Invalid format: missing EOS token",
               events);
        return false;
      }
      emit_text(type, sc.stop_pos, true, events);
      if (reasoning && sc.stop_index == 1) {
        fail("AssertionError", "Invalid thinking format: missing </think>", events);
        return false;
      }
      state_ = reasoning ? State::kContent
                         : (sc.stop_index == 0 ? State::kDone : State::kBetweenInvokes);
      start_segment(sc.stop_end);
      return true;
    }

    case State::kBetweenInvokes: {
      Scan sc = scan({kInvokeOpen, kToolCallsEnd}, at_end);
      if (!sc.found && !at_end) return false;
      std::string seg = buf_.substr(seg_start_, (sc.found ? sc.stop_pos : n) - seg_start_);
      // At the very end with nothing left, the official loop simply stops.
      if (!sc.found && seg.empty()) return false;
      if (seg != ">\n") {
        fail("ValueError", str_cat("Tool call format error: expected '>\\n' but got '", seg, "'"),
             events);
        return false;
      }
      if (!sc.found) {
        fail("ValueError", "Missing special token in tool calls", events);
        return false;
      }
      state_ = sc.stop_index == 1 ? State::kAfterCalls : State::kInvokeName;
      start_segment(sc.stop_end);
      return true;
    }

    case State::kInvokeName: {
      Scan sc = scan({kParamOpen, kInvokeClose}, at_end);
      if (!sc.found && !at_end) return false;
      std::string seg = buf_.substr(seg_start_, (sc.found ? sc.stop_pos : n) - seg_start_);
      auto name = match_invoke_name(seg);
      if (!name) {
        fail("ValueError", str_cat("Tool name format error: '", seg, "'"), events);
        return false;
      }
      result_.tool_calls.push_back({*name, ""});
      param_names_.clear();
      events.push_back({ParseEvent::Type::kToolCallStart, *name,
                        static_cast<int>(result_.tool_calls.size()) - 1});
      if (sc.found && sc.stop_index == 0) {
        state_ = State::kParameter;
        header_found_ = false;
        header_scan_from_ = 0;
      } else {
        end_tool_call(events);
        state_ = State::kBetweenInvokes;
      }
      if (!sc.found) return false;  // text ended after the name: the call is complete
      start_segment(sc.stop_end);
      return true;
    }

    case State::kParameter: {
      Scan sc = scan({kParamClose}, at_end);
      if (!sc.found && !at_end) {
        stream_parameter(sc.safe_end, false, events);
        return false;
      }
      const size_t seg_end = sc.found ? sc.stop_pos : n;
      std::string_view seg(buf_.data() + seg_start_, seg_end - seg_start_);
      auto header = find_param_header(seg);
      if (!header || !param_value_end(seg, header->value_begin)) {
        fail("ValueError", str_cat("Parameter format error: '", seg, "'"), events);
        return false;
      }
      if (std::find(param_names_.begin(), param_names_.end(), header->name) != param_names_.end()) {
        fail("ValueError", str_cat("Duplicate parameter name: '", header->name, "'"), events);
        return false;
      }
      stream_parameter(seg_end, true, events);
      param_names_.push_back(header->name);
      if (!sc.found) {
        fail("ValueError", "Parameter format error: expected '>\\n' but got ''", events);
        return false;
      }
      state_ = State::kAfterParameter;
      start_segment(sc.stop_end);
      return true;
    }

    case State::kAfterParameter: {
      Scan sc = scan({kParamOpen, kInvokeClose}, at_end);
      if (!sc.found && !at_end) return false;
      std::string seg = buf_.substr(seg_start_, (sc.found ? sc.stop_pos : n) - seg_start_);
      if (seg != ">\n") {
        fail("ValueError", str_cat("Parameter format error: expected '>\\n' but got '", seg, "'"),
             events);
        return false;
      }
      if (sc.found && sc.stop_index == 0) {
        state_ = State::kParameter;
        header_found_ = false;
        header_scan_from_ = 0;
      } else {
        end_tool_call(events);
        state_ = State::kBetweenInvokes;
      }
      if (!sc.found) return false;
      start_segment(sc.stop_end);
      return true;
    }

    case State::kAfterCalls: {
      Scan sc = scan({kEosToken}, at_end);
      size_t seg_end = sc.found ? sc.stop_pos : (at_end ? n : sc.safe_end);
      if (seg_end > seg_start_) {
        fail("AssertionError", "Unexpected content after tool calls", events);
        return false;
      }
      if (!sc.found) return false;
      state_ = State::kDone;
      start_segment(sc.stop_end);
      return true;
    }

    case State::kDone:
      if (n > seg_start_) fail("AssertionError", "Unexpected content at end", events);
      return false;
  }
  return false;
}

ParsedMessage parse(std::string_view text, bool thinking_mode) {
  OutputParser parser(thinking_mode);
  parser.feed(text);
  parser.finish();
  if (parser.failed()) throw ParseError(parser.error_type(), parser.error_message());
  return parser.result();
}

}  // namespace dsv4::chat
