"""DeepSeek-V4 in plain PyTorch, following the semantics of the official `inference/model.py`.

Two ways to run the same modules:
* inference (`Transformer.forward_step` with a `Cache`, `Transformer.mtp_step`): prefill from
  position 0, then one token per call, exactly like the reference driver; `Numerics()` (the
  default) keeps every bf16 rounding point and the FP8/FP4 fake quantisation of the reference.
* training (`Transformer.forward_train`): batched, causal, whole sequence, no cache, differentiable;
  pass `TRAIN_STE` (rounding and quantisation with straight-through gradients) or `TRAIN_FP32`.
  The causal full-sequence forward *is* the reference's prefill, so both modes share one code path.

Tensors are float32 throughout; values that the reference stores in bf16 are rounded to bf16 at
the same points (`bf16()`), so "bf16" below means "float32 holding a bf16 value".
Shapes: B batch, S tokens of this call, D dim, H heads, hd head_dim, rd rope dims, nhc hc_mult.
"""

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import quant
from .config import ModelArgs, load_args
from .quant import EXACT, Numerics, bf16, fp4_fake_quant, fp8_fake_quant
from .safetensors_io import SafetensorsFile, unpack_e2m1

__all__ = ["Numerics", "Transformer", "Cache", "Recorder", "load_model"]

ATTN_TILE = 64  # the sparse attention kernel walks the index list in tiles of 64


# ---------------------------------------------------------------------------------------------
# Recording of intermediate values (trace files, golden comparisons)


class Recorder:
    """Collects named tensors during a forward call. `prefix` is "prefill" or "decode"; modules
    call `put(kind, tag, value)` and the name becomes f"{prefix}.{kind}.{tag}"."""

    def __init__(self):
        self.prefix = "prefill"
        self.values: Dict[str, torch.Tensor] = {}

    def put(self, kind: str, tag: str, value: torch.Tensor):
        self.values[f"{self.prefix}.{kind}.{tag}"] = value.detach().clone()


