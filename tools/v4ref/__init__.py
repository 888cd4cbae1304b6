"""v4ref: a readable PyTorch model of the DeepSeek-V4 architecture.

It loads checkpoints in the official Hugging Face format and reproduces the numerics of the
official reference `inference/model.py` (FP8/FP4 fake quantisation emulated exactly in fp32, bf16
rounding at the reference's points). The same modules also run a differentiable, batched,
full-sequence causal forward for training (see `model.Numerics`).

Only Debian's python3-torch (1.13, CPU) and numpy are needed.
"""

from .config import ModelArgs, load_args
from .model import Numerics, Transformer, load_model

__all__ = ["ModelArgs", "load_args", "Numerics", "Transformer", "load_model"]
