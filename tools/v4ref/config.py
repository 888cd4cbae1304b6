"""Model hyper-parameters, read from a Hugging Face V4 `config.json`.

Field names follow the reference `ModelArgs`; `load_args` maps the HF names onto them
(docs/v4-architecture.md §2.2). A file that already uses the ModelArgs names (the reference's
`inference/config.json`) is accepted too.
"""

import json
import os
from dataclasses import dataclass, field, fields
from typing import List


@dataclass
class ModelArgs:
    vocab_size: int = 129280
    dim: int = 4096
    moe_inter_dim: int = 2048
    n_layers: int = 43
    n_hash_layers: int = 3
    n_mtp_layers: int = 1
    n_heads: int = 64
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 6
    score_func: str = "sqrtsoftplus"
    route_scale: float = 1.5
    swiglu_limit: float = 10.0
    q_lora_rank: int = 1024
    head_dim: int = 512
    rope_head_dim: int = 64
    norm_eps: float = 1e-6
    o_groups: int = 8
    o_lora_rank: int = 1024
    window_size: int = 128
    compress_ratios: List[int] = field(default_factory=list)
    compress_rope_theta: float = 160000.0
    original_seq_len: int = 65536
    rope_theta: float = 10000.0
    rope_factor: float = 16.0
    beta_fast: int = 32
    beta_slow: int = 1
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    expert_dtype: str = "fp4"  # "fp4" (packed E2M1, scale per 32) or "fp8" (128x128 blocks)

    def validate(self):
        if len(self.compress_ratios) < self.n_layers + self.n_mtp_layers:
            raise ValueError(
                f"compress_ratios has {len(self.compress_ratios)} entries, need n_layers + "
                f"n_mtp_layers = {self.n_layers + self.n_mtp_layers}")
        for r in self.compress_ratios:
            if r not in (0,) and r < 2:
                raise ValueError(f"unsupported compress ratio {r}")
        if self.n_heads % self.o_groups:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by o_groups {self.o_groups}")
        if self.n_shared_experts != 1:
            raise ValueError(f"n_shared_experts must be 1 (got {self.n_shared_experts})")
        if self.head_dim <= self.rope_head_dim or self.rope_head_dim % 2:
            raise ValueError("rope_head_dim must be even and smaller than head_dim")
        if self.score_func not in ("sqrtsoftplus", "sigmoid", "softmax"):
            raise ValueError(f"unknown scoring_func {self.score_func}")
        return self


_HF_TO_ARGS = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "moe_intermediate_size": "moe_inter_dim",
    "num_hidden_layers": "n_layers",
    "num_hash_layers": "n_hash_layers",
    "num_nextn_predict_layers": "n_mtp_layers",
    "num_attention_heads": "n_heads",
    "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "num_experts_per_tok": "n_activated_experts",
    "scoring_func": "score_func",
    "routed_scaling_factor": "route_scale",
    "swiglu_limit": "swiglu_limit",
    "q_lora_rank": "q_lora_rank",
    "head_dim": "head_dim",
    "qk_rope_head_dim": "rope_head_dim",
    "rms_norm_eps": "norm_eps",
    "o_groups": "o_groups",
    "o_lora_rank": "o_lora_rank",
    "sliding_window": "window_size",
    "compress_ratios": "compress_ratios",
    "compress_rope_theta": "compress_rope_theta",
    "rope_theta": "rope_theta",
    "index_n_heads": "index_n_heads",
    "index_head_dim": "index_head_dim",
    "index_topk": "index_topk",
    "hc_mult": "hc_mult",
    "hc_sinkhorn_iters": "hc_sinkhorn_iters",
    "hc_eps": "hc_eps",
    "expert_dtype": "expert_dtype",
}


def args_from_dict(cfg: dict) -> ModelArgs:
    names = {f.name for f in fields(ModelArgs)}
    kw = {}
    if "hidden_size" in cfg:  # Hugging Face names
        for hf, ours in _HF_TO_ARGS.items():
            if hf in cfg and cfg[hf] is not None:
                kw[ours] = cfg[hf]
        rope = cfg.get("rope_scaling") or {}
        if rope:
            kw["rope_factor"] = rope.get("factor", ModelArgs.rope_factor)
            kw["original_seq_len"] = rope.get("original_max_position_embeddings",
                                              ModelArgs.original_seq_len)
            kw["beta_fast"] = rope.get("beta_fast", ModelArgs.beta_fast)
            kw["beta_slow"] = rope.get("beta_slow", ModelArgs.beta_slow)
        else:
            kw["original_seq_len"] = 0  # no YaRN
    else:  # reference ModelArgs names
        kw = {k: v for k, v in cfg.items() if k in names}
    if kw.get("expert_dtype") is None:
        kw["expert_dtype"] = "fp4"
    kw["compress_ratios"] = [int(r) for r in kw.get("compress_ratios", [])]
    return ModelArgs(**kw).validate()


def load_args(path: str) -> ModelArgs:
    """`path` is a checkpoint folder or a config.json file."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path) as f:
        return args_from_dict(json.load(f))
