// Measurements behind `dsv4 bench` (docs/bench.md): this machine's memory
// bandwidth and FP32 FMA peak (the rooflines), process memory, and the
// sequence-state helpers that let a decode step run at a long context without
// prefilling it token by token.
#pragma once

#include <cstdint>
#include <istream>
#include <string>

#include "model/config.h"
#include "model/state.h"

namespace dsv4::cli {

// Size of the largest CPU cache of cpu0 (sysfs cache/index*/size, highest
// level); 0 when sysfs does not say. In a VM this is what the hypervisor
// reports, which can be less than the host's cache.
uint64_t last_level_cache_bytes();
// Parses a sysfs cache size ("32768K", "1M", "512"); 0 when malformed.
uint64_t parse_cache_size(const std::string& text);

// STREAM-style triad a[i] = b[i] + s·c[i] over three double arrays of
// `total_bytes` / 3 bytes each, on the global thread pool, best of `runs`.
// Bytes counted per element: 24 (read b, read c, write a), as STREAM counts;
// the write-allocate read of a[i] that a CPU without streaming stores also
// performs is not counted, so the figure is the STREAM figure, not the bus's.
struct TriadResult {
  uint64_t elements = 0;        // per array
  uint64_t bytes_per_run = 0;   // 24 · elements
  double best_seconds = 0;      // fastest run
  double bytes_per_second = 0;  // bytes_per_run / best_seconds
  int runs = 0;
  double check = 0;  // a[] checksum, compared with the exact expected value by the tests
};
TriadResult measure_triad(uint64_t total_bytes, int runs);

// Peak FP32 FMA throughput: independent accumulator chains of
// acc = acc·m + a kept in registers, on every thread of the pool. AVX-512
// (16 lanes) when the CPU has it, AVX2 (8 lanes) otherwise; one FMA counts 2
// FLOP per lane.
struct FmaPeakResult {
  std::string isa;  // "avx512f" or "avx2"
  int threads = 0;
  double flops = 0;  // FLOP executed
  double seconds = 0;
  double flops_per_second = 0;
};
FmaPeakResult measure_fma_peak(double min_seconds);

// Process memory from /proc/self/status and getrusage, in bytes.
struct MemoryStatus {
  uint64_t vm_rss = 0, vm_hwm = 0;  // resident now / high-water mark (kernel)
  uint64_t rss_anon = 0, rss_file = 0;
  uint64_t peak_rss = 0;  // getrusage ru_maxrss
};
MemoryStatus read_memory_status();
// Resets the kernel's RSS high-water mark (VmHWM and ru_maxrss) to the
// current RSS by writing "5" to /proc/self/clear_refs; false when refused.
bool reset_peak_rss();
// Resident bytes (smaps "Rss") of this process's mappings of files inside
// `dir` (the checkpoint's shards).
uint64_t mapped_resident_bytes(const std::string& dir);
// The part of it mapped in 2 MiB pages (smaps FilePmdMapped): a checkpoint read fresh from
// disk lands in 2 MiB page-cache folios on current kernels; one just written (dsv4 synth) or
// read long ago may sit in 4 KiB pages, which stream about 8 % slower (docs/performance.md).
uint64_t mapped_huge_page_bytes(const std::string& dir);
// The sum of a kB-valued smaps field ("Rss:", "FilePmdMapped:") over the mappings in `smaps`
// (the text of /proc/PID/smaps) whose path starts with `root` (ending in '/').
uint64_t smaps_bytes_under(std::istream& smaps, const std::string& root, const std::string& field);

// Bytes the sequence state holds. `growing`: the parts that grow with the
// context (compressed KV rows and indexer keys of every main layer), as
// stored (packed, spec §6.3: model/kv_cache.h); `fixed`: window rings
// (packed) and compressor buffers (fp32). Counted from the state, not from
// the config.
struct StateBytes {
  uint64_t growing = 0;
  uint64_t fixed = 0;
};
StateBytes state_bytes(const SequenceState& state);

// KV-cache bytes one decode step reads at a context of `context` positions
// (the step's own position included), following the attention and indexer
// code: every layer reads its min(context, window) window rows; a CSA layer
// (ratio 4) scores all context/4 indexer keys and attends to
// min(index_topk, context/4) compressed rows; an HCA layer attends to all
// context/ratio compressed rows. `state`: at the sequence state's row and
// key widths (model/kv_cache.h); `spec`: at the spec §6.3 packed sizes (row
// and key bytes as inspect counts). The state stores that layout, so the two
// are equal.
struct KvReadBytes {
  double state = 0;
  double spec = 0;
};
KvReadBytes kv_read_bytes_per_token(const ModelConfig& cfg, int64_t context);

// The step in positions after which every cache of the state is in the same
// phase: lcm of the sliding window and every main layer's compression ratio.
int64_t context_alignment(const ModelConfig& cfg);

// Extends a state filled by the real forward to `target_pos` positions by
// repeating its compressed KV rows and indexer keys (row j of the extended
// cache = row j mod n of the filled one), leaving the window rings and
// compressor buffers as they are, and sets state.pos = target_pos. The result
// has exactly the cache sizes a real prefill of target_pos tokens would have,
// so a following decode step does the real amount of work (same rows scored,
// same top-k width, same attention widths); only the cached values repeat.
// Requires target_pos ≥ state.pos, target_pos ≡ state.pos (mod
// context_alignment) and at least one compressed row per compressed layer.
void replicate_context(const ModelConfig& cfg, SequenceState& state, int64_t target_pos);

}  // namespace dsv4::cli
