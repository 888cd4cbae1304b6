#include "cli/roofline.h"

#include <immintrin.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <vector>

#include "model/inspect.h"
#include "util/error.h"
#include "util/threadpool.h"

namespace dsv4::cli {

namespace fs = std::filesystem;

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

// Chains kept in registers: enough independent FMAs in flight to cover the
// FMA latency (4 cycles) times the FMA ports (2) with room to spare. The
// chains converge to a / (1 − m) = 1 and never reach denormals or overflow.
constexpr float kMul = 0.999999f, kAdd = 1e-6f;
constexpr int kChains512 = 16, kChains256 = 12;

__attribute__((target("avx512f"))) float fma_chains_avx512(int64_t iters) {
  __m512 acc[kChains512];
  for (int k = 0; k < kChains512; ++k)
    acc[k] = _mm512_set1_ps(0.5f + 0.01f * static_cast<float>(k));
  const __m512 m = _mm512_set1_ps(kMul), a = _mm512_set1_ps(kAdd);
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < kChains512; ++k) acc[k] = _mm512_fmadd_ps(acc[k], m, a);
  __m512 s = acc[0];
  for (int k = 1; k < kChains512; ++k) s = _mm512_add_ps(s, acc[k]);
  // (Stored and summed by hand: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized.)
  alignas(64) float v[16];
  _mm512_store_ps(v, s);
  float total = 0;
  for (float x : v) total += x;
  return total;
}

__attribute__((target("avx2,fma"))) float fma_chains_avx2(int64_t iters) {
  __m256 acc[kChains256];
  for (int k = 0; k < kChains256; ++k)
    acc[k] = _mm256_set1_ps(0.5f + 0.01f * static_cast<float>(k));
  const __m256 m = _mm256_set1_ps(kMul), a = _mm256_set1_ps(kAdd);
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < kChains256; ++k) acc[k] = _mm256_fmadd_ps(acc[k], m, a);
  __m256 s = acc[0];
  for (int k = 1; k < kChains256; ++k) s = _mm256_add_ps(s, acc[k]);
  alignas(32) float v[8];
  _mm256_store_ps(v, s);
  return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}

struct AlignedFree {
  void operator()(double* p) const { std::free(p); }
};

}  // namespace

uint64_t parse_cache_size(const std::string& text) {
  if (text.empty()) return 0;
  size_t end = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &end);
  } catch (const std::exception&) {
    return 0;
  }
  std::string suffix = text.substr(end);
  while (!suffix.empty() && std::isspace(static_cast<unsigned char>(suffix.back())))
    suffix.pop_back();
  if (suffix.empty()) return v;
  if (suffix == "K") return v << 10;
  if (suffix == "M") return v << 20;
  if (suffix == "G") return v << 30;
  return 0;
}

uint64_t last_level_cache_bytes() {
  uint64_t best = 0;
  int best_level = -1;
  const fs::path root("/sys/devices/system/cpu/cpu0/cache");
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("index", 0) != 0) continue;
    const std::string type = read_small_file((entry.path() / "type").string());
    if (type == "Instruction") continue;
    const int level = std::atoi(read_small_file((entry.path() / "level").string()).c_str());
    const uint64_t size = parse_cache_size(read_small_file((entry.path() / "size").string()));
    if (level > best_level || (level == best_level && size > best)) best = size, best_level = level;
  }
  return best;
}

