// `dsv4 synth`: random-weight checkpoints in the official DeepSeek V4 format
// (docs/checkpoint-format.md), with the real per-layer dimensions of V4-Flash
// or V4-Pro (fewer layers/experts allowed) or tiny test dimensions. The output
// is what DeepSeek publishes: config.json with the HF field names, safetensors
// with the native tensor names, FP8 e4m3 linears with UE8M0 128x128 block
// scales, packed FP4 e2m1 experts with one UE8M0 per 32, sharded with
// model.safetensors.index.json when larger than one shard.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "util/safetensors.h"

namespace dsv4 {

// Number encoders of the checkpoint formats. Decoders live in src/kernels/;
// these are independent so that the tests can check one against the other.
//
// FP8 e4m3 ("fn": no infinities, 0x7F/0xFF = NaN, max finite 448): round to
// nearest, ties to even; saturates to +-448 (also for +-inf); NaN -> 0x7F|sign.
uint8_t fp8_e4m3_encode(float x);
// FP4 e2m1 (values 0, .5, 1, 1.5, 2, 3, 4, 6; bit 3 = sign): round to nearest,
// ties to even; saturates to +-6; NaN -> 0 (the format has no NaN).
uint8_t fp4_e2m1_encode(float x);
// bfloat16: round to nearest, ties to even; NaN stays a (quiet) NaN.
uint16_t bf16_encode(float x);
// UE8M0 scale exponent for a block: the smallest e with amax / 2^e <= max_code
// (the reference's 2^ceil(log2(amax / max_code))), clamped to the byte's range.
int e8m0_block_exponent(float amax, float max_code);
// Quantizes n values (n a multiple of 32) to packed FP4 as the checkpoints
// store a routed-expert row: byte i holds element 2i in its low nibble and
// 2i+1 in its high nibble; exps[b] receives the power-of-two scale exponent of
// elements [32b, 32b+32) (stored as the UE8M0 byte exps[b] + 127).
void fp4_quantize_row(const float* x, int64_t n, uint8_t* packed, int* exps);

struct SynthOptions {
  std::string like = "tiny";  // tiny | flash | pro
  int64_t layers = 0;         // 0: the preset's count
  int64_t experts = 0;        // 0: the preset's n_routed_experts
  int64_t dim = 0;            // 0: the preset's hidden_size
  int64_t vocab = 0;          // 0: the preset's (or the tokenizer's) vocab_size
  std::string tokenizer_dir;  // copy tokenizer.json (+ tokenizer_config.json) and size the vocab
  uint64_t seed = 0;
  std::string expert_dtype = "fp4";      // fp4 (instruct) | fp8 (Base: FP8 experts, F32 scales)
  uint64_t shard_bytes = 4000000000ull;  // a shard holds at most this many tensor bytes
  std::string out;
};

// The full published configuration of a preset ("flash", "pro") or the tiny
// test model ("tiny", dimensions like tests/data/golden/tiny-a).
ModelConfig preset_config(const std::string& like);

// The configuration `synth` writes for these options (reads the tokenizer's
// vocabulary when tokenizer_dir is set; writes nothing). Layers keep the
// preset's schedule cut to the first N layers, plus the MTP entry;
// num_hash_layers = min(preset's, N). Validated like a loaded config.json.
ModelConfig synth_config(const SynthOptions& opt);

// The dtype synth stores for a tensor: the first accepted one, except the
// linear scales of a Base (fp8-expert) checkpoint, which are F32.
DType synth_dtype(const TensorSpec& spec, const ModelConfig& cfg);

// vocab size implied by a HF tokenizer.json: max id over model.vocab and
// added_tokens, plus one.
int64_t tokenizer_vocab_size(const std::string& tokenizer_json_path);

struct SynthResult {
  ModelConfig config;
  size_t num_tensors = 0;
  uint64_t tensor_bytes = 0;       // sum of all tensor data (= index metadata.total_size)
  std::vector<std::string> files;  // safetensors files written
};

// Writes the checkpoint folder. Streams tensor by tensor (memory stays at a
// few stripes of one tensor, whatever the model size); every file is written
// to a temp name and renamed. Stale model files of an earlier synth in the
// same folder are removed first. `progress` (optional) gets one line per file.
SynthResult synth_checkpoint(const SynthOptions& opt,
                             const std::function<void(const std::string&)>& progress = {});

}  // namespace dsv4
