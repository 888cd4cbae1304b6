// Tool-call constrained decoding: the DSML grammar machine accepts every
// golden tool call of tests/data/chat (official encoder/parser output) under
// tools derived from it, rejects the golden malformed blocks and schema
// violations, and sampling under the constraint from random logits over a
// toy vocabulary always yields a block that the official-compatible parser
// (dsv4_chat) accepts, with arguments valid for the schema (checked here by
// an independent validator).
// g++ 12 false -Wrestrict in std::string operator+ (GCC bug 105651).
#pragma GCC diagnostic ignored "-Wrestrict"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "chat/parser.h"
#include "engine/sampling.h"
#include "engine/tool_constraint.h"
#include "util/error.h"

namespace dsv4::engine {
namespace {

using ojson = nlohmann::ordered_json;

const std::string kBar = "\xEF\xBD\x9C";
const std::string kDsml = kBar + "DSML" + kBar;
const std::string kEos = "<" + kBar + "end\xE2\x96\x81of\xE2\x96\x81sentence" + kBar + ">";

std::string block_start() {
  return "\n\n<" + kDsml + "tool_calls>\n";
}
std::string invoke(const std::string& name, const std::string& params) {
  return "<" + kDsml + "invoke name=\"" + name + "\">\n" + params + "</" + kDsml + "invoke>\n";
}
std::string param(const std::string& name, bool str, const std::string& value) {
  return "<" + kDsml + "parameter name=\"" + name + "\" string=\"" + (str ? "true" : "false") +
         "\">" + value + "</" + kDsml + "parameter>\n";
}
std::string block(const std::string& invokes) {
  return block_start() + invokes + "</" + kDsml + "tool_calls>";
}

// Feeds the whole answer; true if accepted and the end token may follow.
bool accepts(const std::vector<ToolSpec>& tools, const std::string& text, bool required,
             const std::vector<std::string>& allowed = {}) {
  ToolCallMachine m(ToolCallMachine::compile(tools, allowed), required);
  return m.feed(text) && m.can_end();
}

// ---------------------------------------------------------------- golden

// The DSML parameters of a completion: (tool, key, string attr, value text).
struct DsmlParam {
  std::string tool, key;
  bool str;
  std::string value;
};
std::vector<std::pair<std::string, std::vector<DsmlParam>>> dsml_calls(const std::string& text) {
  std::vector<std::pair<std::string, std::vector<DsmlParam>>> calls;
  const std::string inv = "<" + kDsml + "invoke name=\"";
  const std::string par = "<" + kDsml + "parameter name=\"";
  const std::string close = "</" + kDsml + "parameter>";
  size_t at = 0;
  while ((at = text.find(inv, at)) != std::string::npos) {
    at += inv.size();
    const size_t q = text.find('"', at);
    calls.push_back({text.substr(at, q - at), {}});
    const size_t end = text.find("</" + kDsml + "invoke>", q);
    size_t p = q;
    while ((p = text.find(par, p)) != std::string::npos && p < end) {
      p += par.size();
      const size_t kq = text.find('"', p);
      const std::string key = text.substr(p, kq - p);
      const size_t sv = text.find("string=\"", kq) + 8;
      const bool str = text.compare(sv, 4, "true") == 0;
      const size_t vs = text.find("\">", sv) + 2;
      const size_t ve = text.find(close, vs);
      calls.back().second.push_back({calls.back().first, key, str, text.substr(vs, ve - vs)});
      p = ve;
    }
  }
  return calls;
}

// A strict schema for one value as the encoder wrote it.
ojson schema_of(const DsmlParam& p) {
  if (p.str) return {{"type", "string"}};
  const ojson v = ojson::parse(p.value);
  if (v.is_string()) return {{"type", "string"}};
  if (v.is_boolean()) return {{"type", "boolean"}};
  if (v.is_null()) return {{"type", "null"}};
  if (v.is_number_integer() || v.is_number_unsigned()) return {{"type", "integer"}};
  if (v.is_number()) return {{"type", "number"}};
  if (v.is_array()) return {{"type", "array"}};
  return {{"type", "object"}};
}

// Tools that fit the calls: each tool's properties are the keys its calls
// use, required = the keys every call uses.
std::vector<ToolSpec> tools_for(const std::string& text) {
  std::map<std::string, ojson> props;
  std::map<std::string, std::set<std::string>> required;
  std::map<std::string, int> count;
  std::vector<std::string> order;
  for (const auto& [name, params] : dsml_calls(text)) {
    if (!props.count(name)) {
      props[name] = ojson::object();
      order.push_back(name);
    }
    std::set<std::string> keys;
    for (const auto& p : params) {
      props[name][p.key] = schema_of(p);
      keys.insert(p.key);
    }
    if (count[name]++ == 0) {
      required[name] = keys;
    } else {
      std::set<std::string> both;
      for (const auto& k : keys)
        if (required[name].count(k)) both.insert(k);
      required[name] = both;
    }
  }
  std::vector<ToolSpec> tools;
  for (const auto& name : order) {
    ojson req = ojson::array();
    for (const auto& k : required[name]) req.push_back(k);
    tools.push_back({name,
                     {{"type", "object"},
                      {"properties", props[name]},
                      {"required", req},
                      {"additionalProperties", false}}});
  }
  return tools;
}

struct GoldenCase {
  std::string id, text;
  bool thinking;
  bool ok;
  ojson expected;
};
std::vector<GoldenCase> golden_tool_cases() {
  std::vector<GoldenCase> out;
  const auto dir = std::filesystem::path(DSV4_TEST_DATA) / "chat" / "cases";
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("parse_", 0) != 0) continue;
    std::ifstream in(e.path());
    const ojson c = ojson::parse(in);
    const std::string text = c["input"]["text"];
    if (text.find(kDsml + "tool_calls") == std::string::npos) continue;
    out.push_back({c["id"], text, c["input"]["thinking_mode"] == "thinking", c.contains("expected"),
                   c.value("expected", ojson())});
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.id < b.id; });
  return out;
}

