#include "util/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "util/error.h"

namespace dsv4 {

namespace {
struct DTypeInfo {
  DType type;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E8M0, "F8_E8M0", 1}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},           {DType::BF16, "BF16", 2},       {DType::F16, "F16", 2},
    {DType::F32, "F32", 4},         {DType::F64, "F64", 8},         {DType::I16, "I16", 2},
    {DType::I32, "I32", 4},         {DType::I64, "I64", 8},         {DType::BOOL, "BOOL", 1},
};
}  // namespace

std::string_view dtype_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  return "?";
}

size_t dtype_size(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.size;
  return 0;
}

bool parse_dtype(std::string_view s, DType* out) {
  for (const auto& d : kDTypes) {
    if (s == d.name) {
      *out = d.type;
      return true;
    }
  }
  return false;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_str() const {
  return shape_to_string(shape);
}

namespace {

// The live maps and the budget watcher. One function-local static, so the
// watcher thread is stopped and joined before the registry goes away at exit.
class Residency {
 public:
  static Residency& get() {
    static Residency r;
    return r;
  }
  ~Residency() { set_budget(0); }

  // Reads DSV4_MAX_RESIDENT_BYTES once (before the first map, so that a bad
  // value fails before anything is mapped).
  void init_from_env() {
    std::call_once(env_once_, [this] {
      if (const char* env = std::getenv("DSV4_MAX_RESIDENT_BYTES"); env && *env)
        set_budget(parse_byte_size(env, "DSV4_MAX_RESIDENT_BYTES"));
    });
  }
  void add(const MappedFile* m) {
    std::lock_guard<std::mutex> lock(maps_mu_);
    maps_.insert(m);
  }
  void remove(const MappedFile* m) {
    std::lock_guard<std::mutex> lock(maps_mu_);
    maps_.erase(m);
  }

  void set_budget(uint64_t bytes) {
    std::unique_lock<std::mutex> lock(thread_mu_);
    budget_ = bytes;
    if (bytes == 0 && watcher_.joinable()) {
      stop_ = true;
      cv_.notify_all();
      lock.unlock();
      watcher_.join();
      lock.lock();
      stop_ = false;
    } else if (bytes != 0 && !watcher_.joinable()) {
      watcher_ = std::thread([this] { watch(); });
    }
  }

  ResidencyStats stats() {
    ResidencyStats s;
    {
      std::lock_guard<std::mutex> lock(thread_mu_);
      s.budget = budget_;
    }
    s.trims = trims_.load();
    s.max_file_rss = max_file_rss_.load();
    std::lock_guard<std::mutex> lock(maps_mu_);
    for (const MappedFile* m : maps_) s.mapped_bytes += m->size();
    return s;
  }

 private:
  // File-backed resident bytes: statm's "shared" field counts resident file
  // and shmem pages (RssFile + RssShmem); reading it is O(1) in the kernel.
  static uint64_t file_rss() {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long long size = 0, resident = 0, shared = 0;
    const int got = std::fscanf(f, "%llu %llu %llu", &size, &resident, &shared);
    std::fclose(f);
    return got == 3 ? shared * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
  }

  void watch() {
    std::unique_lock<std::mutex> lock(thread_mu_);
    while (!stop_) {
      const uint64_t budget = budget_;
      lock.unlock();
      const uint64_t rss = file_rss();
      uint64_t seen = max_file_rss_.load();
      while (rss > seen && !max_file_rss_.compare_exchange_weak(seen, rss)) {
      }
      if (rss > budget) {
        std::lock_guard<std::mutex> maps_lock(maps_mu_);  // no munmap while we drop
        for (const MappedFile* m : maps_) m->drop_resident();
        trims_.fetch_add(1);
      }
      lock.lock();
      // 1 ms: a forward pass faults pages in at well under 10 GB/s on a CPU,
      // so the overshoot between checks stays within a few megabytes.
      cv_.wait_for(lock, std::chrono::milliseconds(1), [this] { return stop_; });
    }
  }

  std::once_flag env_once_;
  std::mutex maps_mu_;
  std::set<const MappedFile*> maps_;
  std::mutex thread_mu_;
  std::condition_variable cv_;
  std::thread watcher_;
  uint64_t budget_ = 0;
  bool stop_ = false;
  std::atomic<uint64_t> trims_{0}, max_file_rss_{0};
};

}  // namespace

void set_max_resident_bytes(uint64_t bytes) {
  Residency::get().set_budget(bytes);
}

ResidencyStats residency_stats() {
  return Residency::get().stats();
}

uint64_t parse_byte_size(const std::string& text, const std::string& what) {
  size_t end = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &end);
  } catch (const std::exception&) {
    fail(what, ": expected a byte count like 512M, got \"", text, "\"");
  }
  uint64_t mult = 1;
  if (end + 1 == text.size()) {
    switch (text[end]) {
      case 'K':
      case 'k':
        mult = 1ull << 10;
        break;
      case 'M':
      case 'm':
        mult = 1ull << 20;
        break;
      case 'G':
      case 'g':
        mult = 1ull << 30;
        break;
      default:
        fail(what, ": unknown size suffix in \"", text, "\" (use K, M or G)");
    }
  } else if (end != text.size() || text[0] == '-') {
    fail(what, ": expected a byte count like 512M, got \"", text, "\"");
  }
  return static_cast<uint64_t>(v) * mult;
}

