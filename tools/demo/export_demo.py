#!/usr/bin/python3
"""Exports a train.py run as the bundled model: an official-format V4 checkpoint folder.

    export_demo.py --state out/demo/run/state.pt --tokenizer out/demo/tokenizer --out models/dsv4-demo

Writes config.json (V4/HF field names, bos/eos ids of the tokenizer), model.safetensors.index.json
and the shards via tools/v4ref/export.py (FP8 128x128 block linears, packed FP4 experts, BF16 /
F32 / I64 as released), plus the tokenizer files (tokenizer.json, tokenizer_config.json).
"""

import argparse
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from v4ref.config import ModelArgs  # noqa: E402  pylint: disable=wrong-import-position
from v4ref.export import save_checkpoint  # noqa: E402  pylint: disable=wrong-import-position
from v4ref.model import Transformer  # noqa: E402  pylint: disable=wrong-import-position

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def export(model: Transformer, out_dir: str, bos: int, eos: int, tokenizer_dir=None,
           shards: int = 1):
    # Stale shards of an earlier export with another shard count would confuse the loader.
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if name.endswith(".safetensors"):
                os.remove(os.path.join(out_dir, name))
    save_checkpoint(model, out_dir, shards=shards)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["bos_token_id"], cfg["eos_token_id"] = bos, eos
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    if tokenizer_dir:
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizer_dir, name)
            if not os.path.exists(src):
                raise SystemExit(f"{tokenizer_dir}: missing {name}")
            shutil.copyfile(src, os.path.join(out_dir, name))
        with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
            tok = json.load(f)
        ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok["added_tokens"]]
        if max(ids) >= model.args.vocab_size:
            raise SystemExit(f"tokenizer has id {max(ids)} but the model's vocab_size is "
                             f"{model.args.vocab_size}")
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    return total


def model_from_state(path: str):
    """(model, saved state) of a train.py state.pt."""
    st = torch.load(path)
    model = Transformer(ModelArgs(**st["config"]).validate())
    model.load_state_dict(st["model"])
    return model, st


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--state", required=True, help="train.py state.pt")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="folder with tokenizer.json + tokenizer_config.json")
    p.add_argument("--shards", type=int, default=1)
    args = p.parse_args(argv)
    model, st = model_from_state(args.state)
    total = export(model, args.out, st["bos_token_id"], st["eos_token_id"], args.tokenizer,
                   args.shards)
    print(json.dumps({"out": args.out, "step": st["step"], "bytes": total}))


if __name__ == "__main__":
    main()
