#include "model/trace.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "model/context.h"
#include "model/state.h"
#include "util/error.h"

namespace dsv4 {

namespace {

std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name) {
  const TensorView& t = f.get(name);
  if (t.dtype != DType::F32) fail(f.path(), ": tensor ", name, " is not F32");
  std::vector<float> v(t.numel());
  t.copy<float>(0, t.numel(), v.data());
  return v;
}

std::vector<int32_t> read_i32(const SafetensorsFile& f, const std::string& name) {
  const TensorView& t = f.get(name);
  if (t.dtype != DType::I32) fail(f.path(), ": tensor ", name, " is not I32");
  std::vector<int32_t> v(t.numel());
  t.copy<int32_t>(0, t.numel(), v.data());
  return v;
}

std::string layer_name(const char* prefix, int64_t layer) {
  return str_cat(prefix, ".layer", layer);
}

// Collects what the forward pass reports into golden-named tensors.
class Recorder : public ForwardObserver {
 public:
  Recorder(const ModelConfig& cfg, int64_t prompt_len, int64_t steps,
           std::vector<int32_t> sub_positions, TraceTensors* out)
      : cfg_(cfg), S_(prompt_len), T_(steps), sub_(std::move(sub_positions)), out_(out) {}

  bool mtp_prefill = false;  // routing of the MTP block is recorded only for its prompt pass

  void on_attn_out(int64_t layer, int64_t pos, int64_t n, const float* x) override {
    sub_layer("prefill.attn_out", layer, pos, n, x);
  }
  void on_ffn_out(int64_t layer, int64_t pos, int64_t n, const float* x) override {
    sub_layer("prefill.ffn_out", layer, pos, n, x);
  }
  void on_block_out(int64_t layer, int64_t pos, int64_t n, const float* x) override {
    if (layer >= cfg_.n_layers) return;
    const int64_t row = cfg_.hc_mult * cfg_.dim;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = pos + i;
      const bool pre = p < S_;
      TraceTensor& t = f32(layer_name(pre ? "prefill.hidden" : "decode.hidden", layer),
                           {pre ? S_ : T_, cfg_.hc_mult, cfg_.dim});
      std::copy_n(x + i * row, row, t.f32.begin() + (pre ? p : p - S_) * row);
    }
  }
  void on_moe_routing(int64_t layer, int64_t pos, int64_t n, int64_t k, const int32_t* experts,
                      const float* weights) override {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = pos + i;
      if (layer >= cfg_.n_layers) {
        if (!mtp_prefill || p >= S_) continue;
        TraceTensor& t = i32("mtp.prefill.moe_experts", {S_, k});
        std::copy_n(experts + i * k, k, t.i32.begin() + p * k);
        continue;
      }
      const bool pre = p < S_;
      TraceTensor& e = i32(layer_name(pre ? "prefill.moe_experts" : "decode.moe_experts", layer),
                           {pre ? S_ : T_, k});
      std::copy_n(experts + i * k, k, e.i32.begin() + (pre ? p : p - S_) * k);
      if (pre) {
        TraceTensor& w = f32(layer_name("prefill.moe_weights", layer), {S_, k});
        std::copy_n(weights + i * k, k, w.f32.begin() + p * k);
      }
    }
  }
  void on_indexer_topk(int64_t layer, int64_t pos, int64_t n, int64_t width,
                       const int32_t* entries) override {
    if (layer >= cfg_.n_layers) return;
    const int64_t k = cfg_.index_topk;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = pos + i;
      const bool pre = p < S_;
      // Golden numbering: prefill S + j, decode window_size + j.
      const int64_t base = pre ? S_ : cfg_.window_size;
      TraceTensor& t = i32(layer_name(pre ? "prefill.indexer_topk" : "decode.indexer_topk", layer),
                           {pre ? S_ : T_, k});
      int32_t* row = t.i32.data() + (pre ? p : p - S_) * k;
      for (int64_t j = 0; j < std::min(width, k); ++j)
        row[j] =
            entries[i * width + j] < 0 ? -1 : static_cast<int32_t>(base + entries[i * width + j]);
    }
  }

  TraceTensor& f32(const std::string& name, std::vector<int64_t> shape) {
    TraceTensor& t = (*out_)[name];
    if (t.shape.empty()) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      t.shape = std::move(shape);
      t.f32.assign(n, 0.0f);
    }
    return t;
  }
  TraceTensor& i32(const std::string& name, std::vector<int64_t> shape) {
    TraceTensor& t = (*out_)[name];
    if (t.shape.empty()) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      t.shape = std::move(shape);
      t.is_int = true;
      t.i32.assign(n, -1);
    }
    return t;
  }

 private:
  void sub_layer(const char* prefix, int64_t layer, int64_t pos, int64_t n, const float* x) {
    if (layer >= cfg_.n_layers) return;
    const int64_t dim = cfg_.dim, P = static_cast<int64_t>(sub_.size());
    for (int64_t s = 0; s < P; ++s) {
      const int64_t p = sub_[s];
      if (p < pos || p >= pos + n || p >= S_) continue;
      TraceTensor& t = f32(layer_name(prefix, layer), {P, dim});
      std::copy_n(x + (p - pos) * dim, dim, t.f32.begin() + s * dim);
    }
  }

  const ModelConfig& cfg_;
  int64_t S_, T_;
  std::vector<int32_t> sub_;
  TraceTensors* out_;
};

}  // namespace

