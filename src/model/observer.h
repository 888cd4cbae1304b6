// Taps into the forward pass, for traces and tests. Every callback gets the
// block id (n_layers + k for MTP block k), the absolute position of the first
// row and the number of rows; default implementations ignore everything.
#pragma once

#include <cstdint>

namespace dsv4 {

class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  // Attention output after wo_b, [n, dim], before the hyper-connection mixing.
  virtual void on_attn_out(int64_t /*layer*/, int64_t /*pos*/, int64_t /*n*/,
                           const float* /*out*/) {}
  // MoE output (routed + shared), [n, dim].
  virtual void on_ffn_out(int64_t /*layer*/, int64_t /*pos*/, int64_t /*n*/, const float* /*out*/) {
  }
  // Block output streams, [n, hc_mult, dim].
  virtual void on_block_out(int64_t /*layer*/, int64_t /*pos*/, int64_t /*n*/, const float* /*x*/) {
  }
  // Routed experts and their weights (normalised, × route_scale), [n, k].
  virtual void on_moe_routing(int64_t /*layer*/, int64_t /*pos*/, int64_t /*n*/, int64_t /*k*/,
                              const int32_t* /*experts*/, const float* /*weights*/) {}
  // CSA indexer selections as compressed-entry numbers, −1 padded, [n, width].
  virtual void on_indexer_topk(int64_t /*layer*/, int64_t /*pos*/, int64_t /*n*/, int64_t /*width*/,
                               const int32_t* /*entries*/) {}
};

}  // namespace dsv4