void MappedFile::advise(size_t offset, size_t len, MapAdvice advice) const {
  if (!data_ || len == 0 || offset >= size_) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;
  const size_t end = std::min(size_, offset + len);
  int a = MADV_NORMAL;
  switch (advice) {
    case MapAdvice::Normal:
      a = MADV_NORMAL;
      break;
    case MapAdvice::Random:
      a = MADV_RANDOM;
      break;
    case MapAdvice::Sequential:
      a = MADV_SEQUENTIAL;
      break;
    case MapAdvice::WillNeed:
      a = MADV_WILLNEED;
      break;
  }
  ::madvise(const_cast<std::byte*>(data_) + begin, end - begin, a);
}

void MappedFile::drop_resident() const {
  if (data_) ::madvise(const_cast<std::byte*>(data_), size_, MADV_DONTNEED);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  Residency::get().init_from_env();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(e));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail(path, ": cannot mmap ", size_, " bytes: ", std::strerror(e));
    }
    data_ = static_cast<const std::byte*>(p);
    // Transparent huge pages for the weights where the kernel and file system allow them (a
    // hint; "madvise" mode needs it): page faults then read 2 MiB folios and map them with one
    // TLB entry each, and a decode step streams through ~1 GB of weights.
    ::madvise(p, size_, MADV_HUGEPAGE);
  }
  ::close(fd);
  Residency::get().add(this);
}

MappedFile::~MappedFile() {
  Residency::get().remove(this);
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : map_(std::make_shared<MappedFile>(path)) {
  const size_t size = map_->size();
  if (size < 8) fail(path, ": truncated safetensors file (", size, " bytes, no header length)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, map_->data(), 8);  // little-endian on every supported host
  if (header_len > size - 8)
    fail(path, ": header length ", header_len, " exceeds the file size ", size,
         " (truncated or not a safetensors file)");
  const char* hbegin = reinterpret_cast<const char*>(map_->data() + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hbegin, hbegin + header_len);
  } catch (const std::exception& e) {
    fail(path, ": malformed safetensors header JSON: ", e.what());
  }
  if (!header.is_object()) fail(path, ": safetensors header is not a JSON object");
  const std::byte* data_begin = map_->data() + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  struct Range {
    uint64_t begin, end;
    std::string name;
    bool operator<(const Range& o) const {
      return begin < o.begin || (begin == o.begin && end < o.end);
    }
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) fail(path, ": __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    const auto& v = it.value();
    const std::string& name = it.key();
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      fail(path, ": tensor ", name, ": header entry needs dtype, shape and data_offsets");
    TensorView t;
    t.name = name;
    t.file = path;
    if (!v["dtype"].is_string() || !parse_dtype(v["dtype"].get<std::string>(), &t.dtype))
      fail(path, ": tensor ", name, ": unknown dtype ", v["dtype"].dump());
    if (!v["shape"].is_array()) fail(path, ": tensor ", name, ": shape is not an array");
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) fail(path, ": tensor ", name, ": bad shape ", v["shape"].dump());
      t.shape.push_back(d.get<int64_t>());
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail(path, ": tensor ", name, ": bad data_offsets ", off.dump());
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (e < b) fail(path, ": tensor ", name, ": data_offsets end < begin");
    if (e > data_size)
      fail(path, ": tensor ", name, ": data range [", b, ", ", e, ") lies beyond the ", data_size,
           " data bytes of the file (truncated shard?)");
    // Overflow-safe: every dim fits the file, so the product is bounded by checking stepwise.
    uint64_t expect = dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d != 0 && expect > (uint64_t(1) << 62) / static_cast<uint64_t>(d))
        fail(path, ": tensor ", name, ": shape ", t.shape_str(), " is too large");
      expect *= static_cast<uint64_t>(d);
    }
    if (expect != e - b)
      fail(path, ": tensor ", name, ": ", dtype_name(t.dtype), " ", t.shape_str(), " needs ",
           expect, " bytes but data_offsets give ", e - b);
    t.data = data_begin + b;
    t.nbytes = e - b;
    ranges.push_back({b, e, name});
    tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end && ranges[i].begin != ranges[i].end)
      fail(path, ": tensors ", ranges[i - 1].name, " and ", ranges[i].name,
           " have overlapping data ranges (corrupt header)");
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(path(), ": no tensor named ", name);
  return it->second;
}

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            const void* data, size_t nbytes) {
  uint64_t expect = dtype_size(dtype);
  for (int64_t d : shape) expect *= static_cast<uint64_t>(d);
  if (expect != nbytes)
    fail("safetensors writer: tensor ", name, " ", shape_to_string(shape), " needs ", expect,
         " bytes, got ", nbytes);
  Entry e{name, dtype, std::move(shape), {}};
  e.bytes.resize(nbytes);
  if (nbytes) std::memcpy(e.bytes.data(), data, nbytes);
  data_bytes_ += nbytes;
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::add_f32(const std::string& name, std::vector<int64_t> shape,
                                const float* data) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  add(name, DType::F32, std::move(shape), data, n * 4);
}

void SafetensorsWriter::add_i32(const std::string& name, std::vector<int64_t> shape,
                                const int32_t* data) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  add(name, DType::I32, std::move(shape), data, n * 4);
}

void SafetensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    auto& m = header["__metadata__"];
    for (const auto& [k, v] : metadata_) m[k] = v;
  }
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8) h.push_back(' ');  // align the data region to 8 bytes
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(tmp, ": cannot open for writing");
    uint64_t n = h.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& e : entries_)
      out.write(reinterpret_cast<const char*>(e.bytes.data()),
                static_cast<std::streamsize>(e.bytes.size()));
    out.flush();
    if (!out) fail(tmp, ": write failed (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    fail(path, ": cannot rename ", tmp, ": ", std::strerror(errno));
}

}  // namespace dsv4