TraceTensors run_trace(const Model& model, const SafetensorsFile& golden,
                       const TraceOptions& options) {
  const ModelConfig& cfg = model.config();
  const std::vector<int32_t> tokens = read_i32(golden, "tokens");
  const TensorView& h0 = golden.get("prefill.hidden.layer0");
  if (h0.shape.size() != 3 || h0.dim(1) != cfg.hc_mult || h0.dim(2) != cfg.dim)
    fail(golden.path(), ": prefill.hidden.layer0 has shape ", h0.shape_str(), " but the model has ",
         cfg.hc_mult, " streams of ", cfg.dim, " (is this trace from another model?)");
  for (int64_t i = 0; i < cfg.n_layers; ++i)
    if (!golden.has(layer_name("prefill.hidden", i)))
      fail(golden.path(), ": no ", layer_name("prefill.hidden", i), " for block ", i, " of ",
           cfg.n_layers, " (is this trace from another model?)");
  const int64_t S = h0.dim(0);
  const int64_t total = static_cast<int64_t>(tokens.size());
  if (S <= 0 || S > total)
    fail(golden.path(), ": prompt length ", S, " does not fit the ", total, " tokens");
  const int64_t T = total - S;
  const int64_t L = cfg.n_layers, stream = cfg.hc_mult * cfg.dim;
  const int64_t chunk = options.chunk > 0 ? options.chunk : S;
  std::vector<int32_t> sub;
  if (golden.has("prefill.sub_positions")) sub = read_i32(golden, "prefill.sub_positions");

  TraceTensors out;
  out["tokens"] = TraceTensor{{total}, true, {}, tokens};
  if (!sub.empty())
    out["prefill.sub_positions"] = TraceTensor{{static_cast<int64_t>(sub.size())}, true, {}, sub};
  Recorder rec(cfg, S, T, sub, &out);
  auto state = model.new_sequence();
  state->frame.prompt_len = S;  // chunks reproduce the whole-prompt prefill
  const std::span<const int32_t> all(tokens);
  std::vector<float> logits(cfg.vocab_size);
  TraceTensor& prefill_logits = rec.f32("prefill.logits", {cfg.vocab_size});
  TraceTensor& decode_logits = rec.f32("decode.logits", {T, cfg.vocab_size});
  std::vector<float> main_prefill(S * stream), main_decode0(stream);

  if (options.teacher_forced) {
    std::vector<std::vector<float>> pre_in(L), dec_in(L);
    for (int64_t i = 0; i < L; ++i) {
      if (i > 0) pre_in[i] = read_f32(golden, layer_name("prefill.hidden", i - 1));
      if (i > 0 && T > 0) dec_in[i] = read_f32(golden, layer_name("decode.hidden", i - 1));
    }
    main_prefill = read_f32(golden, layer_name("prefill.hidden", L - 1));
    std::vector<float> main_dec =
        T > 0 ? read_f32(golden, layer_name("decode.hidden", L - 1)) : std::vector<float>();
    std::vector<float> x;
    for (int64_t c0 = 0; c0 < S; c0 += chunk) {
      const int64_t n = std::min(chunk, S - c0);
      const auto toks = all.subspan(c0, n);
      for (int64_t i = 0; i < L; ++i) {
        x.resize(n * stream);
        if (i == 0)
          model.embed(toks, x.data());
        else
          std::copy_n(pre_in[i].data() + c0 * stream, n * stream, x.data());
        model.run_block(*state, i, c0, toks, x.data(), &rec);
      }
    }
    model.head_logits(main_prefill.data() + (S - 1) * stream, prefill_logits.f32.data());
    for (int64_t t = 0; t < T; ++t) {
      const auto tok = all.subspan(S + t, 1);
      for (int64_t i = 0; i < L; ++i) {
        x.resize(stream);
        if (i == 0)
          model.embed(tok, x.data());
        else
          std::copy_n(dec_in[i].data() + t * stream, stream, x.data());
        model.run_block(*state, i, S + t, tok, x.data(), &rec);
      }
      model.head_logits(main_dec.data() + t * stream,
                        decode_logits.f32.data() + t * cfg.vocab_size);
    }
    if (T > 0) std::copy_n(main_dec.data(), stream, main_decode0.data());
  } else {
    std::vector<float> hidden;
    Model::ForwardOptions fo;
    fo.observer = &rec;
    fo.hidden = &hidden;
    for (int64_t c0 = 0; c0 < S; c0 += chunk) {
      const int64_t n = std::min(chunk, S - c0);
      model.forward(*state, all.subspan(c0, n), &logits, fo);
      std::copy(hidden.begin(), hidden.end(), main_prefill.begin() + c0 * stream);
    }
    std::copy(logits.begin(), logits.end(), prefill_logits.f32.begin());
    for (int64_t t = 0; t < T; ++t) {
      model.forward(*state, all.subspan(S + t, 1), &logits, fo);
      std::copy(logits.begin(), logits.end(), decode_logits.f32.begin() + t * cfg.vocab_size);
      if (t == 0) std::copy_n(hidden.data(), stream, main_decode0.data());
    }
  }

  // MTP (golden README §4.3): hidden state t with the embedding of token t+1.
  if (cfg.n_mtp_layers > 0 && T >= 1) {
    rec.mtp_prefill = true;
    std::vector<float> y, mtp_logits;
    for (int64_t c0 = 0; c0 < S; c0 += chunk) {
      const int64_t n = std::min(chunk, S - c0);
      model.mtp(*state, 0, main_prefill.data() + c0 * stream, all.subspan(c0 + 1, n), &y,
                c0 + n == S ? &mtp_logits : nullptr, &rec);
    }
    rec.f32("mtp.prefill.logits", {cfg.vocab_size}).f32 = mtp_logits;
    rec.f32("mtp.prefill.hidden_last", {cfg.hc_mult, cfg.dim})
        .f32.assign(y.end() - stream, y.end());
    rec.mtp_prefill = false;
    if (T >= 2) {
      model.mtp(*state, 0, main_decode0.data(), all.subspan(S + 1, 1), &y, &mtp_logits, &rec);
      rec.f32("mtp.decode.logits", {cfg.vocab_size}).f32 = mtp_logits;
      rec.f32("mtp.decode.hidden", {cfg.hc_mult, cfg.dim}).f32 = y;
    }
  }
  return out;
}