TriadResult measure_triad(uint64_t total_bytes, int runs) {
  if (runs < 1) fail("the triad needs at least one run");
  TriadResult r;
  r.runs = runs;
  const int64_t grain = 1 << 14;  // 128 KiB of each array per chunk
  r.elements = std::max<uint64_t>(total_bytes / 24 / grain, 1) * grain;
  const size_t bytes = r.elements * sizeof(double);
  // 2 MiB pages where the kernel gives them (transparent huge pages in "madvise" mode need the
  // advice): the weights stream from 2 MiB page-cache folios after a fresh read, and 4 KiB
  // pages would cost the triad TLB misses the decode does not pay (measured: 1 thread
  // 39.7-40.4 GB/s on 4 KiB pages, 41.2-42.2 on 2 MiB).
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t alloc_bytes = (bytes + kHuge - 1) / kHuge * kHuge;
  auto alloc = [&] {
    void* p = std::aligned_alloc(kHuge, alloc_bytes);
    if (p != nullptr) ::madvise(p, alloc_bytes, MADV_HUGEPAGE);
    return static_cast<double*>(p);
  };
  std::unique_ptr<double, AlignedFree> a(alloc()), b(alloc()), c(alloc());
  if (!a || !b || !c) fail("cannot allocate ", 3 * alloc_bytes, " bytes for the bandwidth triad");
  double *pa = a.get(), *pb = b.get(), *pc = c.get();
  const int64_t n = static_cast<int64_t>(r.elements);
  // First touch on the pool, so that every page is faulted in before timing.
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) pa[i] = 0, pb[i] = 1.0, pc[i] = 2.0;
      },
      grain);
  const double s = 3.0;
  r.best_seconds = 1e300;
  for (int run = 0; run < runs; ++run) {
    const double t0 = now_seconds();
    parallel_for(
        n,
        [&](int64_t i0, int64_t i1, int) {
          for (int64_t i = i0; i < i1; ++i) pa[i] = pb[i] + s * pc[i];
        },
        grain);
    r.best_seconds = std::min(r.best_seconds, now_seconds() - t0);
  }
  r.bytes_per_run = 24 * r.elements;
  r.bytes_per_second = static_cast<double>(r.bytes_per_run) / r.best_seconds;
  // 1 + 3·2 = 7 in every element; summed in chunks so the order is fixed.
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += pa[i];
  r.check = sum;
  return r;
}

FmaPeakResult measure_fma_peak(double min_seconds) {
  FmaPeakResult r;
  const bool avx512 = __builtin_cpu_supports("avx512f");
  r.isa = avx512 ? "avx512f" : "avx2";
  r.threads = ThreadPool::global().num_threads();
  const int lanes = avx512 ? 16 : 8, chains = avx512 ? kChains512 : kChains256;
  auto kernel = avx512 ? fma_chains_avx512 : fma_chains_avx2;
  // Many equal units, handed out dynamically, keep every thread busy to the end.
  const int64_t units = static_cast<int64_t>(r.threads) * 16;
  std::atomic<uint32_t> sink{0};
  int64_t iters = 1 << 14;
  for (;;) {
    const double t0 = now_seconds();
    parallel_for(units, [&](int64_t u0, int64_t u1, int) {
      float acc = 0;
      for (int64_t u = u0; u < u1; ++u) acc += kernel(iters);
      sink.fetch_add(acc > 0 ? 1 : 0, std::memory_order_relaxed);
    });
    const double dt = now_seconds() - t0;
    if (dt >= min_seconds || iters > (int64_t(1) << 40)) {
      r.seconds = dt;
      r.flops = 2.0 * lanes * chains * static_cast<double>(iters) * static_cast<double>(units);
      break;
    }
    iters *= dt > 0 ? std::clamp(static_cast<int64_t>(min_seconds / dt * 1.2) + 1, int64_t(2),
                                 int64_t(64))
                    : 64;
  }
  if (sink.load() == 0) fail("FMA peak: the accumulators did not converge (internal error)");
  r.flops_per_second = r.flops / r.seconds;
  return r;
}

MemoryStatus read_memory_status() {
  MemoryStatus m;
  std::ifstream in("/proc/self/status");
  std::string line;
  auto kb = [](const std::string& l) {
    std::istringstream is(l.substr(l.find(':') + 1));
    uint64_t v = 0;
    is >> v;
    return v * 1024;
  };
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) m.vm_rss = kb(line);
    if (line.rfind("VmHWM:", 0) == 0) m.vm_hwm = kb(line);
    if (line.rfind("RssAnon:", 0) == 0) m.rss_anon = kb(line);
    if (line.rfind("RssFile:", 0) == 0) m.rss_file = kb(line);
  }
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) == 0) m.peak_rss = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  return m;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

uint64_t smaps_bytes_under(std::istream& smaps, const std::string& root, const std::string& field) {
  std::string line;
  bool inside = false;
  uint64_t total = 0;
  while (std::getline(smaps, line)) {
    // A mapping's header line starts with its address range "lo-hi"; its
    // path, if any, is the field after the inode.
    const size_t dash = line.find('-');
    const bool header =
        dash != std::string::npos && dash > 0 &&
        std::all_of(line.begin(), line.begin() + static_cast<long>(dash),
                    [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)); });
    if (header) {
      const size_t slash = line.find('/');
      inside = slash != std::string::npos && line.compare(slash, root.size(), root) == 0;
    } else if (inside && line.rfind(field, 0) == 0) {
      std::istringstream is(line.substr(field.size()));
      uint64_t v = 0;
      is >> v;
      total += v * 1024;
    }
  }
  return total;
}

