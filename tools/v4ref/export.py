"""Write a `Transformer` as a checkpoint folder in the official Hugging Face V4 format.

  save_checkpoint(model, out_dir, shards=3)

produces config.json (HF names), model-0000k-of-0000n.safetensors and
model.safetensors.index.json, with the storage types of the released instruct checkpoints
(docs/v4-architecture.md §4): FP8 linears as F8_E4M3 + F8_E8M0 128x128 block scales (wo_a too),
routed experts as packed E2M1 (I8) + F8_E8M0 scales per 32 inputs (or FP8 blocks when
expert_dtype is "fp8"), norms / embeddings / head / gate / compressor projections / weights_proj
as BF16, hyper-connection parameters, sinks, ape and gate bias as F32, tid2eid as I64.

Weights are quantised here (power-of-two scales 2^ceil(log2(amax/max))); this is exact for weights
that came from such a checkpoint, and the usual post-training quantisation for fp32 masters.
"""

import json
import os

import torch

from .model import QLinear, Transformer
from .quant import quantize_weight_fp4, quantize_weight_fp8
from .safetensors_io import pack_e2m1, save_file

_E2M1_CODES = {0.0: 0, 0.5: 1, 1.0: 2, 1.5: 3, 2.0: 4, 3.0: 5, 4.0: 6, 6.0: 7}


def _checkpoint_name(ours: str) -> str:
    """Inverse of model._our_name."""
    if ours.startswith("final."):
        return ours[len("final."):]
    if ours.startswith("mtp.") and ".head." in ours:
        head, rest = ours.split(".head.", 1)
        return f"{head}.{rest}"
    return ours


def _e2m1_codes(values: torch.Tensor) -> torch.Tensor:
    mag = values.abs()
    codes = torch.zeros(values.shape, dtype=torch.uint8)
    for value, code in _E2M1_CODES.items():
        codes[mag == value] = code
    covered = torch.zeros(values.shape, dtype=torch.bool)
    for value in _E2M1_CODES:
        covered |= mag == value
    if not bool(covered.all()):
        raise ValueError("value not on the E2M1 grid")
    return codes | (torch.signbit(values) & (mag > 0)).to(torch.uint8) << 3


def hf_config(model: Transformer) -> dict:
    a = model.args
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": a.vocab_size,
        "hidden_size": a.dim,
        "moe_intermediate_size": a.moe_inter_dim,
        "num_hidden_layers": a.n_layers,
        "num_hash_layers": a.n_hash_layers,
        "num_nextn_predict_layers": a.n_mtp_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": 1,
        "n_routed_experts": a.n_routed_experts,
        "n_shared_experts": a.n_shared_experts,
        "num_experts_per_tok": a.n_activated_experts,
        "scoring_func": a.score_func,
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "routed_scaling_factor": a.route_scale,
        "swiglu_limit": a.swiglu_limit,
        "hidden_act": "silu",
        "q_lora_rank": a.q_lora_rank,
        "head_dim": a.head_dim,
        "qk_rope_head_dim": a.rope_head_dim,
        "rms_norm_eps": a.norm_eps,
        "o_groups": a.o_groups,
        "o_lora_rank": a.o_lora_rank,
        "sliding_window": a.window_size,
        "compress_ratios": list(a.compress_ratios),
        "compress_rope_theta": a.compress_rope_theta,
        "rope_theta": a.rope_theta,
        "rope_scaling": {"type": "yarn", "factor": a.rope_factor,
                         "original_max_position_embeddings": a.original_seq_len,
                         "beta_fast": a.beta_fast, "beta_slow": a.beta_slow},
        "index_n_heads": a.index_n_heads,
        "index_head_dim": a.index_head_dim,
        "index_topk": a.index_topk,
        "hc_mult": a.hc_mult,
        "hc_sinkhorn_iters": a.hc_sinkhorn_iters,
        "hc_eps": a.hc_eps,
        "expert_dtype": a.expert_dtype,
        "max_position_embeddings": 1048576,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "torch_dtype": "bfloat16",
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "scale_fmt": "ue8m0",
                                "weight_block_size": [128, 128]},
    }


def checkpoint_tensors(model: Transformer):
    """{checkpoint name: (tensor, safetensors dtype)} in the released storage types."""
    modules = dict(model.named_modules())
    out = {}
    state = dict(model.named_parameters())
    state.update({n: b for n, b in model.named_buffers() if not n.endswith("hadamard")})
    for ours, value in state.items():
        value = value.detach().float() if value.is_floating_point() else value.detach()
        name = _checkpoint_name(ours)
        owner_name, leaf = ours.rsplit(".", 1) if "." in ours else ("", ours)
        owner = modules.get(owner_name)
        quantised = isinstance(owner, QLinear) and leaf == "weight" and (
            owner.kind in ("fp8", "fp4") or owner_name.endswith("attn.wo_a"))
        if quantised and owner.kind == "fp4":
            q, scale = quantize_weight_fp4(value, 32)
            packed = torch.from_numpy(pack_e2m1(_e2m1_codes(q).numpy()))
            out[name] = (packed, "I8")
            out[name[:-len("weight")] + "scale"] = (scale, "F8_E8M0")
        elif quantised:
            q, scale = quantize_weight_fp8(value, 128)
            out[name] = (q, "F8_E4M3")
            out[name[:-len("weight")] + "scale"] = (scale, "F8_E8M0")
        elif not value.is_floating_point():
            out[name] = (value.to(torch.int64), "I64")
        elif leaf == "weight":  # norms, embed, head, gate, compressor, weights_proj
            out[name] = (value, "BF16")
        else:  # hc_*, attn_sink, ape, gate.bias
            out[name] = (value, "F32")
    return out


def save_checkpoint(model: Transformer, out_dir: str, shards: int = 1):
    os.makedirs(out_dir, exist_ok=True)
    tensors = checkpoint_tensors(model)
    names = sorted(tensors)
    shards = max(1, min(shards, len(names)))
    weight_map, total = {}, 0
    for k in range(shards):
        part = names[k::shards]
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n][0] for n in part}, os.path.join(out_dir, fname),
                  metadata={"format": "pt"}, dtypes={n: tensors[n][1] for n in part})
        for n in part:
            weight_map[n] = fname
            t, dtype = tensors[n]
            total += t.numel() * {"F32": 4, "BF16": 2, "I64": 8}.get(dtype, 1)
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(model), f, indent=2)