void write_trace(const TraceTensors& tensors, const std::string& path) {
  SafetensorsWriter w;
  for (const auto& [name, t] : tensors) {
    if (t.is_int)
      w.add_i32(name, t.shape, t.i32.data());
    else
      w.add_f32(name, t.shape, t.f32.data());
  }
  w.write(path);
}

namespace {

double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

int64_t argmax(const float* v, int64_t n) {
  return std::max_element(v, v + n) - v;
}

bool same_set(const int32_t* a, const int32_t* b, int64_t k) {
  std::set<int32_t> sa, sb;
  for (int64_t i = 0; i < k; ++i) {
    if (a[i] >= 0) sa.insert(a[i]);
    if (b[i] >= 0) sb.insert(b[i]);
  }
  return sa == sb;
}

// Rows of block `layer` to skip for near ties (golden README §7).
std::vector<bool> skipped_rows(const SafetensorsFile& golden, const char* phase, int64_t layer,
                               int64_t rows) {
  std::vector<bool> skip(rows, false);
  const std::string ig = str_cat(phase, ".indexer_gap.layer", layer);
  const std::string mg = str_cat(phase, ".moe_gap.layer", layer);
  if (golden.has(ig)) {
    const auto g = read_f32(golden, ig);
    for (int64_t r = 0; r < rows; ++r) skip[r] = skip[r] || g[r] < 1e-2;
  }
  if (golden.has(mg)) {
    const auto g = read_f32(golden, mg);
    for (int64_t r = 0; r < rows; ++r) skip[r] = skip[r] || g[r] < 1e-3;
  }
  return skip;
}

}  // namespace

