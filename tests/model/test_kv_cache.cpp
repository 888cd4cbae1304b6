// The packed, paged KV cache (spec §6.3): row and key layouts, lossless
// packing of what the forward caches, and page sharing between copied
// sequence states.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "golden_checks.h"
#include "kernels/numerics.h"
#include "model/compressor.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/state.h"
#include "util/error.h"

namespace dsv4 {
namespace {

std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = kernels::float_bits(v[i]);
  return b;
}

// A main KV row the way the forward makes one: RoPE dims bf16, NoPE dims
// through the reference's act_quant per 64 (fp8_fake_quant_reference).
std::vector<float> forward_like_row(std::mt19937& rng, int64_t nope, int64_t rope, float spread) {
  std::normal_distribution<float> d(0.0f, spread);
  std::vector<float> row(nope + rope);
  for (float& v : row) v = kernels::bf16_round(d(rng));
  kernels::fp8_fake_quant_reference(row.data(), nope, 64);
  return row;
}

TEST(KvLayout, SizesFollowTheSpec) {
  const KvRowLayout flash = KvRowLayout::for_dims(512, 64);
  EXPECT_EQ(flash.nope, 448);
  EXPECT_EQ(flash.scales, 7);
  EXPECT_EQ(flash.bytes, 584);                      // 448 FP8 + 64·2 BF16 + 7 scales + 1 pad
  EXPECT_EQ(Fp4KeyLayout::for_dim(128).bytes, 68);  // 64 B of codes + 4 scales
  // Other dims: NoPE 100 → 2 scales, padded to 8; rope 28 → 56 B.
  EXPECT_EQ(KvRowLayout::for_dims(128, 28).bytes, 100 + 56 + 8);
  EXPECT_EQ(Fp4KeyLayout::for_dim(64).bytes, 32 + 2);
}

TEST(KvLayout, FakeQuantisedRowsPackLosslessly) {
  std::mt19937 rng(5);
  for (const auto& [hd, rd] : {std::pair<int64_t, int64_t>{512, 64}, {192, 64}, {160, 32}}) {
    const KvRowLayout layout = KvRowLayout::for_dims(hd, rd);
    std::vector<uint8_t> packed(layout.bytes);
    std::vector<float> back(hd);
    for (float spread : {1e-9f, 1e-3f, 1.0f, 300.0f}) {
      for (int rep = 0; rep < 20; ++rep) {
        std::vector<float> row = forward_like_row(rng, layout.nope, rd, spread);
        if (rep == 0) std::fill(row.begin(), row.begin() + 64, 0.0f);  // an all-zero block
        if (rep == 1) row[3] = -0.0f;
        if (rep == 2) {
          // A block whose largest code rounds down to 224: the packer's scale
          // is half the forward's; the values must survive anyway.
          std::fill(row.begin(), row.begin() + 64, 0.0f);
          row[0] = 225.0f;
          row[1] = -3.0f;
          kernels::fp8_fake_quant_reference(row.data(), layout.nope, 64);
          ASSERT_EQ(row[0], 224.0f);
        }
        layout.pack(row.data(), packed.data());
        layout.unpack(packed.data(), back.data());
        ASSERT_EQ(bits(back), bits(row)) << hd << " spread " << spread << " rep " << rep;
      }
    }
  }
}

TEST(KvLayout, ValuesOffTheGridAreRefused) {
  const KvRowLayout layout = KvRowLayout::for_dims(512, 64);
  std::mt19937 rng(9);
  std::vector<float> row = forward_like_row(rng, layout.nope, 64, 1.0f);
  std::vector<uint8_t> packed(layout.bytes);
  std::vector<float> off = row;
  off[5] = std::nextafter(off[5], 10.0f);  // not an FP8 code times the block scale
  EXPECT_THROW(layout.pack(off.data(), packed.data()), Error);
  off = row;
  off[layout.nope + 1] = 1.0f + 1.0f / 1024;  // RoPE dim not a bf16 value
  EXPECT_THROW(layout.pack(off.data(), packed.data()), Error);
  const Fp4KeyLayout key = Fp4KeyLayout::for_dim(128);
  std::vector<float> k(128, 0.25f);
  k[7] = 0.3f;
  std::vector<uint8_t> kp(key.bytes);
  EXPECT_THROW(key.pack(k.data(), kp.data()), Error);
}

TEST(KvLayout, Fp4KeysPackLosslesslyAndByteByByte) {
  const Fp4KeyLayout layout = Fp4KeyLayout::for_dim(128);
  std::mt19937 rng(3);
  std::normal_distribution<float> d;
  std::vector<uint8_t> packed(layout.bytes);
  std::vector<float> back(128);
  for (int rep = 0; rep < 50; ++rep) {
    std::vector<float> key(128);
    for (float& v : key) v = kernels::bf16_round(d(rng) * (rep % 5 == 0 ? 1e-30f : 1.0f));
    kernels::fp4_fake_quant(key.data(), 128, 32);
    layout.pack(key.data(), packed.data());
    layout.unpack(packed.data(), back.data());
    ASSERT_EQ(bits(back), bits(key)) << rep;
  }
  // The byte layout: dim 2i in the low nibble of byte i, dim 2i+1 in the
  // high one, then the E8M0 scale bytes (2^(b−127)).
  std::vector<float> key(128, 0.0f);
  key[0] = 1.5f;    // code 3 at scale 1 (amax 6 → scale 1)
  key[1] = -6.0f;   // code 15
  key[32] = 0.25f;  // second block: amax 0.25 → scale 2^-4, 0.25 = 4·2^-4: code 6
  layout.pack(key.data(), packed.data());
  EXPECT_EQ(packed[0], 0xf3);
  EXPECT_EQ(packed[16], 0x06);
  EXPECT_EQ(packed[64], 127);
  EXPECT_EQ(packed[65], 127 - 4);
}

// Every code in every position, against the scalar definitions.
TEST(KvLayout, Fp4KeysDecodeEveryCode) {
  for (int64_t dim : {int64_t{128}, int64_t{64}, int64_t{36}}) {
    const Fp4KeyLayout layout = Fp4KeyLayout::for_dim(dim);
    std::vector<uint8_t> packed(layout.bytes);
    std::vector<float> key(dim);
    for (int byte = 0; byte < 256; ++byte) {
      for (int64_t i = 0; i < dim / 2; ++i) packed[i] = static_cast<uint8_t>(byte + 37 * i);
      for (int64_t b = 0; b < layout.scales; ++b)
        packed[dim / 2 + b] = static_cast<uint8_t>(100 + 13 * b + byte % 7);
      layout.unpack(packed.data(), key.data());
      for (int64_t d = 0; d < dim; ++d) {
        const uint8_t code = (packed[d / 2] >> (4 * (d % 2))) & 0xf;
        const float want =
            kernels::fp4_e2m1_decode(code) * kernels::e8m0_decode(packed[dim / 2 + d / 32]);
        ASSERT_EQ(kernels::float_bits(key[d]), kernels::float_bits(want))
            << "dim " << dim << " byte " << byte << " d " << d;
      }
    }
  }
}

TEST(PagedRows, GrowsInPagesAndCopiesShareFullPages) {
  PagedRows rows(3);
  const int64_t n = 2 * PagedRows::kRowsPerPage + 5;
  for (int64_t j = 0; j < n; ++j) {
    uint8_t* r = rows.append();
    for (int c = 0; c < 3; ++c) r[c] = static_cast<uint8_t>(j * 3 + c);
  }
  ASSERT_EQ(rows.size(), n);
  EXPECT_EQ(rows.full_pages().size(), 2u);
  EXPECT_EQ(rows.stored_bytes(), static_cast<uint64_t>(3 * n));
  const uint8_t* first = rows.row(0);
  PagedRows copy = rows;
  EXPECT_EQ(copy.row(0), first);  // shared, not copied
  uint8_t* mine = copy.append();
  mine[0] = 1;
  mine[1] = 2;
  mine[2] = 3;
  EXPECT_EQ(rows.size(), n);  // the original did not see the copy's row
  EXPECT_EQ(copy.size(), n + 1);
  for (int64_t j = 0; j < n; ++j)
    for (int c = 0; c < 3; ++c) {
      ASSERT_EQ(rows.row(j)[c], static_cast<uint8_t>(j * 3 + c));
      ASSERT_EQ(copy.row(j)[c], static_cast<uint8_t>(j * 3 + c));
    }
  // Rows never move when the store grows.
  for (int64_t j = 0; j < 3 * PagedRows::kRowsPerPage; ++j) rows.append();
  EXPECT_EQ(rows.row(0), first);
  EXPECT_EQ(rows.full_pages()[0], copy.full_pages()[0]);
  EXPECT_EQ(rows.full_pages()[0].use_count(), 2);
}

class KvCacheModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = std::make_unique<Model>(testing::golden_dir() + "/checkpoint");
  }
  static void TearDownTestSuite() { model_.reset(); }
  static std::vector<int32_t> prompt(int64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(n);
    for (auto& v : t) v = static_cast<int32_t>(rng() % model_->config().vocab_size);
    return t;
  }
  static std::unique_ptr<Model> model_;
};
std::unique_ptr<Model> KvCacheModelTest::model_;

