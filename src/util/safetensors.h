// safetensors files: read by mmap (never copied), and written for traces,
// logits dumps and synthetic checkpoints.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "...", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data region; offsets are relative to the data region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4 {

enum class DType : uint8_t { F8_E4M3, F8_E8M0, I8, U8, BF16, F16, F32, F64, I16, I32, I64, BOOL };

std::string_view dtype_name(DType t);
size_t dtype_size(DType t);
// Parses a safetensors dtype string; returns false when unknown.
bool parse_dtype(std::string_view s, DType* out);

// How the kernel should page a range of a mapping in (madvise advice).
enum class MapAdvice : uint8_t {
  Normal,      // default read-around on a fault
  Random,      // no read-ahead: fault in only the pages touched
  Sequential,  // aggressive read-ahead, pages dropped soon after use
  WillNeed,    // start reading the range into the page cache now (asynchronous)
};

// A read-only memory map of a whole file. Live maps are registered so that a
// resident-memory budget (set_max_resident_bytes) can drop their pages.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Advice for the bytes [offset, offset + len), widened to whole pages.
  // Advice is a hint: failures are ignored (the mapping works without it).
  void advise(size_t offset, size_t len, MapAdvice advice) const;
  // Drops this process's page-table entries of the whole map
  // (madvise MADV_DONTNEED). Safe on a read-only file mapping: a later read
  // faults the page back in from the page cache or the file.
  void drop_resident() const;

 private:
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// Resident memory of weight mappings. With a budget set, a background thread
// checks the process's file-backed resident set (/proc/self/statm: resident
// − anonymous ≈ RssFile + RssShmem) every millisecond and, when it exceeds the
// budget, drops the pages of every live MappedFile (drop_resident). This keeps
// the weights' share of RSS near the budget for a model larger than RAM; the
// page cache itself is the kernel's to reclaim. The budget is also read from
// the environment variable DSV4_MAX_RESIDENT_BYTES (bytes, or with a K/M/G
// suffix) when the first file is mapped, so every command honours it.
void set_max_resident_bytes(uint64_t bytes);  // 0 = no budget (stops the thread)
struct ResidencyStats {
  uint64_t budget = 0;        // 0 = none
  uint64_t trims = 0;         // times the mappings were dropped
  uint64_t max_file_rss = 0;  // largest file-backed RSS the watcher saw (sampled)
  uint64_t mapped_bytes = 0;  // bytes of all live MappedFiles
};
ResidencyStats residency_stats();
// Parses "123", "64K", "512M", "2G" (powers of 1024); throws Error naming `what`.
uint64_t parse_byte_size(const std::string& text, const std::string& what);

// A view of one tensor inside a mapped file.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // for messages

  bool valid() const { return !name.empty(); }
  int64_t numel() const;
  int64_t dim(size_t i) const { return shape.at(i); }
  // A typed pointer to the data. Official files do not align tensors to their
  // element size, so read elements of 2 bytes or more through at() or copy().
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data);
  }
  // Element i, read without assuming alignment.
  template <typename T>
  T at(int64_t i) const {
    T v;
    std::memcpy(&v, data + static_cast<size_t>(i) * sizeof(T), sizeof(T));
    return v;
  }
  // Elements [begin, begin + n) into out, without assuming alignment.
  template <typename T>
  void copy(int64_t begin, int64_t n, T* out) const {
    std::memcpy(out, data + static_cast<size_t>(begin) * sizeof(T),
                static_cast<size_t>(n) * sizeof(T));
  }
  std::string shape_str() const;
};

std::string shape_to_string(const std::vector<int64_t>& shape);

// One safetensors file, validated at open: header JSON well-formed, every
// dtype known, every shape consistent with its byte range, ranges inside the
// file and not overlapping.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return map_->path(); }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const MappedFile& map() const { return *map_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws Error naming the file when absent.
  const TensorView& get(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> map_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Accumulates tensors and writes a safetensors file (atomically: temp file + rename).
class SafetensorsWriter {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
           size_t nbytes);
  void add_f32(const std::string& name, std::vector<int64_t> shape, const float* data);
  void add_i32(const std::string& name, std::vector<int64_t> shape, const int32_t* data);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  size_t data_bytes() const { return data_bytes_; }
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  size_t data_bytes_ = 0;
};

}  // namespace dsv4