def topk_gap(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(s_k - s_{k+1}) / |s_1| per row over the finite scores; +inf when there is no (k+1)-th
    competitor; 0 marks an exact tie at the selection boundary."""
    rows = scores.reshape(-1, scores.shape[-1]) if scores.numel() else scores.reshape(-1, 0)
    out = torch.full((rows.shape[0],), float("inf"))
    if rows.shape[-1] == 0:
        return out.reshape(scores.shape[:-1])
    srt = torch.sort(rows, dim=-1, descending=True).values
    finite = torch.isfinite(srt).sum(-1)
    for r in range(rows.shape[0]):
        if finite[r] > k:
            top = srt[r, 0].abs()
            out[r] = (srt[r, k - 1] - srt[r, k]) / top if top > 0 else 0.0
    return out.reshape(scores.shape[:-1])


# ---------------------------------------------------------------------------------------------
# Building blocks


def _f32(x: torch.Tensor) -> torch.Tensor:
    """The hyper-connection mixes (a dot product over nhc*D inputs) are evaluated in float64 and
    rounded once to float32. The correctly rounded value agrees with the reference's fp32 result
    more often than another fp32 summation order does. Everything after it (Sinkhorn, weighted
    sums) mirrors the reference's fp32 expressions, which matched the golden data best (measured
    per block: fp64 there, or an fp32 mix, flip more bf16 outputs; see docs/python-reference.md)."""
    return x.to(torch.float32)


class QLinear(nn.Module):
    """y = x @ W^T with the reference's dispatch on the stored weight type:
    "fp8"/"fp4": activation FP8 fake-quantised per 128 along K, fp32 accumulation, bf16 output;
    "bf16": plain bf16 linear (bf16 output); "f32": fp32 linear (fp32 output, no rounding).
    The weight is held dequantised in fp32 (exact for FP8/FP4 weights)."""

    def __init__(self, in_features: int, out_features: int, kind: str):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))

    def forward(self, x: torch.Tensor, nm: Numerics) -> torch.Tensor:
        if self.kind in ("fp8", "fp4"):
            return bf16(fp8_fake_quant(x, 128, nm) @ self.weight.t(), nm)
        if self.kind == "bf16":
            return bf16(x @ self.weight.t(), nm)
        return x @ self.weight.t()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, nm: Numerics) -> torch.Tensor:
        # fp32 with an fp32 weight applied after the normalisation, bf16 output, exactly the
        # reference's expression (float64 here flips some bf16 outputs relative to the golden).
        y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)
        return bf16(self.weight * y, nm)


def rope_freqs(args: ModelArgs, compressed: bool) -> torch.Tensor:
    """Per-pair inverse frequencies [rd/2] (fp32). Compressed layers (ratio > 0) use
    compress_rope_theta with YaRN; window-only layers use rope_theta without YaRN."""
    dim = args.rope_head_dim
    base = args.compress_rope_theta if compressed else args.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if compressed and args.original_seq_len > 0:
        def correction_dim(rotations):
            return dim * math.log(args.original_seq_len / (rotations * 2 * math.pi)) / (
                2 * math.log(base))
        low = max(math.floor(correction_dim(args.beta_fast)), 0)
        high = min(math.ceil(correction_dim(args.beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        smooth = 1 - ramp
        freqs = freqs / args.rope_factor * (1 - smooth) + freqs * smooth
    return freqs


class Rope:
    """cos/sin tables of one layer for arbitrary positions (angle = pos * freq in fp32)."""

    def __init__(self, freqs: torch.Tensor):
        self.freqs = freqs

    def table(self, positions: torch.Tensor):
        angles = positions.to(torch.float32)[:, None] * self.freqs[None, :]
        return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, nm: Numerics,
               inverse: bool = False) -> torch.Tensor:
    """Interleaved (adjacent-pair) rotation of the last rd dims of x; x [..., S, (heads,) rd],
    cos/sin [S, rd/2] broadcast over the head dim if present. fp32 math, bf16 result."""
    rd = cos.shape[-1] * 2
    head, tail = x[..., :-rd], x[..., -rd:]
    pairs = tail.reshape(*tail.shape[:-1], rd // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    extra = a.dim() - cos.dim()  # broadcast [S, rd/2] against [B, S, (H,) rd/2]
    if extra == 2:  # [B, S, H, rd/2]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
    else:
        c, s = cos[None], sin[None]
    if inverse:
        s = -s
    real = a * c - b * s
    imag = a * s + b * c
    rotated = bf16(torch.stack([real, imag], dim=-1).reshape(tail.shape), nm)
    return torch.cat([head, rotated], dim=-1)


def sparse_attention(q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, idx: torch.Tensor,
                     scale: float, nm: Numerics) -> torch.Tensor:
    """o[b,s,h] = sum_j softmax_j(q.kv[idx_j] * scale, sink) kv[idx_j] over the index list
    idx[b,s,:] (-1 = masked); kv is both key and value; the sink enters the denominator only.

    Exact mode reproduces the reference kernel: tiles of 64 indices in list order, online running
    max, numerators exp(z - max) rounded to bf16 before multiplying V, fp32 denominator."""
    B, S, H, hd = q.shape
    K = idx.shape[-1]
    if not nm.tiled_attention:
        # Training: score every row of kv with one GEMM and mask all but the listed ones. The
        # same function as gathering the K listed rows (lists never repeat a row), but ~3x
        # faster on CPU: the gather's tiny per-query matmuls and its scattered backward dominated
        # a training step.
        N = kv.shape[1]
        listed = torch.zeros(B, S, N + 1, dtype=torch.bool)
        listed.scatter_(2, torch.where(idx >= 0, idx, N), True)  # column N collects the -1s
        z = torch.einsum("bshd,bnd->bshn", q, kv) * scale
        z = z.masked_fill(~listed[:, :, None, :N], float("-inf"))
        z = torch.cat([z, sink.view(1, 1, H, 1).expand(B, S, H, 1)], dim=-1)
        p = torch.softmax(z, dim=-1)[..., :N]
        return bf16(torch.einsum("bshn,bnd->bshd", p, kv), nm)

    out = torch.empty_like(q)
    rows = 128  # query rows per chunk, to bound the gathered [rows, 64, hd] tile
    for s0 in range(0, S, rows):
        qs = q[:, s0:s0 + rows]
        ids = idx[:, s0:s0 + rows]
        n = qs.shape[1]
        run_max = torch.full((B, n, H), float("-inf"))
        denom = torch.zeros(B, n, H)
        acc = torch.zeros(B, n, H, hd)
        for t0 in range(0, K, ATTN_TILE):
            tile = ids[..., t0:t0 + ATTN_TILE]
            valid = tile >= 0
            g = kv[torch.arange(B)[:, None, None], tile.clamp(min=0)]  # [B,n,T,hd]
            z = torch.einsum("bshd,bskd->bshk", qs, g) * scale
            z = z.masked_fill(~valid[:, :, None, :], float("-inf"))
            new_max = torch.maximum(run_max, z.amax(-1))
            # A fully masked prefix keeps max = -inf; exp(-inf - -inf) must count as 0, not NaN.
            safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
            rescale = torch.exp(run_max - safe_max)
            p = torch.exp(z - safe_max[..., None])
            denom = denom * rescale + p.sum(-1)
            acc = acc * rescale[..., None] + torch.einsum("bshk,bskd->bshd", bf16(p, nm), g)
            run_max = new_max
        denom = denom + torch.exp(sink.view(1, 1, H) - run_max)
        out[:, s0:s0 + rows] = bf16(acc / denom[..., None], nm)
    return out


# ---------------------------------------------------------------------------------------------
# Caches


@dataclass
class CompressorState:
    """Pending tokens of a compressor between calls (reference kv_state / score_state)."""
    kv: torch.Tensor
    score: torch.Tensor


@dataclass
class LayerCache:
    window: torch.Tensor                       # [B, window_size, hd] ring, slot = pos % window
    compressed: Optional[torch.Tensor] = None  # [B, n_entries, hd]
    comp_state: Optional[CompressorState] = None
    index_keys: Optional[torch.Tensor] = None  # [B, n_entries, index_head_dim] (CSA only)
    index_state: Optional[CompressorState] = None


@dataclass
class Cache:
    layers: List[LayerCache] = field(default_factory=list)
    mtp: List[LayerCache] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Compressor, indexer, attention


class Compressor(nn.Module):
    """Learned gated pooling of `ratio` consecutive tokens into one KV entry (CSA: overlapping
    windows of 2*ratio tokens, HCA: non-overlapping). Projections and pooling are fp32 in the
    reference (float64 here in exact mode, see `_project`)."""

    def __init__(self, args: ModelArgs, ratio: int, head_dim: int, rotate: bool):
        super().__init__()
        self.ratio = ratio
        self.head_dim = head_dim
        self.rope_dim = args.rope_head_dim
        self.overlap = ratio == 4
        self.rotate = rotate  # indexer keys: Hadamard + FP4; main KV: FP8 on the NoPE dims
        coff = 2 if self.overlap else 1
        self.ape = nn.Parameter(torch.zeros(ratio, coff * head_dim))
        self.wkv = QLinear(args.dim, coff * head_dim, "f32")
        self.wgate = QLinear(args.dim, coff * head_dim, "f32")
        self.norm = RMSNorm(head_dim, args.norm_eps)
        if rotate:
            self.register_buffer("hadamard", quant.hadamard_matrix(head_dim), persistent=False)

    def new_state(self, batch: int) -> CompressorState:
        coff = 2 if self.overlap else 1
        shape = (batch, coff * self.ratio, coff * self.head_dim)
        return CompressorState(torch.zeros(shape, dtype=torch.float64),
                               torch.full(shape, float("-inf"), dtype=torch.float64))

    def _project(self, x: torch.Tensor, nm: Numerics):
        """kv, score and ape in the working precision. The reference pools in fp32, then rounds
        the pooled value to bf16; many pooled values lie within a few fp32 ulps of a bf16
        rounding boundary, so exact mode evaluates projections and pooling in float64 (the
        correctly rounded value): block 3 of tiny-a then matches the golden data bit for bit in
        247 instead of 209 of 302 prompt rows. Training stays in fp32."""
        if nm.round == "exact":
            x = x.double()
            return (x @ self.wkv.weight.double().t(), x @ self.wgate.weight.double().t(),
                    self.ape.double())
        return self.wkv(x, nm), self.wgate(x, nm), self.ape

    def _finish(self, pooled: torch.Tensor, positions: torch.Tensor, rope: Rope,
                nm: Numerics) -> torch.Tensor:
        """norm, RoPE at the block start position, then the cache's quantisation."""
        kv = self.norm(bf16(pooled.float(), nm), nm)
        cos, sin = rope.table(positions)
        kv = apply_rope(kv, cos, sin, nm)
        if self.rotate:
            kv = bf16((kv @ self.hadamard) * self.head_dim**-0.5, nm)
            return fp4_fake_quant(kv, 32, nm)
        nope = fp8_fake_quant(kv[..., :-self.rope_dim], 64, nm)
        return torch.cat([nope, kv[..., -self.rope_dim:]], dim=-1)

    def prefill(self, x: torch.Tensor, rope: Rope, nm: Numerics,
                state: Optional[CompressorState]) -> Optional[torch.Tensor]:
        """x: attn_norm output [B,S,D] of positions 0..S-1. Returns the S//ratio entries (or None)
        and saves the unfinished tokens into `state` for decode."""
        B, S, _ = x.shape
        r, d = self.ratio, self.head_dim
        kv, score, ape = self._project(x, nm)
        cutoff = S - S % r
        if state is not None:
            with torch.no_grad():
                if self.overlap and cutoff >= r:
                    state.kv[:, :r] = kv[:, cutoff - r:cutoff]
                    state.score[:, :r] = score[:, cutoff - r:cutoff] + ape
                rem = S - cutoff
                if rem:
                    off = r if self.overlap else 0
                    state.kv[:, off:off + rem] = kv[:, cutoff:]
                    state.score[:, off:off + rem] = score[:, cutoff:] + ape[:rem]
        n = cutoff // r
        if n == 0:
            return None
        kv = kv[:, :cutoff].reshape(B, n, r, -1)
        score = score[:, :cutoff].reshape(B, n, r, -1) + ape
        if self.overlap:
            # Entry i pools the first-half features of block i-1 and the second half of block i.
            prev_kv = torch.cat([torch.zeros_like(kv[:, :1, :, :d]), kv[:, :-1, :, :d]], dim=1)
            prev_sc = torch.cat([torch.full_like(score[:, :1, :, :d], float("-inf")),
                                 score[:, :-1, :, :d]], dim=1)
            kv = torch.cat([prev_kv, kv[..., d:]], dim=2)
            score = torch.cat([prev_sc, score[..., d:]], dim=2)
        pooled = (kv * torch.softmax(score, dim=2)).sum(dim=2)
        return self._finish(pooled, torch.arange(n) * r, rope, nm)

    def decode(self, x: torch.Tensor, pos: int, rope: Rope, nm: Numerics,
               state: CompressorState) -> Optional[torch.Tensor]:
        """One token at `pos`; returns the new entry [B,1,hd] when pos closes a block."""
        r, d = self.ratio, self.head_dim
        kv, score, ape = self._project(x, nm)
        kv, score = kv[:, 0], score[:, 0] + ape[pos % r]
        done = (pos + 1) % r == 0
        if self.overlap:
            state.kv[:, r + pos % r] = kv
            state.score[:, r + pos % r] = score
            if not done:
                return None
            kvs = torch.cat([state.kv[:, :r, :d], state.kv[:, r:, d:]], dim=1)
            scs = torch.cat([state.score[:, :r, :d], state.score[:, r:, d:]], dim=1)
            pooled = (kvs * torch.softmax(scs, dim=1)).sum(dim=1, keepdim=True)
            state.kv[:, :r] = state.kv[:, r:].clone()
            state.score[:, :r] = state.score[:, r:].clone()
        else:
            state.kv[:, pos % r] = kv
            state.score[:, pos % r] = score
            if not done:
                return None
            pooled = (state.kv * torch.softmax(state.score, dim=1)).sum(dim=1, keepdim=True)
        return self._finish(pooled, torch.tensor([pos + 1 - r]), rope, nm)