TraceComparison compare_trace(const SafetensorsFile& golden, const SafetensorsFile& ours,
                              bool teacher_forced) {
  TraceComparison c;
  c.teacher_forced = teacher_forced;
  const int64_t S = golden.get("prefill.hidden.layer0").dim(0);
  const int64_t vocab = golden.get("prefill.logits").dim(0);
  const int64_t T = golden.has("decode.logits") ? golden.get("decode.logits").dim(0) : 0;
  int64_t L = 0;
  while (golden.has(layer_name("prefill.hidden", L))) ++L;
  const int64_t row = golden.get("prefill.hidden.layer0").numel() / S;

  // Logits: prefill then every decode step.
  {
    std::vector<float> g = read_f32(golden, "prefill.logits"), o = read_f32(ours, "prefill.logits");
    if (T > 0) {
      const auto gd = read_f32(golden, "decode.logits"), od = read_f32(ours, "decode.logits");
      g.insert(g.end(), gd.begin(), gd.end());
      o.insert(o.end(), od.begin(), od.end());
    }
    std::vector<double> rels;
    int64_t agree = 0;
    for (int64_t v = 0; v < 1 + T; ++v) {
      const double r = rel_l2(o.data() + v * vocab, g.data() + v * vocab, vocab);
      rels.push_back(r);
      c.head_logits_rel_max = std::max(c.head_logits_rel_max, r);
      const bool same = argmax(o.data() + v * vocab, vocab) == argmax(g.data() + v * vocab, vocab);
      agree += same;
      c.head_top1_all = c.head_top1_all && same;
    }
    std::sort(rels.begin(), rels.end());
    const size_t m = rels.size();
    c.logits_rel_median = m % 2 ? rels[m / 2] : 0.5 * (rels[m / 2 - 1] + rels[m / 2]);
    c.logits_top1_fraction = static_cast<double>(agree) / static_cast<double>(m);
  }

  std::vector<int32_t> sub;
  if (golden.has("prefill.sub_positions")) sub = read_i32(golden, "prefill.sub_positions");
  for (int64_t l = 0; l < L; ++l) {
    const auto skip_p = skipped_rows(golden, "prefill", l, S);
    const auto skip_d = skipped_rows(golden, "decode", l, T);
    c.skipped_prefill.push_back(std::count(skip_p.begin(), skip_p.end(), true));
    c.skipped_decode.push_back(std::count(skip_d.begin(), skip_d.end(), true));
    // Block outputs.
    {
      const auto g = read_f32(golden, layer_name("prefill.hidden", l));
      const auto o = read_f32(ours, layer_name("prefill.hidden", l));
      std::vector<float> gs, os;
      for (int64_t p = 0; p < S; ++p)
        if (!skip_p[p]) {
          gs.insert(gs.end(), g.begin() + p * row, g.begin() + (p + 1) * row);
          os.insert(os.end(), o.begin() + p * row, o.begin() + (p + 1) * row);
        }
      c.prefill_block_rel.push_back(rel_l2(os.data(), gs.data(), static_cast<int64_t>(gs.size())));
    }
    double worst = 0;
    if (T > 0) {
      const auto g = read_f32(golden, layer_name("decode.hidden", l));
      const auto o = read_f32(ours, layer_name("decode.hidden", l));
      for (int64_t t = 0; t < T; ++t)
        if (!skip_d[t])
          worst = std::max(worst, rel_l2(o.data() + t * row, g.data() + t * row, row));
    }
    c.decode_block_rel_max.push_back(worst);
    // Sub-layer outputs at the stored positions.
    for (const char* what : {"prefill.attn_out", "prefill.ffn_out"}) {
      const std::string name = layer_name(what, l);
      double rel = 0;
      if (golden.has(name)) {
        const auto g = read_f32(golden, name), o = read_f32(ours, name);
        const int64_t dim = golden.get(name).dim(1);
        std::vector<float> gs, os;
        for (size_t s = 0; s < sub.size(); ++s)
          if (!skip_p[sub[s]]) {
            gs.insert(gs.end(), g.begin() + s * dim, g.begin() + (s + 1) * dim);
            os.insert(os.end(), o.begin() + s * dim, o.begin() + (s + 1) * dim);
          }
        rel = rel_l2(os.data(), gs.data(), static_cast<int64_t>(gs.size()));
      }
      (std::string(what) == "prefill.attn_out" ? c.attn_rel : c.ffn_rel).push_back(rel);
    }
    // Selections, compared as sets on unskipped rows.
    auto agreement = [&](const char* kind) {
      int64_t rows = 0, same = 0;
      for (const char* phase : {"prefill", "decode"}) {
        const std::string name = str_cat(phase, ".", kind, ".layer", l);
        if (!golden.has(name)) continue;
        const auto g = read_i32(golden, name), o = read_i32(ours, name);
        const TensorView& t = golden.get(name);
        const int64_t n = t.dim(0), k = t.dim(1);
        const auto& skip = std::string(phase) == "prefill" ? skip_p : skip_d;
        for (int64_t r = 0; r < n; ++r) {
          if (skip[r]) continue;
          ++rows;
          same += same_set(g.data() + r * k, o.data() + r * k, k);
        }
      }
      return rows ? static_cast<double>(same) / static_cast<double>(rows) : -1.0;
    };
    c.indexer_agree.push_back(agreement("indexer_topk"));
    c.moe_agree.push_back(agreement("moe_experts"));
  }

  for (const char* name : {"mtp.prefill.logits", "mtp.decode.logits"}) {
    if (!golden.has(name)) continue;
    const auto g = read_f32(golden, name), o = read_f32(ours, name);
    c.mtp_rel_max = std::max(c.mtp_rel_max, rel_l2(o.data(), g.data(), vocab));
    c.mtp_top1 = c.mtp_top1 && argmax(o.data(), vocab) == argmax(g.data(), vocab);
  }
  for (const char* name : {"mtp.prefill.hidden_last", "mtp.decode.hidden"}) {
    if (!golden.has(name)) continue;
    const auto g = read_f32(golden, name), o = read_f32(ours, name);
    c.mtp_hidden_rel_max =
        std::max(c.mtp_hidden_rel_max, rel_l2(o.data(), g.data(), static_cast<int64_t>(g.size())));
  }
  return c;
}

