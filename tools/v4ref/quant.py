"""Numerics of the reference: bf16 rounding, FP8/FP4 fake quantisation, weight dequantisation.

All activations are float32 tensors that hold bf16 (or coarser) values; `Numerics` decides at
each rounding point whether to round exactly (inference, matches the reference bit for bit up to
summation order), to round with a straight-through estimator (training, gradient of identity), or
not to round at all (training in plain fp32).
"""

from dataclasses import dataclass

import torch

FP8_MAX = 448.0
FP4_MAX = 6.0


@dataclass(frozen=True)
class Numerics:
    """round: bf16 rounding points; quant: FP8/FP4 activation fake quantisation.
    Each is "exact" (reference inference), "ste" (straight-through, for QAT) or "off"."""
    round: str = "exact"
    quant: str = "exact"
    # Sparse attention as the reference kernel does it (tiles of 64 indices, online max,
    # bf16-rounded numerators). Off = one plain softmax (differentiable, same math).
    tiled_attention: bool = True

    @property
    def training(self) -> bool:
        return self.round != "exact" or self.quant != "exact"


EXACT = Numerics()
TRAIN_STE = Numerics(round="ste", quant="ste", tiled_attention=False)
TRAIN_FP32 = Numerics(round="off", quant="off", tiled_attention=False)


def _apply(x: torch.Tensor, fn, mode: str) -> torch.Tensor:
    if mode == "off":
        return x
    if mode == "ste":
        return x + (fn(x.detach()) - x).detach()
    return fn(x)


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def bf16(x: torch.Tensor, nm: Numerics = EXACT) -> torch.Tensor:
    """Round float32 to the nearest bf16 (ties to even) and back: the reference's `.to(bf16)`."""
    return _apply(x, _bf16, nm.round)


def round_to_grid(x: torch.Tensor, mant_bits: int, min_exp: int) -> torch.Tensor:
    """Round to the nearest value of a binary float format with `mant_bits` mantissa bits and
    smallest normal exponent `min_exp` (subnormals below it), ties to even. No clamping."""
    ax = x.abs()
    # Exponent and quantum straight from the float32 bits (frexp/ldexp cost a training step 20 %);
    # zeros and float32 subnormals read as exponent -127 and clamp to min_exp like any tiny value.
    e = torch.clamp((ax.view(torch.int32) >> 23) - 127, min=min_exp)
    quantum = ((e - mant_bits + 127) << 23).view(torch.float32)
    return torch.copysign(torch.round(ax / quantum) * quantum, x)


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest float8_e4m3fn value (x already clamped to +-448)."""
    return round_to_grid(x, 3, -6)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest float4_e2m1 value (x already clamped to +-6)."""
    return round_to_grid(x, 1, 0)


def pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    """2^ceil(log2(x)) for positive normal x, exactly (the kernel's bit trick)."""
    # Adding all-ones to the mantissa carries into the exponent unless the mantissa is zero
    # (x already a power of two); clearing the mantissa then leaves 2^ceil(log2 x).
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x7FFFFF) & ~0x7FFFFF).view(torch.float32)


def _blockwise(x: torch.Tensor, block: int):
    """[..., n] -> [..., ceil(n/block), block]; a partial last block is zero-padded (zeros do not
    change its amax). The reference requires n % block == 0; this only widens the domain."""
    n = x.shape[-1]
    pad = (-n) % block
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:-1], pad)], dim=-1)
    return x.reshape(*x.shape[:-1], (n + pad) // block, block)


def _unblock(xb: torch.Tensor, shape) -> torch.Tensor:
    return xb.reshape(*shape[:-1], -1)[..., :shape[-1]]


def _fp8_fake(x: torch.Tensor, block: int) -> torch.Tensor:
    xb = _blockwise(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp(min=1e-4)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP8_MAX, dtype=torch.float32))
    q = round_e4m3(torch.clamp(xb / s, -FP8_MAX, FP8_MAX))
    return _unblock(q * s, x.shape)