class Indexer(nn.Module):
    """Lightning indexer of CSA layers: picks the top-k compressed entries per query from bf16
    scores sum_h w_h relu(q_h . k), with q and k Hadamard-rotated and FP4 fake-quantised."""

    def __init__(self, args: ModelArgs, ratio: int, tag: str):
        super().__init__()
        self.tag = tag
        self.n_heads = args.index_n_heads
        self.head_dim = args.index_head_dim
        self.rope_dim = args.rope_head_dim
        self.topk = args.index_topk
        self.ratio = ratio
        self.wq_b = QLinear(args.q_lora_rank, self.n_heads * self.head_dim, "fp8")
        self.weights_proj = QLinear(args.dim, self.n_heads, "bf16")
        self.compressor = Compressor(args, ratio, self.head_dim, rotate=True)
        # The reference multiplies a bf16 tensor by this python float (computed in fp32).
        self.weight_scale = float(torch.tensor(self.head_dim**-0.5 * self.n_heads**-0.5,
                                               dtype=torch.float32))

    def _queries(self, qr, positions, rope, nm):
        B, S, _ = qr.shape
        q = self.wq_b(qr, nm).reshape(B, S, self.n_heads, self.head_dim)
        cos, sin = rope.table(positions)
        q = apply_rope(q, cos, sin, nm)
        q = bf16((q @ self.compressor.hadamard) * self.head_dim**-0.5, nm)
        return fp4_fake_quant(q, 32, nm)

    def _scores(self, x, q, keys, nm):
        w = bf16(self.weights_proj(x, nm) * self.weight_scale, nm)  # [B,S,nh]
        s = bf16(torch.einsum("bshd,btd->bsht", q, keys), nm)
        s = bf16(torch.relu(s) * w[..., None], nm)
        return bf16(s.sum(dim=2), nm)  # [B,S,T]

    def prefill(self, x, qr, rope, nm, cache: Optional[LayerCache], rec: Optional[Recorder]):
        B, S, _ = x.shape
        pos = torch.arange(S)
        q = self._queries(qr, pos, rope, nm)
        keys = self.compressor.prefill(x, rope, nm, cache.index_state if cache else None)
        if keys is None:
            keys = x.new_zeros(B, 0, self.head_dim)
        if cache is not None:
            cache.index_keys = keys.detach()
        T = keys.shape[1]
        visible = (pos + 1)[:, None] // self.ratio  # entries j < (t+1)//ratio are visible
        mask = torch.arange(T)[None, :] >= visible
        with torch.no_grad():
            scores = self._scores(x, q, keys, nm).masked_fill(mask, float("-inf"))
            k = min(self.topk, T)
            top = scores.topk(k, dim=-1).indices
            top = torch.where(top >= visible[None], torch.full_like(top, -1), top + S)
        if rec is not None:
            padded = torch.full((S, self.topk), -1, dtype=torch.long)
            padded[:, :k] = top[0]
            rec.put("indexer_topk", self.tag, padded)
            rec.put("indexer_gap", self.tag, topk_gap(scores[0], self.topk))
        return top

    def decode(self, x, qr, pos, rope, nm, cache: LayerCache, offset: int, rec):
        q = self._queries(qr, torch.tensor([pos]), rope, nm)
        entry = self.compressor.decode(x, pos, rope, nm, cache.index_state)
        if entry is not None:
            cache.index_keys = torch.cat([cache.index_keys, entry], dim=1)
        keys = cache.index_keys
        scores = self._scores(x, q, keys, nm)
        k = min(self.topk, keys.shape[1])
        top = scores.topk(k, dim=-1).indices + offset
        if rec is not None:
            padded = torch.full((1, self.topk), -1, dtype=torch.long)
            padded[:, :k] = top[0]
            rec.put("indexer_topk", self.tag, padded)
            rec.put("indexer_gap", self.tag, topk_gap(scores[0], self.topk))
        return top