std::string TraceComparison::summary() const {
  std::string s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: logits rel L2 max %.3g median %.3g, top-1 %.1f%%%s\n",
                teacher_forced ? "teacher-forced" : "free-running", head_logits_rel_max,
                logits_rel_median, 100 * logits_top1_fraction,
                head_top1_all ? " (all identical)" : "");
  s += buf;
  for (size_t l = 0; l < prefill_block_rel.size(); ++l) {
    std::snprintf(buf, sizeof buf,
                  "  block %zu: prefill %.3g, decode max %.3g, attn %.3g, ffn %.3g, indexer %s, "
                  "moe %.1f%%, skipped %lld+%lld rows\n",
                  l, prefill_block_rel[l], decode_block_rel_max[l], attn_rel[l], ffn_rel[l],
                  indexer_agree[l] < 0 ? "-" : str_cat(100 * indexer_agree[l], "%").c_str(),
                  100 * moe_agree[l], static_cast<long long>(skipped_prefill[l]),
                  static_cast<long long>(skipped_decode[l]));
    s += buf;
  }
  std::snprintf(buf, sizeof buf,
                "  mtp: logits rel L2 max %.3g, top-1 %s, hidden rel L2 max %.3g\n", mtp_rel_max,
                mtp_top1 ? "same" : "DIFFERENT", mtp_hidden_rel_max);
  s += buf;
  return s;
}

}  // namespace dsv4
