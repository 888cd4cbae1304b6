// The KV cache's byte layouts (spec §6.2-6.3) and its paged row store.
//
// Every value the forward caches has already been fake-quantised to the grid
// of its storage format, so packing is lossless (kv_cache.cpp checks each
// value and fails if one is not on its grid):
// - main KV rows (window ring and compressed entries): NoPE dims through
//   fp8_fake_quant per 64 dims, RoPE dims rounded to bf16 by RopeTable::apply
//   (attention.cpp for the raw rows, compressor.cpp for the pooled entries);
// - indexer keys: Hadamard, bf16, fp4_fake_quant per 32 dims (compressor.cpp,
//   the `rotate` path).
// All byte-level packing lives here; the model code sees float rows.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace dsv4 {

// A main KV row as the production cache stores it ("MODEL1", §6.2):
// [nope FP8 e4m3 codes][rope BF16 values][one UE8M0 scale per 64 NoPE dims,
// zero-padded to a multiple of 8 bytes]. 584 B for head_dim 512 / rope 64.
struct KvRowLayout {
  static constexpr int64_t kScaleBlock = 64;
  int64_t nope = 0, rope = 0;  // dims
  int64_t scales = 0;          // scale bytes in use (ceil(nope / 64))
  int64_t bytes = 0;           // whole row

  static KvRowLayout for_dims(int64_t head_dim, int64_t rope_dim);
  // row: nope + rope floats on the grid described above.
  void pack(const float* row, uint8_t* out) const;
  void unpack(const uint8_t* in, float* row) const;
};

// An indexer key: FP4 e2m1 codes, two per byte (even dim in the low nibble),
// then one UE8M0 scale per 32 dims. 68 B for 128 dims.
struct Fp4KeyLayout {
  static constexpr int64_t kScaleBlock = 32;
  int64_t dim = 0, scales = 0, bytes = 0;

  static Fp4KeyLayout for_dim(int64_t dim);
  void pack(const float* key, uint8_t* out) const;
  void unpack(const uint8_t* in, float* key) const;
};

// A full page of packed rows; immutable once published, so any number of
// sequence states can hold it.
struct KvPage {
  std::vector<uint8_t> bytes;  // [PagedRows::kRowsPerPage, row_bytes]
};

// Append-only rows of a fixed byte width, in pages of kRowsPerPage rows.
// Full pages are shared (std::shared_ptr<const KvPage>): copying a store (as
// copying a SequenceState does, to snapshot or fork a sequence) copies page
// pointers and the partial last page only, and growing it never moves
// existing rows.
class PagedRows {
 public:
  static constexpr int64_t kRowsPerPage = 64;

  PagedRows() = default;
  explicit PagedRows(int64_t row_bytes) : row_bytes_(row_bytes) {}

  int64_t size() const { return rows_; }
  int64_t row_bytes() const { return row_bytes_; }
  const uint8_t* row(int64_t j) const {
    const int64_t page = j / kRowsPerPage, slot = j % kRowsPerPage;
    const uint8_t* base =
        page < static_cast<int64_t>(full_.size()) ? full_[page]->bytes.data() : tail_.data();
    return base + slot * row_bytes_;
  }
  // Room for one more row (row_bytes() bytes, to be filled by the caller).
  uint8_t* append();

  // The published pages (for sharing checks and measurements).
  const std::vector<std::shared_ptr<const KvPage>>& full_pages() const { return full_; }
  // Bytes holding rows: the full pages plus the used part of the last page.
  uint64_t stored_bytes() const {
    return static_cast<uint64_t>(rows_) * static_cast<uint64_t>(row_bytes_);
  }

 private:
  int64_t row_bytes_ = 0, rows_ = 0;
  std::vector<std::shared_ptr<const KvPage>> full_;
  std::vector<uint8_t> tail_;  // the partial last page, this store's own
};

}  // namespace dsv4