class Attention(nn.Module):
    """Shared-KV MQA over a sliding window plus (ratio > 0) compressed entries, with attention
    sinks, low-rank q and a grouped low-rank output projection."""

    def __init__(self, args: ModelArgs, layer_id: int, tag: str):
        super().__init__()
        self.tag = tag
        self.n_heads = args.n_heads
        self.head_dim = args.head_dim
        self.rope_dim = args.rope_head_dim
        self.n_groups = args.o_groups
        self.o_lora_rank = args.o_lora_rank
        self.window = args.window_size
        self.ratio = args.compress_ratios[layer_id]
        self.eps = args.norm_eps
        self.scale = self.head_dim**-0.5
        H, hd = args.n_heads, args.head_dim
        self.attn_sink = nn.Parameter(torch.zeros(H))
        self.wq_a = QLinear(args.dim, args.q_lora_rank, "fp8")
        self.q_norm = RMSNorm(args.q_lora_rank, args.norm_eps)
        self.wq_b = QLinear(args.q_lora_rank, H * hd, "fp8")
        self.wkv = QLinear(args.dim, hd, "fp8")
        self.kv_norm = RMSNorm(hd, args.norm_eps)
        # wo_a is dequantised to bf16 at load and used in a bf16 einsum.
        self.wo_a = QLinear(H * hd // args.o_groups, args.o_groups * args.o_lora_rank, "bf16")
        self.wo_b = QLinear(args.o_groups * args.o_lora_rank, args.dim, "fp8")
        self.compressor = Compressor(args, self.ratio, hd, rotate=False) if self.ratio else None
        self.indexer = Indexer(args, self.ratio, tag) if self.ratio == 4 else None
        self.rope = Rope(rope_freqs(args, compressed=self.ratio > 0))

    def new_cache(self, batch: int) -> LayerCache:
        c = LayerCache(window=torch.zeros(batch, self.window, self.head_dim))
        if self.compressor is not None:
            c.compressed = torch.zeros(batch, 0, self.head_dim)
            c.comp_state = self.compressor.new_state(batch)
        if self.indexer is not None:
            c.index_keys = torch.zeros(batch, 0, self.indexer.head_dim)
            c.index_state = self.indexer.compressor.new_state(batch)
        return c

    def _head_norm(self, q, nm):
        """Per-head RMS normalisation without weight. The reference does it as plain bf16 tensor
        arithmetic (`q *= rsqrt(q.square().mean(-1) + eps)` on bf16), so exact mode runs those
        very torch bf16 ops: emulating each op in fp32 + rounding gave different bits on some
        tokens (torch's bf16 rsqrt/mul kernels), worth 1e-2 in the block output."""
        if nm.round == "exact":
            qb = q.to(torch.bfloat16)
            qb = qb * torch.rsqrt(qb.square().mean(-1, keepdim=True) + self.eps)
            return qb.to(torch.float32)
        ms = bf16(bf16(q.square(), nm).mean(-1, keepdim=True), nm)
        return bf16(q * bf16(torch.rsqrt(ms + self.eps), nm), nm)

    def _q_kv(self, x, positions, nm):
        B, S, _ = x.shape
        qr = self.q_norm(self.wq_a(x, nm), nm)
        q = self.wq_b(qr, nm).reshape(B, S, self.n_heads, self.head_dim)
        q = self._head_norm(q, nm)
        cos, sin = self.rope.table(positions)
        q = apply_rope(q, cos, sin, nm)
        kv = self.kv_norm(self.wkv(x, nm), nm)
        kv = apply_rope(kv, cos, sin, nm)
        kv = torch.cat([fp8_fake_quant(kv[..., :-self.rope_dim], 64, nm),
                        kv[..., -self.rope_dim:]], dim=-1)
        return qr, q, kv, cos, sin

    def _output(self, o, cos, sin, nm):
        B, S = o.shape[:2]
        o = apply_rope(o, cos, sin, nm, inverse=True)  # de-rotate with the query position
        o = o.reshape(B, S, self.n_groups, -1)
        wo_a = self.wo_a.weight.reshape(self.n_groups, self.o_lora_rank, -1)
        o = bf16(torch.einsum("bsgd,grd->bsgr", o, wo_a), nm)
        return self.wo_b(o.flatten(2), nm)

    def prefill(self, x, nm: Numerics, cache: Optional[LayerCache], rec: Optional[Recorder]):
        """Causal attention of positions 0..S-1 (also the training forward when cache is None)."""
        B, S, _ = x.shape
        w = self.window
        pos = torch.arange(S)
        qr, q, kv, cos, sin = self._q_kv(x, pos, nm)
        # Window list of query t: max(0, t-w+1) .. t, padded with -1 to min(S, w) columns.
        win = (pos[:, None] - w + 1).clamp(min=0) + torch.arange(min(S, w))[None, :]
        win = torch.where(win > pos[:, None], torch.full_like(win, -1), win)
        idx = win[None].expand(B, -1, -1)
        if self.ratio:
            if self.indexer is not None:
                cidx = self.indexer.prefill(x, qr, self.rope, nm, cache, rec)
            else:
                n = S // self.ratio
                j = torch.arange(n)[None, :].expand(S, n)
                cidx = torch.where(j >= (pos + 1)[:, None] // self.ratio, torch.full_like(j, -1),
                                   j + S)[None].expand(B, -1, -1)
            idx = torch.cat([idx, cidx], dim=-1)
        if cache is not None:
            keep = min(S, w)
            cache.window[:, (pos[-keep:] % w)] = kv[:, -keep:].detach()
        all_kv = kv
        if self.compressor is not None:
            entries = self.compressor.prefill(x, self.rope, nm, cache.comp_state if cache else None)
            if entries is not None:
                all_kv = torch.cat([kv, entries], dim=1)
                if cache is not None:
                    cache.compressed = entries.detach()
        o = sparse_attention(q, all_kv, self.attn_sink, idx, self.scale, nm)
        return self._output(o, cos, sin, nm)

    def decode(self, x, pos: int, nm: Numerics, cache: LayerCache, rec: Optional[Recorder]):
        """One token (S == 1) at absolute position `pos` > 0."""
        B = x.shape[0]
        w = self.window
        qr, q, kv, cos, sin = self._q_kv(x, torch.tensor([pos]), nm)
        if pos >= w - 1:  # the whole ring, oldest first
            slot = pos % w
            win = torch.cat([torch.arange(slot + 1, w), torch.arange(0, slot + 1)])
        else:
            win = torch.cat([torch.arange(pos + 1), torch.full((w - pos - 1,), -1)])
        idx = win[None, None].expand(B, 1, -1)
        if self.indexer is not None:
            cidx = self.indexer.decode(x, qr, pos, self.rope, nm, cache, w, rec)
            idx = torch.cat([idx, cidx], dim=-1)
        elif self.ratio:
            n = (pos + 1) // self.ratio
            idx = torch.cat([idx, (torch.arange(n) + w)[None, None].expand(B, 1, -1)], dim=-1)
        cache.window[:, pos % w] = kv[:, 0]
        if self.compressor is not None:
            entry = self.compressor.decode(x, pos, self.rope, nm, cache.comp_state)
            if entry is not None:
                cache.compressed = torch.cat([cache.compressed, entry], dim=1)
            all_kv = torch.cat([cache.window, cache.compressed], dim=1)
        else:
            all_kv = cache.window
        o = sparse_attention(q, all_kv, self.attn_sink, idx, self.scale, nm)
        return self._output(o, cos, sin, nm)


# ---------------------------------------------------------------------------------------------
# MoE


class Gate(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.topk = args.n_activated_experts
        self.score_func = args.score_func
        self.route_scale = args.route_scale
        self.hash = layer_id < args.n_hash_layers
        self.weight = nn.Parameter(torch.zeros(args.n_routed_experts, args.dim))
        if self.hash:
            self.register_buffer("tid2eid", torch.zeros(args.vocab_size, self.topk,
                                                        dtype=torch.long))
            self.bias = None
        else:
            self.bias = nn.Parameter(torch.zeros(args.n_routed_experts))

    def forward(self, x: torch.Tensor, ids: torch.Tensor):
        """x [N,D] bf16, ids [N] -> (weights [N,k] fp32, indices [N,k], selection scores)."""
        scores = x @ self.weight.t()  # fp32
        if self.score_func == "softmax":
            scores = scores.softmax(dim=-1)
        elif self.score_func == "sigmoid":
            scores = scores.sigmoid()
        else:
            scores = F.softplus(scores).sqrt()
        select = scores if self.bias is None else scores + self.bias  # bias: selection only
        if self.hash:
            indices = self.tid2eid[ids]
        else:
            indices = select.detach().topk(self.topk, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.score_func != "softmax":
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.route_scale, indices, select


class Expert(nn.Module):
    """SwiGLU with clamping (gate <= limit, |up| <= limit); routed experts apply their routing
    weight before w2 (fp32), then w2 sees the bf16 product."""

    def __init__(self, dim: int, inter: int, kind: str, limit: float):
        super().__init__()
        self.w1 = QLinear(dim, inter, kind)
        self.w2 = QLinear(inter, dim, kind)
        self.w3 = QLinear(dim, inter, kind)
        self.limit = limit

    def forward(self, x, nm, weights=None):
        gate = self.w1(x, nm)
        up = self.w3(x, nm)
        if self.limit > 0:
            up = torch.clamp(up, min=-self.limit, max=self.limit)
            gate = torch.clamp(gate, max=self.limit)
        h = F.silu(gate) * up
        if weights is not None:
            h = weights * h
        return self.w2(bf16(h, nm), nm)


class MoE(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int, tag: str):
        super().__init__()
        self.tag = tag
        self.gate = Gate(args, layer_id)
        kind = "fp4" if args.expert_dtype == "fp4" else "fp8"
        self.experts = nn.ModuleList([Expert(args.dim, args.moe_inter_dim, kind, args.swiglu_limit)
                                      for _ in range(args.n_routed_experts)])
        self.shared_experts = Expert(args.dim, args.moe_inter_dim, "fp8", args.swiglu_limit)

    def forward(self, x, ids, nm, rec: Optional[Recorder]):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, indices, select = self.gate(x, ids.reshape(-1))
        if rec is not None:
            rec.put("moe_experts", self.tag, indices)
            rec.put("moe_weights", self.tag, weights)
            if not self.gate.hash:
                rec.put("moe_gap", self.tag, topk_gap(select, self.gate.topk))
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):  # fp32 accumulation in expert order
            rows, slot = torch.where(indices == e)
            if rows.numel() == 0:
                continue
            y = y.index_add(0, rows, expert(x[rows], nm, weights[rows, slot, None]))
        y = y + self.shared_experts(x, nm)
        return bf16(y, nm).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Blocks with manifold-constrained hyper-connections


def sinkhorn_split(mix, scale, base, nhc: int, iters: int, eps: float):
    """mix [...,(2+nhc)*nhc] -> pre [...,nhc], post [...,nhc], comb [...,nhc,nhc] (fp32)."""
    pre = torch.sigmoid(mix[..., :nhc] * scale[0] + base[:nhc]) + eps
    post = 2 * torch.sigmoid(mix[..., nhc:2 * nhc] * scale[1] + base[nhc:2 * nhc])
    c = mix[..., 2 * nhc:] * scale[2] + base[2 * nhc:]
    c = c.reshape(*c.shape[:-1], nhc, nhc)
    c = torch.softmax(c, dim=-1) + eps  # first row normalisation
    c = c / (c.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(-1, keepdim=True) + eps)
        c = c / (c.sum(-2, keepdim=True) + eps)
    return pre, post, c


def hc_weights(x, fn, eps):
    """mixes = (flatten(x) @ fn^T) * rsqrt(mean(flatten(x)^2) + eps), fp32. x [B,S,nhc,D]."""
    xf = x.flatten(2).double()
    mix = F.linear(xf, fn.double()) * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return _f32(mix)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int, tag: str):
        super().__init__()
        self.tag = tag
        self.eps = args.norm_eps
        self.hc_eps = args.hc_eps
        self.nhc = args.hc_mult
        self.iters = args.hc_sinkhorn_iters
        self.attn = Attention(args, layer_id, tag)
        self.ffn = MoE(args, layer_id, tag)
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        mix, width = (2 + self.nhc) * self.nhc, self.nhc * args.dim
        for part in ("attn", "ffn"):
            setattr(self, f"hc_{part}_fn", nn.Parameter(torch.zeros(mix, width)))
            setattr(self, f"hc_{part}_base", nn.Parameter(torch.zeros(mix)))
            setattr(self, f"hc_{part}_scale", nn.Parameter(torch.zeros(3)))

    def _hc_pre(self, x, part, nm):
        mix = hc_weights(x, getattr(self, f"hc_{part}_fn"), self.eps)
        pre, post, comb = sinkhorn_split(mix, getattr(self, f"hc_{part}_scale"),
                                         getattr(self, f"hc_{part}_base"), self.nhc, self.iters,
                                         self.hc_eps)
        return bf16(torch.sum(pre.unsqueeze(-1) * x, dim=2), nm), post, comb

    @staticmethod
    def _hc_post(y, residual, post, comb, nm):
        # new stream j = post[j] * y + sum_i comb[i][j] * residual[i] (fp32, stored in bf16)
        mixed = torch.sum(comb.unsqueeze(-1) * residual.unsqueeze(-2), dim=2)
        return bf16(post.unsqueeze(-1) * y.unsqueeze(-2) + mixed, nm)

    def forward(self, x, ids, nm: Numerics, pos: int = 0, cache: Optional[LayerCache] = None,
                rec: Optional[Recorder] = None):
        """x [B,S,nhc,D] residual streams. pos == 0: prefill / training; pos > 0: one decode
        token (needs cache)."""
        residual = x
        h, post, comb = self._hc_pre(x, "attn", nm)
        h = self.attn_norm(h, nm)
        if pos == 0:
            h = self.attn.prefill(h, nm, cache, rec)
        else:
            h = self.attn.decode(h, pos, nm, cache, rec)
        if rec is not None:
            rec.put("attn_out", self.tag, h.reshape(-1, h.shape[-1]))
        x = self._hc_post(h, residual, post, comb, nm)
        residual = x
        h, post, comb = self._hc_pre(x, "ffn", nm)
        h = self.ffn(self.ffn_norm(h, nm), ids, nm, rec)
        if rec is not None:
            rec.put("ffn_out", self.tag, h.reshape(-1, h.shape[-1]))
        return self._hc_post(h, residual, post, comb, nm)


class Head(nn.Module):
    """hc mixing of the streams (sigmoid weights), final RMSNorm, fp32 logits."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.eps = args.norm_eps
        self.hc_eps = args.hc_eps
        self.hc_head_fn = nn.Parameter(torch.zeros(args.hc_mult, args.hc_mult * args.dim))
        self.hc_head_base = nn.Parameter(torch.zeros(args.hc_mult))
        self.hc_head_scale = nn.Parameter(torch.zeros(1))
        self.norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, head_weight, nm):
        mix = hc_weights(x, self.hc_head_fn, self.eps)
        pre = torch.sigmoid(mix * self.hc_head_scale + self.hc_head_base) + self.hc_eps
        y = bf16(torch.sum(pre.unsqueeze(-1) * x, dim=2), nm)
        return self.norm(y, nm) @ head_weight.t()


class MTPBlock(Block):
    """Block that predicts token t+2 from the main model's streams at t and the embedding of
    token t+1; shares embed and head with the main model."""

    def __init__(self, args: ModelArgs, layer_id: int, tag: str):
        super().__init__(args, layer_id, tag)
        self.e_proj = QLinear(args.dim, args.dim, "fp8")
        self.h_proj = QLinear(args.dim, args.dim, "fp8")
        self.enorm = RMSNorm(args.dim, args.norm_eps)
        self.hnorm = RMSNorm(args.dim, args.norm_eps)
        self.head = Head(args)  # holds the MTP's own norm and hc_head_* (names match the checkpoint)

    def forward_mtp(self, h, emb, ids, nm, pos=0, cache=None, rec=None):
        e = self.e_proj(self.enorm(emb, nm), nm)
        x = bf16(e[:, :, None, :] + self.h_proj(self.hnorm(h, nm), nm), nm)
        return super().forward(x, ids, nm, pos, cache, rec)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList([Block(args, i, f"layer{i}") for i in range(args.n_layers)])
        self.final = Head(args)
        self.head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.mtp = nn.ModuleList([MTPBlock(args, args.n_layers + i, "mtp" if i == 0 else f"mtp{i}")
                                  for i in range(args.n_mtp_layers)])

    # -- inference -------------------------------------------------------------------------------

    def new_cache(self, batch: int = 1) -> Cache:
        return Cache(layers=[b.attn.new_cache(batch) for b in self.layers],
                     mtp=[b.attn.new_cache(batch) for b in self.mtp])

    def embed_streams(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed.weight[ids]
        return h[:, :, None, :].expand(-1, -1, self.args.hc_mult, -1)

    def logits(self, h: torch.Tensor, nm: Numerics = EXACT) -> torch.Tensor:
        """Streams [B,S,nhc,D] -> logits [B,S,vocab] (fp32)."""
        return self.final(h, self.head.weight, nm)

    def run_layers(self, ids, start_pos, cache, nm, rec=None, hidden_out=None):
        h = self.embed_streams(ids)
        for i, layer in enumerate(self.layers):
            h = layer(h, ids, nm, start_pos, cache.layers[i] if cache else None, rec)
            if hidden_out is not None:
                hidden_out.append(h)
        return h

    @torch.no_grad()
    def forward_step(self, ids: torch.Tensor, start_pos: int, cache: Cache, nm: Numerics = EXACT,
                     rec: Optional[Recorder] = None, hidden_out: Optional[list] = None):
        """Reference `Transformer.forward`: prefill (start_pos 0, any S) or one decode token;
        returns the logits of the last position [B, vocab]."""
        if start_pos > 0 and ids.shape[1] != 1:
            raise ValueError("decode takes exactly one token per call (as the reference)")
        h = self.run_layers(ids, start_pos, cache, nm, rec, hidden_out)
        return self.logits(h[:, -1:], nm)[:, 0]

    @torch.no_grad()
    def mtp_step(self, h: torch.Tensor, ids: torch.Tensor, start_pos: int, cache: Cache,
                 nm: Numerics = EXACT, rec: Optional[Recorder] = None, depth: int = 0):
        """MTP block `depth` on main streams h [B,S,nhc,D] and the next tokens ids [B,S];
        returns (last-position logits [B,vocab], MTP block output streams)."""
        block = self.mtp[depth]
        emb = self.embed.weight[ids]
        out = block.forward_mtp(h, emb, ids, nm, start_pos, cache.mtp[depth] if cache else None,
                                rec)
        return block.head(out[:, -1:], self.head.weight, nm)[:, 0], out

    # -- training --------------------------------------------------------------------------------

    @torch.no_grad()
    def init_random_(self, seed: int = 0, std: float = 0.02):
        """Random initialisation for training from scratch: normal(0, std) projections and
        embeddings, unit norms, hyper-connections starting near an even mix, zero sinks / ape /
        gate bias, and a random hash table (distinct experts per token)."""
        gen = torch.Generator().manual_seed(seed)
        a = self.args
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif leaf in ("attn_sink", "ape", "bias") or "_base" in leaf:
                p.zero_()
            elif "_scale" in leaf:
                p.fill_(1.0)
            elif "_fn" in leaf:
                p.normal_(0.0, std / math.sqrt(a.hc_mult), generator=gen)
            else:
                p.normal_(0.0, std, generator=gen)
        for module in self.modules():
            if isinstance(module, Gate) and module.hash:
                scores = torch.rand(a.vocab_size, a.n_routed_experts, generator=gen)
                module.tid2eid.copy_(scores.topk(module.topk, dim=-1).indices)
        for module in self.modules():  # snap weights to the grids their storage type implies
            if isinstance(module, QLinear) and module.kind in ("fp8", "fp4"):
                module.weight.copy_(bf16(module.weight))

    def forward_train(self, ids: torch.Tensor, nm: Numerics = quant.TRAIN_STE,
                      with_mtp: bool = True):
        """Causal full-sequence forward of a batch ids [B,S] (differentiable).
        Returns logits [B,S,vocab] and, with_mtp, MTP logits [B,S-1,vocab] for position t
        predicting token t+2 (uses ids[:, 1:] as the MTP input tokens)."""
        h = self.run_layers(ids, 0, None, nm)
        logits = self.logits(h, nm)
        if not with_mtp or not len(self.mtp):
            return logits, None
        block = self.mtp[0]
        nxt = ids[:, 1:]
        out = block.forward_mtp(h[:, :-1], self.embed.weight[nxt], nxt, nm)
        return logits, block.head(out, self.head.weight, nm)


# ---------------------------------------------------------------------------------------------
# Checkpoint loading


def _checkpoint_files(path: str) -> Dict[str, SafetensorsFile]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = {}
        opened = {}
        for name, shard in weight_map.items():
            if shard not in opened:
                opened[shard] = SafetensorsFile(os.path.join(path, shard))
            files[name] = opened[shard]
        return files
    single = os.path.join(path, "model.safetensors")
    if not os.path.exists(single):
        raise FileNotFoundError(f"{path}: no model.safetensors.index.json or model.safetensors")
    st = SafetensorsFile(single)
    return {name: st for name in st.keys()}


def _our_name(name: str) -> str:
    """Checkpoint name -> parameter name in Transformer."""
    if name.startswith("hc_head_"):
        return "final." + name
    if name == "norm.weight":
        return "final.norm.weight"
    if name.startswith("mtp."):
        parts = name.split(".", 2)
        rest = parts[2]
        if rest.startswith("hc_head_") or rest.startswith("norm."):
            return f"mtp.{parts[1]}.head.{rest}"
    return name


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of an HF-format V4 checkpoint, dequantised to float32 (exact); scale tensors
    are folded into their weights. Returns {checkpoint name: tensor}."""
    files = _checkpoint_files(path)
    out = {}
    for name, st in files.items():
        if name.endswith(".scale"):
            continue
        dtype = st.dtype(name)
        scale_name = name[:-len(".weight")] + ".scale" if name.endswith(".weight") else None
        if dtype == "I8" and scale_name in files:  # packed E2M1 experts, scale per 32 inputs
            values = torch.from_numpy(unpack_e2m1(st.raw(name)))
            t = quant.dequant_fp4(values, files[scale_name].get(scale_name), 32)
        elif dtype == "F8_E4M3":
            if scale_name not in files:
                raise ValueError(f"{name}: F8_E4M3 weight without {scale_name}")
            t = quant.dequant_fp8_block(st.get(name), files[scale_name].get(scale_name), 128)
        else:
            t = st.get(name)
        out[name] = t
    return out


def load_model(path: str) -> Transformer:
    """Build the model of an HF checkpoint folder and load its weights (strict name check).
    The linear kinds follow the stored dtypes, as the reference's `linear()` dispatch does."""
    args = load_args(path)
    model = Transformer(args)
    files = _checkpoint_files(path)
    tensors = read_checkpoint(path)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    modules = dict(model.named_modules())
    expected = {n for n in params if not n.endswith("hadamard")}
    seen = set()
    for name, t in tensors.items():
        ours = _our_name(name)
        if ours not in params:
            raise ValueError(f"{path}: unexpected tensor {name} (not part of this config)")
        target = params[ours]
        if tuple(target.shape) != tuple(t.shape):
            raise ValueError(f"{path}: {name} has shape {list(t.shape)}, config expects "
                             f"{list(target.shape)}")
        with torch.no_grad():
            target.copy_(t.to(target.dtype))
        seen.add(ours)
        owner = modules.get(ours.rsplit(".", 1)[0])
        if isinstance(owner, QLinear) and owner.kind in ("fp8", "fp4"):
            stored = files[name].dtype(name)
            owner.kind = {"F8_E4M3": "fp8", "I8": "fp4"}.get(stored, "bf16")
    missing = sorted(expected - seen)
    if missing:
        raise ValueError(f"{path}: missing tensors for {len(missing)} parameters, e.g. "
                         f"{missing[:5]}")
    model.eval()
    return model