def _fp4_fake(x: torch.Tensor, block: int) -> torch.Tensor:
    xb = _blockwise(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp(min=FP4_MAX * 2.0**-126)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP4_MAX, dtype=torch.float32))
    q = round_e2m1(torch.clamp(xb / s, -FP4_MAX, FP4_MAX))
    return _unblock(q * s, x.shape)


def fp8_fake_quant(x: torch.Tensor, block: int, nm: Numerics = EXACT) -> torch.Tensor:
    """`act_quant(x, block, "ue8m0")` followed by dequantisation: per contiguous block of the last
    dim, scale 2^ceil(log2(amax/448)) (amax >= 1e-4), e4m3 round-to-nearest-even. The result is
    exactly representable in bf16."""
    return _apply(x, lambda t: _fp8_fake(t, block), nm.quant)


def fp4_fake_quant(x: torch.Tensor, block: int, nm: Numerics = EXACT) -> torch.Tensor:
    """`fp4_act_quant(x, block)` followed by dequantisation (scale 2^ceil(log2(amax/6)))."""
    return _apply(x, lambda t: _fp4_fake(t, block), nm.quant)


# ---------------------------------------------------------------------------------------------
# Weights


def dequant_fp8_block(weight: torch.Tensor, scale: torch.Tensor, block: int = 128) -> torch.Tensor:
    """W[r, c] * scale[r // block, c // block] (exact in float32)."""
    out, inp = weight.shape
    rows = torch.arange(out) // block
    cols = torch.arange(inp) // block
    if scale.shape[0] != (out + block - 1) // block or scale.shape[1] != (inp + block - 1) // block:
        raise ValueError(f"scale shape {list(scale.shape)} does not match weight {list(weight.shape)}"
                         f" with {block}x{block} blocks")
    return weight * scale[rows][:, cols]


def dequant_fp4(values: torch.Tensor, scale: torch.Tensor, block: int = 32) -> torch.Tensor:
    """E2M1 values [out, in] times one scale per `block` inputs of a row."""
    out, inp = values.shape
    if scale.shape[0] != out or scale.shape[1] * block != inp:
        raise ValueError(f"FP4 scale shape {list(scale.shape)} does not match logical weight "
                         f"{[out, inp]} with blocks of {block}")
    return values * scale.repeat_interleave(block, dim=1)


def quantize_weight_fp8(w: torch.Tensor, block: int = 128):
    """Inverse of dequant_fp8_block for export: per 128x128 block scale 2^ceil(log2(amax/448)),
    e4m3 values. Returns (values_on_e4m3_grid, scale)."""
    out, inp = w.shape
    ro, ci = (out + block - 1) // block, (inp + block - 1) // block
    padded = w.new_zeros(ro * block, ci * block)
    padded[:out, :inp] = w
    blocks = padded.reshape(ro, block, ci, block)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-4)
    scale = pow2_ceil(amax / FP8_MAX)
    q = round_e4m3(torch.clamp(blocks / scale[:, None, :, None], -FP8_MAX, FP8_MAX))
    return q.reshape(ro * block, ci * block)[:out, :inp].contiguous(), scale


def quantize_weight_fp4(w: torch.Tensor, block: int = 32):
    """Per row and 32 inputs: scale 2^ceil(log2(amax/6)), E2M1 values. Returns (values, scale)."""
    out, inp = w.shape
    wb = w.reshape(out, inp // block, block)
    amax = wb.abs().amax(-1).clamp(min=FP4_MAX * 2.0**-126)
    scale = pow2_ceil(amax / FP4_MAX)
    q = round_e2m1(torch.clamp(wb / scale[..., None], -FP4_MAX, FP4_MAX))
    return q.reshape(out, inp), scale


def hadamard_matrix(n: int) -> torch.Tensor:
    """Sylvester (natural order) Hadamard matrix of size n (a power of two), entries +-1."""
    if n & (n - 1):
        raise ValueError(f"Hadamard size {n} is not a power of two")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h