// The answer the constraint sees: after </think> in thinking mode, without
// the end token.
std::string answer_of(const GoldenCase& c) {
  std::string t = c.text;
  if (c.thinking) {
    const size_t at = t.find("</think>");
    if (at == std::string::npos) return "";
    t = t.substr(at + 8);
  }
  const size_t eos = t.find(kEos);
  return eos == std::string::npos ? t : t.substr(0, eos);
}

TEST(ToolCallMachine, AcceptsEveryGoldenToolCall) {
  int checked = 0;
  for (const auto& c : golden_tool_cases()) {
    if (!c.ok || c.expected["tool_calls"].empty()) continue;
    // A value the parser passes through although it is not JSON: rejected
    // (below), since the constraint exists to make arguments parse.
    if (c.id == "parse_tool_invalid_json_passthrough") continue;
    const auto tools = tools_for(c.text);
    const std::string answer = answer_of(c);
    EXPECT_TRUE(accepts(tools, answer, false)) << c.id;
    if (c.expected["content"] == "") {
      EXPECT_TRUE(accepts(tools, answer, true)) << c.id << " (required)";
    } else {
      EXPECT_FALSE(accepts(tools, answer, true)) << c.id << ": required allows no content";
    }
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

TEST(ToolCallMachine, RejectsGoldenMalformedBlocks) {
  int checked = 0;
  for (const auto& c : golden_tool_cases()) {
    if (c.ok && c.id != "parse_tool_invalid_json_passthrough") continue;
    if (c.thinking && c.text.find("</think>") == std::string::npos) continue;  // never active
    auto calls = dsml_calls(c.text);
    // Tools that offer every name and key the text uses, strings as strings.
    std::vector<ToolSpec> tools;
    for (const auto& [name, params] : calls) {
      ojson props = ojson::object();
      for (const auto& p : params) props[p.key] = ojson{{"type", p.str ? "string" : "array"}};
      tools.push_back({name, {{"type", "object"}, {"properties", props}}});
    }
    if (tools.empty()) continue;
    EXPECT_FALSE(accepts(tools, answer_of(c), false)) << c.id;
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

// ----------------------------------------------------------- schema rules

const ojson kWeatherSchema = ojson::parse(R"({
  "type": "object",
  "properties": {
    "location": {"type": "string"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer"},
    "options": {"type": "object", "properties": {"hourly": {"type": "boolean"},
                 "fields": {"type": "array", "items": {"type": "string", "enum": ["t", "wind"]}}},
                "required": ["hourly", "fields"], "additionalProperties": false},
    "ratio": {"type": ["number", "null"]}
  },
  "required": ["location", "unit", "days", "options", "ratio"],
  "additionalProperties": false
})");

std::vector<ToolSpec> weather_tools() {
  return {{"get_weather", kWeatherSchema},
          {"get_time", ojson::parse(R"({"type":"object","properties":{},"required":[],
                                        "additionalProperties":false})")}};
}

std::string good_params() {
  return param("location", true, "Paris, \"FR\"\n<b>") + param("unit", true, "celsius") +
         param("days", false, "3") +
         param("options", false, R"({"hourly": true, "fields": ["wind", "t"]})") +
         param("ratio", false, "-0.5e2");
}

TEST(ToolCallMachine, StrictSchemaAccepts) {
  const auto tools = weather_tools();
  EXPECT_TRUE(accepts(tools, block(invoke("get_weather", good_params())), true));
  // Any order of parameters, json.dumps spacing (or none), two calls, null.
  const std::string reordered = param("ratio", false, "null") + param("days", false, "0") +
                                param("options", false, "{\"fields\": [], \"hourly\":false}") +
                                param("unit", true, "fahrenheit") + param("location", true, "");
  EXPECT_TRUE(
      accepts(tools, block(invoke("get_weather", reordered) + invoke("get_time", "")), true));
  // Content first when the call is not required; content alone.
  EXPECT_TRUE(accepts(tools, "Checking." + block(invoke("get_time", "")), false));
  EXPECT_TRUE(accepts(tools, "No tool needed.", false));
}

TEST(ToolCallMachine, StrictSchemaRejects) {
  const auto tools = weather_tools();
  auto call = [&](const std::string& params) { return block(invoke("get_weather", params)); };
  const std::string loc = param("location", true, "x");
  const std::string unit = param("unit", true, "celsius");
  const std::string days = param("days", false, "3");
  const std::string opts = param("options", false, R"({"hourly":true,"fields":[]})");
  const std::string ratio = param("ratio", false, "1");
  const std::map<std::string, std::string> bad = {
      {"unknown tool", block(invoke("get_wether", loc + unit + days + opts + ratio))},
      {"unknown parameter", call(loc + unit + days + opts + ratio + param("x", true, "1"))},
      {"duplicate parameter", call(loc + loc + unit + days + opts + ratio)},
      {"missing required", call(loc + unit + days + opts)},
      {"enum value", call(loc + param("unit", true, "kelvin") + days + opts + ratio)},
      {"integer with a fraction", call(loc + unit + param("days", false, "3.5") + opts + ratio)},
      {"integer as a raw string", call(loc + unit + param("days", true, "3") + opts + ratio)},
      {"string as JSON", call(param("location", false, "\"x\"") + unit + days + opts + ratio)},
      {"nested missing key",
       call(loc + unit + days + param("options", false, R"({"hourly":true})") + ratio)},
      {"nested extra key",
       call(loc + unit + days + param("options", false, R"({"hourly":true,"fields":[],"z":1})") +
            ratio)},
      {"nested enum",
       call(loc + unit + days + param("options", false, R"({"hourly":true,"fields":["rain"]})") +
            ratio)},
      {"number as string", call(loc + unit + days + opts + param("ratio", false, "\"1\""))},
      {"whitespace json.dumps does not write",
       call(loc + unit + days + param("options", false, R"({ "hourly": true, "fields": []})") +
            ratio)},
      {"two spaces", call(loc + unit + days +
                          param("options", false, R"({"hourly":  true, "fields": []})") + ratio)},
      {"leading zero", call(loc + unit + param("days", false, "03") + opts + ratio)},
      {"control bar in a value",
       call(param("location", true, "a" + kBar + "b") + unit + days + opts + ratio)},
      {"think tag in a value",
       call(param("location", true, "</think>") + unit + days + opts + ratio)},
      {"no blank line before the block",
       "x\n<" + kDsml + "tool_calls>\n" + invoke("get_time", "") + "</" + kDsml + "tool_calls>"},
      {"text after the block", block(invoke("get_time", "")) + "x"},
      {"empty block", block("")},
  };
  for (const auto& [why, text] : bad) EXPECT_FALSE(accepts(tools, text, false)) << why;
  // Truncated: every proper prefix of a good call is accepted but cannot end.
  const std::string good = block(invoke("get_weather", good_params()));
  ToolCallMachine m(ToolCallMachine::compile(tools, {}), true);
  for (size_t i = 0; i < good.size(); ++i) {
    EXPECT_FALSE(m.can_end()) << "after " << i << " bytes";
    ASSERT_TRUE(m.feed(static_cast<uint8_t>(good[i]))) << "byte " << i;
  }
  EXPECT_TRUE(m.can_end());
}

TEST(ToolCallMachine, RequiredAndNamedChoice) {
  const auto tools = weather_tools();
  const std::string time_call = block(invoke("get_time", ""));
  EXPECT_TRUE(accepts(tools, time_call, true));
  EXPECT_FALSE(accepts(tools, "", true));  // no call
  EXPECT_FALSE(accepts(tools, "Sure." + time_call, true));
  EXPECT_TRUE(accepts(tools, time_call, true, {"get_time"}));
  EXPECT_FALSE(accepts(tools, block(invoke("get_weather", good_params())), true, {"get_time"}));
  EXPECT_THROW(ToolCallMachine::compile(tools, {"nope"}), Error);
}

TEST(ToolCallConstraint, ActiveOnlyAfterTheStartToken) {
  // Thinking mode: nothing is masked before </think> (id 1 here); then the
  // block must begin, and the end token (id 0) waits for its end.
  const std::vector<std::string> vocab = {kEos, "</think>", "\n", "\n\n<", "Hi", kBar};
  ToolCallConstraint con(std::make_shared<const std::vector<std::string>>(vocab), {0}, 1,
                         ToolCallMachine::compile(weather_tools(), {}), true);
  std::vector<float> logits(vocab.size(), 0.0f);
  con.mask(logits);
  for (float x : logits) EXPECT_EQ(x, 0.0f);
  con.accept(4);  // reasoning text
  con.accept(1);  // </think>
  con.mask(logits);
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(logits[0], ninf);  // no end before a call
  EXPECT_EQ(logits[1], ninf);
  EXPECT_EQ(logits[2], 0.0f);  // "\n" starts the block
  EXPECT_EQ(logits[3], 0.0f);  // so does "\n\n<"
  EXPECT_EQ(logits[4], ninf);  // no content before the call
  EXPECT_EQ(logits[5], ninf);
}

// ----------------------------------------------- sampling under the mask

// An independent check of arguments against the weather schema.
bool valid_weather(const ojson& a, std::string* why) {
  auto bad = [&](const std::string& w) {
    *why = w;
    return false;
  };
  if (!a.is_object() || a.size() != 5) return bad("not an object with 5 keys");
  if (!a["location"].is_string()) return bad("location");
  if (a["unit"] != "celsius" && a["unit"] != "fahrenheit") return bad("unit");
  if (!a["days"].is_number_integer()) return bad("days");
  const ojson& o = a["options"];
  if (!o.is_object() || o.size() != 2 || !o["hourly"].is_boolean() || !o["fields"].is_array())
    return bad("options");
  for (const auto& f : o["fields"])
    if (f != "t" && f != "wind") return bad("options.fields");
  if (!a["ratio"].is_number() && !a["ratio"].is_null()) return bad("ratio");
  return true;
}

TEST(ToolCallConstraint, RandomSamplingAlwaysYieldsValidCalls) {
  // A toy vocabulary: printable ASCII, newline, pieces of the DSML markup and
  // of the values, and the end token (id 0).
  std::vector<std::string> vocab = {kEos,
                                    "\n",
                                    "\n\n",
                                    "<" + kDsml,
                                    "</" + kDsml,
                                    kDsml,
                                    kBar,
                                    "tool_calls>",
                                    "invoke name=\"",
                                    "parameter name=\"",
                                    "\" string=\"true\">",
                                    "\" string=\"false\">",
                                    "parameter>",
                                    "invoke>",
                                    "\">",
                                    "true",
                                    "false",
                                    "null",
                                    "celsius",
                                    "fahrenheit",
                                    "get_weather",
                                    "get_time",
                                    "location",
                                    "unit",
                                    "days",
                                    "options",
                                    "ratio",
                                    "hourly",
                                    "fields",
                                    "wind",
                                    "think>",
                                    "12",
                                    "\"t\"",
                                    "{\"",
                                    "\":",
                                    "],"};
  for (int c = 32; c < 127; ++c) vocab.push_back(std::string(1, char(c)));
  auto table = std::make_shared<const std::vector<std::string>>(vocab);
  const auto tools = weather_tools();
  std::mt19937 rng(42);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  int finished = 0;
  for (int run = 0; run < 60; ++run) {
    const bool named = run % 2 == 1;
    ToolCallConstraint con(
        table, {0}, -1,
        ToolCallMachine::compile(
            tools, named ? std::vector<std::string>{"get_weather"} : std::vector<std::string>{}),
        true);
    SamplingParams sp;
    sp.seed = run;
    Sampler sampler(sp);
    std::string text;
    bool ended = false;
    for (int step = 0; step < 3000 && !ended; ++step) {
      std::vector<float> logits(vocab.size());
      for (size_t i = 0; i < logits.size(); ++i)
        logits[i] = noise(rng) + (vocab[i].size() > 1 ? 2.0f : 0.0f);
      con.mask(logits);
      const int32_t tok = sampler.sample(logits).token;
      con.accept(tok);
      if (tok == 0)
        ended = true;
      else
        text += vocab[tok];
    }
    if (!ended) continue;  // a long raw string; the prefix property is checked by the machine
    ++finished;
    chat::OutputParser parser(false);
    parser.feed(text + kEos);
    parser.finish();
    ASSERT_FALSE(parser.failed()) << parser.error_message() << "\n" << text;
    const auto& calls = parser.result().tool_calls;
    ASSERT_FALSE(calls.empty()) << text;
    EXPECT_EQ(parser.result().content, "") << text;
    for (const auto& call : calls) {
      if (named) {
        EXPECT_EQ(call.name, "get_weather");
      }
      const ojson args = ojson::parse(call.arguments);
      if (call.name == "get_time") {
        EXPECT_EQ(args, ojson::object()) << text;
      } else {
        std::string why;
        EXPECT_TRUE(valid_weather(args, &why)) << why << "\n" << call.arguments << "\n" << text;
      }
    }
  }
  EXPECT_GE(finished, 30);
}

}  // namespace
}  // namespace dsv4::engine
