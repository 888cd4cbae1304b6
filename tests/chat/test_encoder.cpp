// Every golden encode case (computed by the official encoding_dsv4.py) must
// render byte for byte, and every rejected input must be rejected.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "chat/encoder.h"

namespace fs = std::filesystem;
using dsv4::chat::EncodeError;
using dsv4::chat::PyJson;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> cases_with_prefix(const std::string& prefix) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(fs::path(DSV4_TEST_DATA) / "chat" / "cases"))
    if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Encoder, GoldenCases) {
  auto files = cases_with_prefix("enc_");
  ASSERT_GE(files.size(), 40u);
  int rendered = 0, rejected = 0;
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    PyJson c = dsv4::chat::py_json_loads(read_file(path));
    ASSERT_TRUE(c.is_object());
    const PyJson& input = *c.find("input");
    if (const PyJson* expected = c.find("expected_prompt")) {
      std::string got;
      try {
        got = dsv4::chat::render(input);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rejected: " << e.what();
        continue;
      }
      EXPECT_EQ(got, expected->as_string());
      ++rendered;
    } else {
      const PyJson* err = c.find("expected_error");
      ASSERT_NE(err, nullptr);
      try {
        std::string got = dsv4::chat::render(input);
        ADD_FAILURE() << "accepted an input the official encoder rejects: " << got;
      } catch (const EncodeError& e) {
        EXPECT_EQ(e.python_type(), err->find("type")->as_string()) << e.what();
        const PyJson* msg = err->find("message");
        if (msg && msg->is_string()) {
          EXPECT_EQ(std::string(e.what()), msg->as_string());
        } else {
          std::string prefix = err->find("message_prefix")->as_string();
          EXPECT_EQ(std::string(e.what()).substr(0, prefix.size()), prefix);
        }
      }
      ++rejected;
    }
  }
  EXPECT_GT(rendered, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
