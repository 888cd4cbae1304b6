// Python's json.loads/json.dumps(ensure_ascii=False) and repr(), checked against
// values Python 3.11 printed for these inputs.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "chat/json_py.h"

using dsv4::chat::py_json_dumps;
using dsv4::chat::py_json_loads;
using dsv4::chat::PyJson;
using dsv4::chat::PyJsonError;

TEST(JsonPy, LoadsDumpsLikePython) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"1E5", "100000.0"},
      {"0.10", "0.1"},
      {"1e20", "1e+20"},
      {"1e16", "1e+16"},
      {"1e15", "1000000000000000.0"},
      {"1e-5", "1e-05"},
      {"0.0001", "0.0001"},
      {"-0.0", "-0.0"},
      {"-0", "0"},
      {"12345678901234567890123", "12345678901234567890123"},
      {"1e400", "Infinity"},
      {"-1e400", "-Infinity"},
      {"NaN", "NaN"},
      {"-Infinity", "-Infinity"},
      {"5e-324", "5e-324"},
      {"1.7976931348623157e308", "1.7976931348623157e+308"},
      {"0.30000000000000004", "0.30000000000000004"},
      {"123456789012345.6", "123456789012345.6"},
      {"1234567890123456.7", "1234567890123456.8"},
      {"2.5e-300", "2.5e-300"},
      {"1.5E+3", "1500.0"},
      {"{\"b\": 1, \"a\": 2, \"b\": 3}", "{\"b\": 3, \"a\": 2}"},
      {"[1, 2.0, \"x\", null, true, false, {}, []]", "[1, 2.0, \"x\", null, true, false, {}, []]"},
      {"\"\\u00e9\\ud83d\\ude00 \\u001f\\t\\/\\\"\\\\ \\b\\f\"",
       "\"é😀 \\u001f\\t/\\\"\\\\ \\b\\f\""},
      {" {\"k\" :\n [ 1 , 2 ] } ", "{\"k\": [1, 2]}"},
      {"\"中文 <｜User｜> \177\"", "\"中文 <｜User｜> \177\""},
  };
  for (const auto& [text, dumped] : cases)
    EXPECT_EQ(py_json_dumps(py_json_loads(text)), dumped) << text;
}

TEST(JsonPy, RejectsWhatPythonRejects) {
  const std::vector<std::string> bad = {
      "01",       "1.", ".5",  "[1,]", "{\"a\":1,}", "nan", "\"\t\"", "\"\\x\"",
      "{'a': 1}", "",   "1 2", "﻿1", "[",          "tru", "\"abc",
  };
  for (const auto& text : bad) EXPECT_THROW(py_json_loads(text), PyJsonError) << text;
  // Python 3.11 refuses to convert integers of more than 4300 digits.
  EXPECT_THROW(py_json_loads(std::string(4301, '1')), PyJsonError);
  EXPECT_EQ(py_json_dumps(py_json_loads(std::string(4300, '1'))), std::string(4300, '1'));
}

TEST(JsonPy, ReprLikePython) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"null", "None"},
      {"true", "True"},
      {"1.0", "1.0"},
      {"1e-05", "1e-05"},
      {"[1, \"a'b\", \"say \\\"hi\\\"\", \"it's \\\"x\\\"\"]",
       "[1, \"a'b\", 'say \"hi\"', 'it\\'s \"x\"']"},
      {"{\"k\": \"v\\n\\t\\u0001é\\u200b\"}", "{'k': 'v\\n\\t\\x01é\\u200b'}"},
      {"\"plain\"", "'plain'"},
  };
  for (const auto& [text, repr] : cases)
    EXPECT_EQ(dsv4::chat::py_repr(py_json_loads(text)), repr) << text;
  EXPECT_EQ(dsv4::chat::py_str(py_json_loads("\"plain\"")), "plain");
}

TEST(JsonPy, DictAndTruthSemantics) {
  PyJson obj = py_json_loads(R"({"b": 1, "a": 2, "b": 3})");
  ASSERT_EQ(obj.members().size(), 2u);
  EXPECT_EQ(obj.members()[0].first, "b");  // first position, last value
  EXPECT_EQ(obj.members()[0].second.int_digits(), "3");
  EXPECT_TRUE(py_json_loads("1") == py_json_loads("1.0"));
  EXPECT_TRUE(py_json_loads("true") == py_json_loads("1"));
  EXPECT_FALSE(py_json_loads("\"1\"") == py_json_loads("1"));
  for (const char* falsy : {"null", "false", "0", "0.0", "-0.0", "\"\"", "[]", "{}"})
    EXPECT_FALSE(py_json_loads(falsy).truthy()) << falsy;
  for (const char* truthy : {"true", "1", "0.5", "NaN", "\" \"", "[0]", "{\"a\": null}"})
    EXPECT_TRUE(py_json_loads(truthy).truthy()) << truthy;
}

TEST(JsonPy, NlohmannRoundTrip) {
  auto j = nlohmann::ordered_json::parse(R"({"z": [1, 2.5, "s", null, true], "a": {"n": -3}})");
  PyJson v = dsv4::chat::from_nlohmann(j);
  EXPECT_EQ(py_json_dumps(v), R"({"z": [1, 2.5, "s", null, true], "a": {"n": -3}})");
  EXPECT_EQ(dsv4::chat::to_nlohmann(v), j);
}
