#include "model/model.h"

#include "kernels/numerics.h"
#include "model/block.h"
#include "model/context.h"
#include "model/head.h"
#include "model/mtp.h"
#include "model/state.h"
#include "util/error.h"
#include "util/scratch.h"

namespace dsv4 {

Model::Model(const std::string& dir)
    : ckpt_(dir), weights_(bind_weights(ckpt_)), ctx_(std::make_unique<ModelContext>(config())) {}

Model::~Model() = default;

std::unique_ptr<SequenceState> Model::new_sequence() const {
  return std::make_unique<SequenceState>(make_sequence_state(config()));
}

void Model::forward(SequenceState& state, std::span<const int32_t> tokens,
                    std::vector<float>* last_logits) const {
  forward(state, tokens, last_logits, ForwardOptions{});
}

void Model::forward(SequenceState& state, std::span<const int32_t> tokens,
                    std::vector<float>* last_logits, const ForwardOptions& options) const {
  const ModelConfig& cfg = config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) fail("forward needs at least one token");
  const int64_t stream = cfg.hc_mult * cfg.dim;
  ScratchVector<float> x(n * stream);
  embed(tokens, x.data());
  for (int64_t layer = 0; layer < cfg.n_layers; ++layer)
    run_block(state, layer, state.pos, tokens, x.data(), options.observer);
  state.pos += n;
  if (last_logits) {
    last_logits->resize(cfg.vocab_size);
    head_logits(x.data() + (n - 1) * stream, last_logits->data());
  }
  if (options.hidden) options.hidden->assign(x.begin(), x.end());
}

void Model::embed(std::span<const int32_t> tokens, float* x) const {
  const ModelConfig& cfg = config();
  const int64_t dim = cfg.dim;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t tok = tokens[i];
    if (tok < 0 || tok >= cfg.vocab_size)
      fail("token id ", tok, " is outside the vocabulary (", cfg.vocab_size, " ids)");
    std::vector<uint16_t> row(dim);
    weights_.embed.copy<uint16_t>(tok * dim, dim, row.data());
    for (int64_t s = 0; s < cfg.hc_mult; ++s)
      for (int64_t c = 0; c < dim; ++c)
        x[(i * cfg.hc_mult + s) * dim + c] = kernels::bf16_to_float(row[c]);
  }
}

void Model::run_block(SequenceState& state, int64_t layer, int64_t pos,
                      std::span<const int32_t> tokens, float* x, ForwardObserver* observer) const {
  if (layer < 0 || layer >= config().n_layers)
    fail("block ", layer, " does not exist (the model has ", config().n_layers, ")");
  if (static_cast<int64_t>(state.layers.size()) != config().n_layers)
    fail("sequence state has ", state.layers.size(), " layers but the model has ",
         config().n_layers, " (states come from Model::new_sequence of the same model)");
  block_forward(*ctx_, weights_.layers[layer], state.layers[layer], pos,
                static_cast<int64_t>(tokens.size()), tokens, x, state.frame, observer);
}

void Model::head_logits(const float* x, float* logits) const {
  head_forward(*ctx_, weights_.hc_head, weights_.norm, weights_.head, x, logits);
}

void Model::mtp(SequenceState& state, int64_t k, const float* hidden, std::span<const int32_t> next,
                std::vector<float>* out, std::vector<float>* last_logits,
                ForwardObserver* observer) const {
  const ModelConfig& cfg = config();
  if (k < 0 || k >= static_cast<int64_t>(weights_.mtp.size()))
    fail("MTP block ", k, " does not exist (the model has ", weights_.mtp.size(), ")");
  const int64_t n = static_cast<int64_t>(next.size());
  const int64_t stream = cfg.hc_mult * cfg.dim;
  ScratchVector<float> y(n * stream);
  const MtpWeights& w = weights_.mtp[k];
  mtp_forward(*ctx_, w, weights_.embed, state.mtp[k], state.mtp_pos, n, hidden, next, y.data(),
              state.frame, observer);
  state.mtp_pos += n;
  if (last_logits) {
    last_logits->resize(cfg.vocab_size);
    head_forward(*ctx_, w.hc_head, w.norm, weights_.head, y.data() + (n - 1) * stream,
                 last_logits->data());
  }
  if (out) out->assign(y.begin(), y.end());
}

}  // namespace dsv4