// Rows straight out of the real compressors (main KV and indexer keys, the
// values the forward caches) pack and unpack to the same floats.
TEST_F(KvCacheModelTest, CompressorRowsRoundTripBitForBit) {
  const ModelContext& ctx = model_->context();
  const ModelConfig& cfg = model_->config();
  int64_t checked = 0;
  for (size_t layer = 0; layer < model_->weights().layers.size(); ++layer) {
    const AttentionWeights& a = model_->weights().layers[layer].attn;
    if (!a.has_compressor) continue;
    LayerState st = make_layer_state(cfg, static_cast<int64_t>(layer));
    const int64_t n = 6 * a.compressor.ratio;
    std::mt19937 rng(static_cast<uint32_t>(layer));
    std::normal_distribution<float> d;
    std::vector<float> x(n * cfg.dim);
    for (float& v : x) v = kernels::bf16_round(d(rng));
    std::vector<float> rows, keys;
    compressor_forward(ctx, a.compressor, st.compressor, 0, n, x.data(), &rows);
    st.append_compressed(rows);
    ASSERT_EQ(st.num_compressed(), 6);
    std::vector<float> back(cfg.head_dim);
    for (int64_t j = 0; j < st.num_compressed(); ++j) {
      st.compressed_row(j, back.data());
      const std::vector<float> want(rows.begin() + j * cfg.head_dim,
                                    rows.begin() + (j + 1) * cfg.head_dim);
      ASSERT_EQ(bits(back), bits(want)) << "layer " << layer << " row " << j;
      ++checked;
    }
    if (!a.has_indexer) continue;
    compressor_forward(ctx, a.indexer.compressor, st.index_compressor, 0, n, x.data(), &keys);
    st.append_index_keys(keys);
    std::vector<float> kb(cfg.index_head_dim);
    for (int64_t j = 0; j < st.num_index_keys(); ++j) {
      st.index_key(j, kb.data());
      const std::vector<float> want(keys.begin() + j * cfg.index_head_dim,
                                    keys.begin() + (j + 1) * cfg.index_head_dim);
      ASSERT_EQ(bits(kb), bits(want)) << "layer " << layer << " key " << j;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// After a real forward every cached row (window ring, compressed rows,
// indexer keys) decodes to values the forward's quantisers leave unchanged,
// and packing them again gives the stored bytes.
TEST_F(KvCacheModelTest, EveryCachedRowOfAForwardIsOnItsGrid) {
  const ModelConfig& cfg = model_->config();
  auto st = model_->new_sequence();
  std::vector<float> logits;
  model_->forward(*st, prompt(3 * cfg.window_size + 9, 1), &logits);
  const int64_t hd = cfg.head_dim, nope = hd - cfg.rope_head_dim, ihd = cfg.index_head_dim;
  std::vector<float> row(hd), requant(hd), key(ihd), key_requant(ihd);
  auto check_row = [&](const LayerState& l, const uint8_t* stored) {
    l.kv_layout.unpack(stored, row.data());
    requant = row;
    kernels::fp8_fake_quant_reference(requant.data(), nope, 64);
    kernels::bf16_round_inplace(requant.data() + nope, hd - nope);
    ASSERT_EQ(bits(requant), bits(row));
    std::vector<uint8_t> again(l.kv_layout.bytes);
    l.kv_layout.pack(row.data(), again.data());
    ASSERT_EQ(std::memcmp(again.data(), stored, again.size()), 0);
  };
  int64_t rows = 0, keys = 0;
  for (const LayerState& l : st->layers) {
    for (int64_t s = 0; s < l.window; ++s) check_row(l, l.window_kv.data() + s * l.kv_layout.bytes);
    for (int64_t j = 0; j < l.num_compressed(); ++j, ++rows) check_row(l, l.compressed_kv.row(j));
    for (int64_t j = 0; j < l.num_index_keys(); ++j, ++keys) {
      l.index_key(j, key.data());
      key_requant = key;
      kernels::fp4_fake_quant(key_requant.data(), ihd, 32);
      ASSERT_EQ(bits(key_requant), bits(key));
      std::vector<uint8_t> again(l.key_layout.bytes);
      l.key_layout.pack(key.data(), again.data());
      ASSERT_EQ(std::memcmp(again.data(), l.index_keys.row(j), again.size()), 0);
    }
  }
  EXPECT_GT(rows, 0);
  EXPECT_GT(keys, 0);

  // The bytes a layer holds, counted from the config: §6.3 rows and keys.
  const int64_t p = st->pos;
  const int64_t row_bytes = nope + 2 * cfg.rope_head_dim + ((nope + 63) / 64 + 7) / 8 * 8;
  const int64_t key_bytes = ihd / 2 + (ihd + 31) / 32;
  for (size_t i = 0; i < st->layers.size(); ++i) {
    const int64_t r = cfg.ratio(static_cast<int64_t>(i));
    int64_t want = cfg.window_size * row_bytes;
    if (r > 0) {
      const int64_t coff = r == 4 ? 2 : 1;
      want += p / r * row_bytes + 2 * 4 * coff * r * coff * hd;  // rows; kv + score states
      if (r == 4) want += p / r * key_bytes + 2 * 4 * coff * r * coff * ihd;
    }
    EXPECT_EQ(st->layers[i].stored_bytes(), static_cast<uint64_t>(want)) << "layer " << i;
  }
}

// A copied state (a forked sequence) shares the full pages of its caches;
// both continue exactly as independently run sequences do.
TEST_F(KvCacheModelTest, ForkedStatesSharePagesAndDecodeIndependently) {
  const ModelConfig& cfg = model_->config();
  int64_t min_ratio = 0;
  for (int64_t i = 0; i < cfg.n_layers; ++i)
    if (cfg.ratio(i) > 0 && (min_ratio == 0 || cfg.ratio(i) < min_ratio)) min_ratio = cfg.ratio(i);
  ASSERT_GT(min_ratio, 0);
  // Enough for two full pages in the most compressed-row-rich layers.
  const std::vector<int32_t> p = prompt(2 * PagedRows::kRowsPerPage * min_ratio + 7, 2);
  auto a = model_->new_sequence();
  std::vector<float> la, lb;
  model_->forward(*a, p, &la);
  SequenceState b = *a;
  std::vector<size_t> pages_at_fork;
  int64_t shared = 0;
  for (size_t l = 0; l < a->layers.size(); ++l) {
    const auto& pa = a->layers[l].compressed_kv.full_pages();
    const auto& pb = b.layers[l].compressed_kv.full_pages();
    ASSERT_EQ(pa.size(), pb.size());
    pages_at_fork.push_back(pa.size());
    for (size_t k = 0; k < pa.size(); ++k, ++shared) EXPECT_EQ(pa[k].get(), pb[k].get());
    const auto& ka = a->layers[l].index_keys.full_pages();
    const auto& kb = b.layers[l].index_keys.full_pages();
    for (size_t k = 0; k < ka.size(); ++k, ++shared) EXPECT_EQ(ka[k].get(), kb[k].get());
  }
  EXPECT_GE(shared, 2);

  // Different continuations (long enough to fill more rows), each compared
  // with a sequence that never forked.
  const std::vector<int32_t> next_a = prompt(9, 3), next_b = prompt(9, 4);
  for (int32_t t : next_a) model_->forward(*a, std::span<const int32_t>(&t, 1), &la);
  for (int32_t t : next_b) model_->forward(b, std::span<const int32_t>(&t, 1), &lb);
  for (const auto& [next, logits] : {std::pair{next_a, la}, std::pair{next_b, lb}}) {
    auto fresh = model_->new_sequence();
    std::vector<float> lf;
    model_->forward(*fresh, p, &lf);
    for (int32_t t : next) model_->forward(*fresh, std::span<const int32_t>(&t, 1), &lf);
    EXPECT_EQ(lf, logits);
  }
  EXPECT_NE(la, lb);
  // The pages both held before the fork are still shared.
  for (size_t l = 0; l < a->layers.size(); ++l) {
    const auto& pa = a->layers[l].compressed_kv.full_pages();
    const auto& pb = b.layers[l].compressed_kv.full_pages();
    for (size_t k = 0; k < pages_at_fork[l]; ++k)
      EXPECT_EQ(pa[k].get(), pb[k].get()) << "layer " << l << " page " << k;
  }
}

}  // namespace
}  // namespace dsv4