namespace {

// The sum of one kB-valued field of /proc/self/smaps over the mappings of files in `dir`.
uint64_t mapped_smaps_bytes(const std::string& dir, const std::string& field) {
  std::error_code ec;
  std::string root = fs::canonical(dir, ec).string();
  if (ec) return 0;
  if (root.back() != '/') root.push_back('/');
  std::ifstream in("/proc/self/smaps");
  return smaps_bytes_under(in, root, field);
}

}  // namespace

uint64_t mapped_resident_bytes(const std::string& dir) {
  return mapped_smaps_bytes(dir, "Rss:");
}

uint64_t mapped_huge_page_bytes(const std::string& dir) {
  return mapped_smaps_bytes(dir, "FilePmdMapped:");
}

StateBytes state_bytes(const SequenceState& state) {
  StateBytes b;
  auto compressor = [](const CompressorState& c) {
    return (c.kv.size() + c.score.size()) * sizeof(float);
  };
  // The caches are packed (spec §6.3): bytes as stored, from the state.
  for (const LayerState& l : state.layers) {
    b.growing += l.compressed_kv.stored_bytes() + l.index_keys.stored_bytes();
    b.fixed += l.window_kv.size() + compressor(l.compressor) + compressor(l.index_compressor);
  }
  return b;
}

KvReadBytes kv_read_bytes_per_token(const ModelConfig& cfg, int64_t context) {
  KvReadBytes b;
  // The state's packed row and key widths (model/kv_cache.h), which follow
  // the same §6.3 layout as inspect's figures.
  const double row_state =
      static_cast<double>(KvRowLayout::for_dims(cfg.head_dim, cfg.rope_head_dim).bytes);
  const double key_state = static_cast<double>(Fp4KeyLayout::for_dim(cfg.index_head_dim).bytes);
  const double row_spec = static_cast<double>(kv_row_bytes(cfg));
  const double key_spec = static_cast<double>(indexer_key_bytes(cfg));
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const int64_t r = cfg.ratio(i);
    double rows = static_cast<double>(std::min(context, cfg.window_size)), keys = 0;
    if (r == 4) {
      keys = static_cast<double>(context / r);
      rows += static_cast<double>(std::min(cfg.index_topk, context / r));
    } else if (r > 0) {
      rows += static_cast<double>(context / r);
    }
    b.state += rows * row_state + keys * key_state;
    b.spec += rows * row_spec + keys * key_spec;
  }
  return b;
}

int64_t context_alignment(const ModelConfig& cfg) {
  int64_t a = std::max<int64_t>(cfg.window_size, 1);
  for (int64_t i = 0; i < cfg.n_layers; ++i)
    if (cfg.ratio(i) > 0) a = std::lcm(a, cfg.ratio(i));
  return a;
}

void replicate_context(const ModelConfig& cfg, SequenceState& state, int64_t target_pos) {
  const int64_t align = context_alignment(cfg);
  if (target_pos < state.pos || (target_pos - state.pos) % align != 0)
    fail("context fill: cannot extend a state at position ", state.pos, " to ", target_pos,
         " (the extension must be a non-negative multiple of ", align,
         ", the lcm of the window and the compression ratios)");
  // Appends copies of the packed rows: the paged store never moves the rows
  // it holds, so the timed decode pays no reallocation.
  auto tile = [](PagedRows& rows, int64_t want) {
    const int64_t have = rows.size(), width = rows.row_bytes();
    for (int64_t j = have; j < want; ++j) std::copy_n(rows.row(j % have), width, rows.append());
  };
  for (size_t i = 0; i < state.layers.size(); ++i) {
    LayerState& l = state.layers[i];
    if (l.ratio <= 0) continue;
    if (l.num_compressed() == 0)
      fail("context fill: layer ", i, " has no compressed row yet (fill at least ", l.ratio,
           " tokens with the forward before extending)");
    tile(l.compressed_kv, target_pos / l.ratio);
    if (l.index_head_dim > 0) tile(l.index_keys, target_pos / l.ratio);
  }
  state.pos = target_pos;
}

}  // namespace dsv4::cli
