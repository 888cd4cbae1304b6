#include "engine/tool_constraint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/byte_constraint.h"
#include "util/error.h"

namespace dsv4::engine {

using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kBar = "\xEF\xBD\x9C";  // "｜", frames DeepSeek control tokens
constexpr const char* kThinkTag = "think>";   // <think> / </think>
constexpr uint8_t kMaxWhitespaceRun = 1;      // one space after ':' or ','
constexpr size_t kMaxDepth = 32;

const std::string kBlockMarker =
    "\n\n<\xEF\xBD\x9C"
    "DSML\xEF\xBD\x9Ctool_calls";
const std::string kParamClose =
    "</\xEF\xBD\x9C"
    "DSML\xEF\xBD\x9Cparameter>";
const std::string kDsml =
    "\xEF\xBD\x9C"
    "DSML\xEF\xBD\x9C";

// JSON types of a schema node.
enum : uint8_t {
  kObj = 1,
  kArr = 2,
  kStr = 4,
  kNum = 8,  // any number
  kInt = 16,
  kBool = 32,
  kNull = 64,
  kAnyType = 127,
};

// Frame modes of the JSON recognizer.
enum : uint8_t {
  kValue,     // a value is expected
  kObjFirst,  // after '{': a key or '}'
  kObjKey,    // after ',': a key
  kKeyText,   // inside a known key (pos bytes of the candidate matched)
  kColon,
  kObjNext,   // ',' or '}'
  kArrFirst,  // a value or ']'
  kArrNext,   // ',' or ']'
  kString,
  kEscape,
  kUnicode,  // aux = hex digits still needed
  kNumber,   // aux = number phase
  kLiteral,  // aux = which literal, pos = bytes matched
  kEnum,     // key = a live candidate, pos = bytes matched
};

// Number phases.
enum : uint8_t { kMinus, kZero, kIntPart, kDot, kFrac, kE, kESign, kExp };
bool number_can_end(uint8_t phase) {
  return phase == kZero || phase == kIntPart || phase == kFrac || phase == kExp;
}

const char* const kLiterals[] = {"true", "false", "null"};

bool is_ws(uint8_t c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}
bool is_digit(uint8_t c) {
  return c >= '0' && c <= '9';
}
bool is_hex(uint8_t c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Advances a match of `m` (k bytes matched) by byte c: the longest prefix of m
// that is a suffix of (m[0..k) + c).
uint16_t advance_match(const std::string& m, uint16_t k, uint8_t c) {
  if (k < m.size() && static_cast<uint8_t>(m[k]) == c) return k + 1;
  for (size_t j = std::min<size_t>(k, m.size() - 1); j > 0; --j)
    if (static_cast<uint8_t>(m[j - 1]) == c &&
        std::memcmp(m.data(), m.data() + k - j + 1, j - 1) == 0)
      return static_cast<uint16_t>(j);
  return 0;
}

// Bytes of m up to and including its first control-token bar.
size_t committed(const std::string& m) {
  return m.find(kBar) + 3;
}

// The match of m currently ends with the control-token bar.
bool match_ends_in_bar(const std::string& m, uint16_t k) {
  return k >= 3 && std::memcmp(m.data() + k - 3, kBar, 3) == 0;
}

}  // namespace

struct SchemaNode {
  uint8_t types = kAnyType;
  std::vector<std::string> enums;  // canonical JSON texts; non-empty: the value is one of them
  std::vector<std::string> keys;   // JSON-encoded property names (when additional is false)
  std::vector<int> key_nodes;
  uint64_t required = 0;
  bool additional = true;  // other keys allowed (then keys are free and values unconstrained)
  int items = 0;           // array element node (0 = any)
};

struct ChoiceSet {
  enum Kind : uint8_t { kOpen, kNames, kAfterInvoke, kTool, kToolReturn } kind;
  std::vector<std::string> alts;
  std::vector<int> actions;
};

struct ToolGrammar {
  struct Param {
    int node;
    int raw_action_set = -1;  // string enum: the set of its raw values
  };
  struct Tool {
    std::string name;
    std::vector<Param> params;
    uint64_t required = 0;
    int set = -1;
  };
  std::vector<SchemaNode> nodes;  // nodes[0]: any JSON value
  std::vector<ChoiceSet> sets;
  std::vector<Tool> tools;
  int open_after_marker = -1, open_required = -1, names = -1, after_invoke = -1;
  int close_param = -1, newline = -1;

