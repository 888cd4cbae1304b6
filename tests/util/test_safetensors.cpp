// safetensors writer → reader round trip, and header validation.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "util/error.h"
#include "util/safetensors.h"

namespace dsv4 {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("dsv4_st_" + name)).string();
}

void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out << std::string(data_bytes, '\0');
}

std::string error_of(const std::string& path) {
  try {
    SafetensorsFile f(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTrip) {
  const std::string path = temp_path("rt.safetensors");
  SafetensorsWriter w;
  float a[6] = {1, 2, 3, 4, 5, -6.5f};
  int32_t b[3] = {7, -8, 9};
  w.add_f32("a", {2, 3}, a);
  w.add_i32("b", {3}, b);
  w.set_metadata("format", "pt");
  w.write(path);
  SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorView& ta = f.get("a");
  EXPECT_EQ(ta.dtype, DType::F32);
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(ta.data, a, sizeof a), 0);
  EXPECT_EQ(f.get("b").as<int32_t>()[1], -8);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  std::remove(path.c_str());
}

TEST(Safetensors, RejectsCorruptHeaders) {
  const std::string p = temp_path("bad.safetensors");
  write_raw(p, R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8);
  EXPECT_NE(error_of(p).find("beyond"), std::string::npos) << error_of(p);
  write_raw(p, R"({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", 16);
  EXPECT_NE(error_of(p).find("needs 12 bytes"), std::string::npos) << error_of(p);
  write_raw(p, R"({"x": {"dtype": "F7", "shape": [4], "data_offsets": [0, 16]}})", 16);
  EXPECT_NE(error_of(p).find("unknown dtype"), std::string::npos) << error_of(p);
  write_raw(p, R"({"x": )", 16);
  EXPECT_NE(error_of(p).find("malformed"), std::string::npos) << error_of(p);
  write_raw(p,
            R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
            R"( "y": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
            24);
  EXPECT_NE(error_of(p).find("tensors x and y have overlapping"), std::string::npos) << error_of(p);
  {
    std::ofstream out(p, std::ios::binary);
    uint64_t n = 1000;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  EXPECT_NE(error_of(p).find("exceeds the file size"), std::string::npos) << error_of(p);
  EXPECT_NE(error_of(temp_path("does-not-exist")).find("cannot open"), std::string::npos);
  std::remove(p.c_str());
}

}  // namespace
}  // namespace dsv4
