// Small stand-ins for the model and the tokenizer, so the engine's logic can
// be tested exactly: the model's logits follow a script, the detokenizer maps
// token ids to fixed text pieces.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.h"

namespace dsv4::engine::testing {

// After the prompt, the model puts all its mass (logit 0 vs -30) on
// script[k] for the k-th generated token, then on `fallback` forever.
class ScriptedModel : public LanguageModel {
 public:
  ScriptedModel(int vocab, std::vector<int32_t> script, int32_t fallback = 0,
                int64_t context = 1 << 20)
      : vocab_(vocab), script_(std::move(script)), fallback_(fallback), context_(context) {}

  int vocab_size() const override { return vocab_; }
  int64_t context_length() const override { return context_; }
  std::unique_ptr<ModelSequence> new_sequence() const override {
    return std::make_unique<Seq>(this);
  }

  mutable std::atomic<int> forward_calls{0};
  mutable std::atomic<int> fail_at_call{-1};  // throw std::runtime_error on this call
  std::chrono::milliseconds step_delay{0};    // sleep per forward call
  std::function<void(int)> on_forward;        // called with the call index

 private:
  struct Seq : ModelSequence {
    explicit Seq(const ScriptedModel* m) : m(m) {}
    void forward(std::span<const int32_t> tokens, std::vector<float>* logits) override {
      const int call = m->forward_calls.fetch_add(1);
      if (m->on_forward) m->on_forward(call);
      if (m->step_delay.count()) std::this_thread::sleep_for(m->step_delay);
      if (call == m->fail_at_call.load()) throw std::runtime_error("simulated device fault");
      if (pos == 0) prompt_len = static_cast<int64_t>(tokens.size());
      pos += static_cast<int64_t>(tokens.size());
      const int64_t k = pos - prompt_len;
      const int32_t next =
          k < static_cast<int64_t>(m->script_.size()) ? m->script_[k] : m->fallback_;
      if (logits) {
        logits->assign(m->vocab_, -30.0f);
        (*logits)[next] = 0.0f;
      }
    }
    int64_t position() const override { return pos; }
    const ScriptedModel* m;
    int64_t pos = 0, prompt_len = 0;
  };
  int vocab_;
  std::vector<int32_t> script_;
  int32_t fallback_;
  int64_t context_;
};

// Token id -> text piece; ids without a piece decode to "<id>".
class PieceDetokenizer : public Detokenizer {
 public:
  explicit PieceDetokenizer(std::map<int32_t, std::string> pieces) : pieces_(std::move(pieces)) {}
  std::string token_bytes(int32_t token) const override {
    auto it = pieces_.find(token);
    if (it != pieces_.end()) return it->second;
    // Built with += : g++ 12 gives a false -Wrestrict on "<" + std::string.
    std::string s = "<";
    s += std::to_string(token);
    s += '>';
    return s;
  }
  std::unique_ptr<TextStream> new_stream() const override {
    struct Stream : TextStream {
      explicit Stream(const PieceDetokenizer* d) : d(d) {}
      std::string push(int32_t t) override { return d->token_bytes(t); }
      std::string flush() override { return {}; }
      const PieceDetokenizer* d;
    };
    return std::make_unique<Stream>(this);
  }

 private:
  std::map<int32_t, std::string> pieces_;
};

}  // namespace dsv4::engine::testing