  int add_set(ChoiceSet s) {
    if (s.alts.size() > 256) fail("tool constraint: more than 256 alternatives in one place");
    sets.push_back(std::move(s));
    return static_cast<int>(sets.size()) - 1;
  }

  int compile_node(const ojson& s, int depth) {
    SchemaNode n;
    if (depth > 32) fail("tool schema nested deeper than 32 levels");
    if (!s.is_object()) {
      nodes.push_back(n);
      return static_cast<int>(nodes.size()) - 1;
    }
    if (s.contains("const")) n.enums.push_back(s["const"].dump());
    if (s.contains("enum") && s["enum"].is_array())
      for (const auto& v : s["enum"]) n.enums.push_back(v.dump());
    const bool combinator = s.contains("anyOf") || s.contains("oneOf") || s.contains("allOf") ||
                            s.contains("$ref") || s.contains("not");
    if (s.contains("type")) {
      n.types = 0;
      auto add = [&](const ojson& t) {
        if (!t.is_string()) return;
        const std::string name = t.get<std::string>();
        if (name == "object") n.types |= kObj;
        if (name == "array") n.types |= kArr;
        if (name == "string") n.types |= kStr;
        if (name == "number") n.types |= kNum | kInt;
        if (name == "integer") n.types |= kInt;
        if (name == "boolean") n.types |= kBool;
        if (name == "null") n.types |= kNull;
      };
      if (s["type"].is_array())
        for (const auto& t : s["type"]) add(t);
      else
        add(s["type"]);
      if (n.types == 0 || combinator) n.types = kAnyType;
    } else if (!combinator && s.contains("properties")) {
      n.types = kObj;
    } else if (!combinator && s.contains("items")) {
      n.types = kArr;
    }
    const int index = static_cast<int>(nodes.size());
    nodes.push_back(n);
    if ((n.types & kObj) && n.types != kAnyType && s.contains("additionalProperties") &&
        s["additionalProperties"] == false) {
      std::vector<std::string> keys;
      std::vector<int> key_nodes;
      uint64_t required = 0;
      if (s.contains("properties") && s["properties"].is_object()) {
        if (s["properties"].size() > 64)
          fail("tool schema: an object with more than 64 properties cannot be enforced");
        for (const auto& [k, sub] : s["properties"].items()) {
          keys.push_back(ojson(k).dump());
          key_nodes.push_back(compile_node(sub, depth + 1));
        }
        if (s.contains("required") && s["required"].is_array())
          for (const auto& r : s["required"])
            for (size_t i = 0; i < keys.size(); ++i)
              if (r.is_string() && keys[i] == ojson(r.get<std::string>()).dump())
                required |= uint64_t(1) << i;
      }
      nodes[index].keys = std::move(keys);
      nodes[index].key_nodes = std::move(key_nodes);
      nodes[index].required = required;
      nodes[index].additional = false;
    }
    if ((n.types & kArr) && n.types != kAnyType && s.contains("items")) {
      const int items = compile_node(s["items"], depth + 1);
      nodes[index].items = items;
    }
    return index;
  }
};

std::shared_ptr<const ToolGrammar> ToolCallMachine::compile(
    const std::vector<ToolSpec>& tools, const std::vector<std::string>& allowed) {
  auto g = std::make_shared<ToolGrammar>();
  g->nodes.push_back(SchemaNode{});  // 0: any value
  if (tools.empty()) fail("tool constraint: no tools");
  g->close_param = g->add_set({ChoiceSet::kToolReturn, {kParamClose + "\n"}, {0}});
  g->newline = g->add_set({ChoiceSet::kToolReturn, {"\n"}, {0}});
  ChoiceSet names{ChoiceSet::kNames, {}, {}};
  for (size_t t = 0; t < tools.size(); ++t) {
    const ToolSpec& spec = tools[t];
    ToolGrammar::Tool tool;
    tool.name = spec.name;
    ChoiceSet set{ChoiceSet::kTool, {}, {}};
    const ojson& schema = spec.parameters;
    if (schema.is_object() && schema.contains("properties") && schema["properties"].is_object()) {
      if (schema["properties"].size() > 64)
        fail("tool \"", spec.name, "\": more than 64 parameters cannot be enforced");
      for (const auto& [key, sub] : schema["properties"].items()) {
        const int p = static_cast<int>(tool.params.size());
        ToolGrammar::Param param{g->compile_node(sub, 1)};
        const SchemaNode& node = g->nodes[param.node];
        const bool string_enum =
            !node.enums.empty() && std::all_of(node.enums.begin(), node.enums.end(),
                                               [](const std::string& e) { return e[0] == '"'; });
        // The official encoder writes str values raw (string="true") and
        // everything else as JSON (string="false").
        const bool raw = (node.types & kStr) && (node.enums.empty() || string_enum);
        const bool json = node.types != kStr || (!node.enums.empty() && !string_enum);
        const std::string head = "<" + kDsml + "parameter name=\"" + key + "\" string=\"";
        if (raw) {
          set.alts.push_back(head + "true\">");
          set.actions.push_back(2 * p);
          if (string_enum) {
            ChoiceSet values{ChoiceSet::kToolReturn, {}, {}};
            for (const auto& e : node.enums) {
              values.alts.push_back(ojson::parse(e).get<std::string>() + kParamClose + "\n");
              values.actions.push_back(0);
            }
            param.raw_action_set = g->add_set(std::move(values));
          }
        }
        if (json) {
          set.alts.push_back(head + "false\">");
          set.actions.push_back(2 * p + 1);
        }
        tool.params.push_back(param);
      }
      if (schema.contains("required") && schema["required"].is_array())
        for (const auto& r : schema["required"]) {
          size_t i = 0;
          for (const auto& [key, sub] : schema["properties"].items()) {
            if (r.is_string() && r.get<std::string>() == key) tool.required |= uint64_t(1) << i;
            ++i;
          }
        }
    }
    set.alts.push_back("</" + kDsml + "invoke>\n");
    set.actions.push_back(-1);
    tool.set = g->add_set(std::move(set));
    const bool ok =
        allowed.empty() || std::find(allowed.begin(), allowed.end(), spec.name) != allowed.end();
    if (ok) {
      names.alts.push_back("<" + kDsml + "invoke name=\"" + spec.name + "\">\n");
      names.actions.push_back(static_cast<int>(t));
    }
    g->tools.push_back(std::move(tool));
  }
  if (names.alts.empty()) fail("tool constraint: the named tool is not among the tools");
  ChoiceSet after = names;
  after.kind = ChoiceSet::kAfterInvoke;
  after.alts.push_back("</" + kDsml + "tool_calls>");
  after.actions.push_back(-1);
  g->names = g->add_set(std::move(names));
  g->after_invoke = g->add_set(std::move(after));
  g->open_after_marker = g->add_set({ChoiceSet::kOpen, {">\n"}, {0}});
  g->open_required = g->add_set({ChoiceSet::kOpen, {kBlockMarker + ">\n"}, {0}});
  return g;
}

ToolCallMachine::ToolCallMachine(std::shared_ptr<const ToolGrammar> grammar, bool required)
    : g_(std::move(grammar)) {
  if (required) enter_choice(g_->open_required);
}

bool ToolCallMachine::enter_choice(int set) {
  phase_ = Phase::kChoice;
  set_ = set;
  pos_ = 0;
  alive_.reset();
  const ChoiceSet& s = g_->sets[set];
  for (size_t i = 0; i < s.alts.size(); ++i) {
    bool ok = true;
    if (s.kind == ChoiceSet::kTool) {
      const int a = s.actions[i];
      if (a < 0) {
        const uint64_t req = g_->tools[tool_].required;
        ok = (seen_ & req) == req;
      } else {
        ok = !(seen_ & (uint64_t(1) << (a / 2)));
      }
    }
    alive_[i] = ok;
  }
  return alive_.any();
}

bool ToolCallMachine::on_choice_done(int alt) {
  const ChoiceSet& s = g_->sets[set_];
  const int a = s.actions[alt];
  switch (s.kind) {
    case ChoiceSet::kOpen:
      return enter_choice(g_->names);
    case ChoiceSet::kNames:
    case ChoiceSet::kAfterInvoke:
      if (a < 0) {
        phase_ = Phase::kDone;
        return true;
      }
      tool_ = a;
      seen_ = 0;
      return enter_choice(g_->tools[tool_].set);
    case ChoiceSet::kTool: {
      if (a < 0) return enter_choice(g_->after_invoke);
      param_ = a / 2;
      seen_ |= uint64_t(1) << param_;
      const auto& param = g_->tools[tool_].params[param_];
      if (a % 2 == 0) {
        if (param.raw_action_set >= 0) return enter_choice(param.raw_action_set);
        phase_ = Phase::kRaw;
        pos_ = 0;
        return true;
      }
      phase_ = Phase::kJson;
      stack_.clear();
      stack_.push_back(Frame{param.node, kValue});
      ws_ = 0;
      return true;
    }
    case ChoiceSet::kToolReturn:
      return enter_choice(g_->tools[tool_].set);
  }
  return false;
}

// Tracks "｜" and "think>" in free text: a bar is only allowed where the text
// being matched expects one, a think tag never.
bool ToolCallMachine::bar_ok(uint8_t c, bool allowed_here) {
  think_ = static_cast<uint8_t>(c) == static_cast<uint8_t>(kThinkTag[think_])
               ? think_ + 1
               : (c == static_cast<uint8_t>(kThinkTag[0]) ? 1 : 0);
  if (think_ == 6) return false;
  if (c == 0xEF) {
    bar_ = 1;
  } else if (bar_ == 1 && c == 0xBD) {
    bar_ = 2;
  } else if (bar_ == 2 && c == 0x9C) {
    bar_ = 0;
    return allowed_here;
  } else {
    bar_ = 0;
  }
  return true;
}

bool ToolCallMachine::feed(uint8_t c) {
  switch (phase_) {
    case Phase::kContent: {
      // Once "<｜" of the marker is written, only the marker may follow (the
      // parser would read any other control text as broken markup).
      const uint16_t next = advance_match(kBlockMarker, pos_, c);
      if (pos_ >= committed(kBlockMarker) && next != pos_ + 1) return false;
      pos_ = next;
      if (!bar_ok(c, match_ends_in_bar(kBlockMarker, pos_))) return false;
      if (pos_ == kBlockMarker.size()) return enter_choice(g_->open_after_marker);
      return true;
    }
    case Phase::kChoice: {
      const ChoiceSet& s = g_->sets[set_];
      std::bitset<256> next;
      int done = -1;
      for (size_t i = 0; i < s.alts.size(); ++i) {
        if (!alive_[i]) continue;
        const std::string& alt = s.alts[i];
        if (alt.size() > pos_ && static_cast<uint8_t>(alt[pos_]) == c) {
          next[i] = true;
          if (alt.size() == size_t(pos_) + 1 && done < 0) done = static_cast<int>(i);
        }
      }
      if (next.none()) return false;
      alive_ = next;
      ++pos_;
      if (done >= 0) return on_choice_done(done);
      return true;
    }
    case Phase::kRaw: {
      const uint16_t next = advance_match(kParamClose, pos_, c);
      if (pos_ >= committed(kParamClose) && next != pos_ + 1) return false;
      pos_ = next;
      if (!bar_ok(c, match_ends_in_bar(kParamClose, pos_))) return false;
      if (pos_ == kParamClose.size()) return enter_choice(g_->newline);
      return true;
    }
    case Phase::kJson: {
      bool done = false, consumed = true;
      if (!feed_json(c, &done, &consumed)) return false;
      if (!done) return true;
      if (!enter_choice(g_->close_param)) return false;
      return consumed || feed(c);
    }
    case Phase::kDone:
      return false;  // only the end token
  }
  return false;
}

bool ToolCallMachine::feed(const std::string& bytes) {
  for (char ch : bytes)
    if (!feed(static_cast<uint8_t>(ch))) return false;
  return true;
}

bool ToolCallMachine::can_end() const {
  return phase_ == Phase::kDone || (phase_ == Phase::kContent && pos_ < 3);
}

// One byte of a string="false" value. *done: the value is complete (with
// *consumed false when this byte did not belong to it, e.g. after a number).
bool ToolCallMachine::feed_json(uint8_t c, bool* done, bool* consumed) {
  auto after_value = [&]() {
    stack_.pop_back();
    if (stack_.empty()) *done = true;
  };
  // Whitespace as the encoder's json.dumps writes it: at most one space,
  // after ':' or ',' (a weak model otherwise fills values with whitespace).
  auto whitespace = [&](bool allowed) {
    if (!allowed || c != ' ') return false;
    return ++ws_ <= kMaxWhitespaceRun;
  };
  while (true) {
    Frame& f = stack_.back();
    const SchemaNode& node = g_->nodes[f.node < 0 ? 0 : f.node];
    const bool in_string = f.mode == kString || f.mode == kEscape || f.mode == kUnicode;
    if (!in_string && f.mode != kNumber && !is_ws(c)) ws_ = 0;
    switch (f.mode) {
      case kValue: {
        if (whitespace(stack_.size() > 1)) return true;
        if (!node.enums.empty()) {
          f.mode = kEnum;
          f.pos = 0;
          f.key = -1;
          continue;
        }
        const uint8_t t = node.types;
        if (c == '{' && (t & kObj)) {
          if (stack_.size() > kMaxDepth) return false;
          f.mode = kObjFirst;
          f.seen = 0;
          return true;
        }
        if (c == '[' && (t & kArr)) {
          if (stack_.size() > kMaxDepth) return false;
          f.mode = kArrFirst;
          return true;
        }
        if (c == '"' && (t & kStr)) {
          f.mode = kString;
          return true;
        }
        if ((c == '-' || is_digit(c)) && (t & (kNum | kInt))) {
          f.mode = kNumber;
          f.aux = c == '-' ? kMinus : (c == '0' ? kZero : kIntPart);
          f.pos = 1;
          return true;
        }
        for (uint8_t l = 0; l < 3; ++l)
          if (c == static_cast<uint8_t>(kLiterals[l][0]) && (t & (l < 2 ? kBool : kNull))) {
            f.mode = kLiteral;
            f.aux = l;
            f.pos = 1;
            return true;
          }
        return false;
      }
      case kEnum: {
        // Candidates share the bytes matched so far; f.key is one of them.
        int next = -1;
        for (size_t i = 0; i < node.enums.size(); ++i) {
          const std::string& e = node.enums[i];
          if (e.size() > f.pos && static_cast<uint8_t>(e[f.pos]) == c &&
              (f.key < 0 || e.compare(0, f.pos, node.enums[f.key], 0, f.pos) == 0)) {
            next = static_cast<int>(i);
            break;
          }
        }
        if (next < 0) {
          // The byte extends no candidate: the value ended before it if the
          // bytes so far are a whole candidate (e.g. enum [1, 12] after "1").
          if (f.key < 0 || node.enums[f.key].size() != f.pos) {
            bool whole = false;
            for (const auto& e : node.enums)
              whole |= f.key >= 0 && e.size() == f.pos &&
                       e.compare(0, f.pos, node.enums[f.key], 0, f.pos) == 0;
            if (!whole) return false;
          }
          after_value();
          if (stack_.empty()) {
            *consumed = false;
            return true;
          }
          continue;
        }
        f.key = next;
        ++f.pos;
        // Ends here unless a longer candidate shares these bytes (enum [1, 12]).
        const std::string& e = node.enums[next];
        if (e.size() == f.pos) {
          bool longer = false;
          for (const auto& o : node.enums)
            longer |= o.size() > f.pos && o.compare(0, f.pos, e) == 0;
          if (!longer) after_value();
        }
        return true;
      }
      case kObjFirst:
      case kObjKey:
        if (whitespace(f.mode == kObjKey)) return true;
        if (c == '}' && f.mode == kObjFirst) {
          if (!node.additional && (f.seen & node.required) != node.required) return false;
          after_value();
          return true;
        }
        if (c != '"') return false;
        if (node.additional) {
          // A free key: read it as a string, then any value.
          f.mode = kColon;
          f.key = -1;
          stack_.push_back(Frame{-2, kString});
          return true;
        }
        f.mode = kKeyText;
        f.key = -1;
        f.pos = 0;
        continue;
      case kKeyText: {
        int next = -1;
        for (size_t i = 0; i < node.keys.size(); ++i) {
          if (f.seen & (uint64_t(1) << i)) continue;
          const std::string& k = node.keys[i];
          if (k.size() > f.pos && static_cast<uint8_t>(k[f.pos]) == c &&
              (f.key < 0 || k.compare(0, f.pos, node.keys[f.key], 0, f.pos) == 0)) {
            next = static_cast<int>(i);
            break;
          }
        }
        if (next < 0) return false;
        f.key = next;
        if (node.keys[next].size() == ++f.pos) {
          f.seen |= uint64_t(1) << next;
          f.mode = kColon;
        }
        return true;
      }
      case kColon: {
        if (c != ':') return false;
        const int child = f.key >= 0 ? node.key_nodes[f.key] : 0;
        f.mode = kObjNext;
        stack_.push_back(Frame{child, kValue});
        return true;
      }
      case kObjNext:
        if (c == ',') {
          if (!node.additional &&
              f.seen ==
                  (node.keys.size() == 64 ? ~uint64_t(0) : (uint64_t(1) << node.keys.size()) - 1))
            return false;  // every property is present: no key can follow
          f.mode = kObjKey;
          return true;
        }
        if (c != '}') return false;
        if (!node.additional && (f.seen & node.required) != node.required) return false;
        after_value();
        return true;
      case kArrFirst:
        if (c == ']') {
          after_value();
          return true;
        }
        f.mode = kArrNext;
        stack_.push_back(Frame{node.items, kValue});
        continue;
      case kArrNext:
        if (c == ',') {
          stack_.push_back(Frame{node.items, kValue});
          return true;
        }
        if (c != ']') return false;
        after_value();
        return true;
      case kString:
        if (!bar_ok(c, false)) return false;
        if (c == '"') {
          if (f.node == -2) {  // a free key: back to its object, which waits for ':'
            stack_.pop_back();
            return true;
          }
          after_value();
          return true;
        }
        if (c == '\\') {
          f.mode = kEscape;
          return true;
        }
        return c >= 0x20;
      case kEscape:
        if (c == 'u') {
          f.mode = kUnicode;
          f.aux = 4;
          return true;
        }
        if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
            c == 't') {
          f.mode = kString;
          return true;
        }
        return false;
      case kUnicode:
        if (!is_hex(c)) return false;
        if (--f.aux == 0) f.mode = kString;
        return true;
      case kNumber: {
        const bool integer_only = !(node.types & kNum);
        // Digit counts are capped so every value fits a double (an int64 for
        // integers): 18 integer digits, 20 fraction digits, 2 exponent digits.
        auto digit = [&](uint8_t phase, uint16_t limit) {
          if (f.aux != phase) f.pos = 0;
          f.aux = phase;
          return ++f.pos <= limit;
        };
        switch (f.aux) {
          case kMinus:
            if (c == '0') return f.aux = kZero, true;
            if (is_digit(c)) return digit(kIntPart, 18);
            return false;
          case kZero:
          case kIntPart:
            if (f.aux == kIntPart && is_digit(c)) return digit(kIntPart, 18);
            if (!integer_only && c == '.') return f.aux = kDot, true;
            if (!integer_only && (c == 'e' || c == 'E')) return f.aux = kE, true;
            break;
          case kDot:
            if (is_digit(c)) return digit(kFrac, 20);
            return false;
          case kFrac:
            if (is_digit(c)) return digit(kFrac, 20);
            if (c == 'e' || c == 'E') return f.aux = kE, true;
            break;
          case kE:
            if (c == '+' || c == '-') return f.aux = kESign, true;
            if (is_digit(c)) return digit(kExp, 2);
            return false;
          case kESign:
            if (is_digit(c)) return digit(kExp, 2);
            return false;
          case kExp:
            if (is_digit(c)) return digit(kExp, 2);
            break;
        }
        // The number ended: the byte belongs to what follows it.
        if (!number_can_end(f.aux)) return false;
        after_value();
        if (stack_.empty()) {
          *consumed = false;
          return true;
        }
        continue;
      }
      case kLiteral: {
        const char* lit = kLiterals[f.aux];
        if (c != static_cast<uint8_t>(lit[f.pos])) return false;
        if (lit[++f.pos] == '\0') after_value();
        return true;
      }
    }
    return false;
  }
}

ToolCallConstraint::ToolCallConstraint(std::shared_ptr<const std::vector<std::string>> token_bytes,
                                       std::vector<int32_t> end_tokens, int32_t start_token,
                                       std::shared_ptr<const ToolGrammar> grammar, bool required)
    : bytes_(std::move(token_bytes)),
      end_tokens_(std::move(end_tokens)),
      start_token_(start_token),
      active_(start_token < 0),
      machine_(std::move(grammar), required) {}

void ToolCallConstraint::mask(std::span<float> logits) {
  if (!active_) return;
  mask_by_machine(logits, *bytes_, end_tokens_, machine_, /*end_ok=*/machine_.can_end(),
                  /*text_ok=*/true, [](const std::string&) { return false; });
}

void ToolCallConstraint::accept(int32_t token) {
  accept_token(token, start_token_, *bytes_, active_, machine_);
}

}  // namespace dsv4::engine
