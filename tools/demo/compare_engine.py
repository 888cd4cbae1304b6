#!/usr/bin/python3
"""Teacher-forced agreement of the C++ engine with the PyTorch model on one checkpoint.

    compare_engine.py --model models/dsv4-demo --data out/demo/eval.npz --dsv4 build/dsv4 [--n 20]

For each of the first --n conversations, `dsv4 logits --all-positions` prefills the whole
conversation and applies the head to every position (teacher-forced, as the reference's prefill
computes it); with --path decode it instead feeds the first token as the prompt and the others
one at a time (the engine's decode path, whose bf16 rounding details are those of the
reference's decode calls, not of its prefill). tools/v4ref runs the same ids through its
exact-numerics causal forward (the reference's prefill). Prints top-1 agreement over all positions and over the trained
(assistant-output) positions, and the rel L2 of the logits, as JSON; with --min-top1 the exit
status is 1 when the agreement is lower.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from v4ref.model import load_model  # noqa: E402  pylint: disable=wrong-import-position
from v4ref.quant import EXACT  # noqa: E402  pylint: disable=wrong-import-position
from v4ref.safetensors_io import SafetensorsFile  # noqa: E402  pylint: disable=wrong-import-position


def engine_logits(dsv4: str, model_dir: str, ids, path: str = "prefill") -> torch.Tensor:
    """[len(ids), vocab]: logits after each token, from the engine."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        if path == "prefill":
            cmd = [dsv4, "logits", "--model", model_dir, "--all-positions", "--out", out,
                   "--prompt-ids", ",".join(str(int(t)) for t in ids)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"dsv4 logits failed: {proc.stderr.strip()}")
            return SafetensorsFile(out).get("positions").float()
        cmd = [dsv4, "logits", "--model", model_dir, "--prompt-ids", str(ids[0]), "--out", out]
        if len(ids) > 1:
            cmd += ["--decode-ids", ",".join(str(int(t)) for t in ids[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"dsv4 logits failed: {proc.stderr.strip()}")
        st = SafetensorsFile(out)
        rows = [st.get("prefill")] + [st.get(f"decode.{t}") for t in range(len(ids) - 1)]
        return torch.stack([r.float() for r in rows])


def compare(model_dir: str, dsv4: str, sequences, masks, threads: int = 2, path: str = "prefill"):
    torch.set_num_threads(threads)
    model = load_model(model_dir)
    agree = agree_trained = total = trained = 0
    num = den = 0.0
    for ids, mask in zip(sequences, masks):
        ref = engine_logits(dsv4, model_dir, ids, path)
        with torch.no_grad():
            ours, _ = model.forward_train(torch.as_tensor(ids)[None].long(), EXACT,
                                          with_mtp=False)
        ours = ours[0]
        same = ref.argmax(-1) == ours.argmax(-1)
        # the logits at position t predict token t+1: "trained" = token t+1 is assistant output
        tmask = torch.zeros(len(ids), dtype=torch.bool)
        tmask[:-1] = torch.as_tensor(mask[1:]).bool()
        agree += int(same.sum())
        total += len(ids)
        agree_trained += int(same[tmask].sum())
        trained += int(tmask.sum())
        num += float((ref - ours).square().sum())
        den += float(ours.square().sum())
    return {"engine_path": path, "sequences": len(sequences), "positions": total,
            "top1_agree": agree / max(1, total),
            "top1_agree_trained_positions": agree_trained / max(1, trained),
            "rel_l2": (num / max(den, 1e-30))**0.5}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prepare_data.py .npz")
    p.add_argument("--dsv4", required=True)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--min-top1", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--path", choices=["prefill", "decode"], default="prefill",
                   help="engine logits from one prefill (default) or from decode steps")
    args = p.parse_args(argv)
    d = np.load(args.data)
    off = d["offsets"]
    seqs, masks = [], []
    for i in range(len(off) - 1):
        if off[i + 1] - off[i] <= args.max_len:
            seqs.append(d["tokens"][off[i]:off[i + 1]].tolist())
            masks.append(d["mask"][off[i]:off[i + 1]])
        if len(seqs) == args.n:
            break
    res = compare(args.model, args.dsv4, seqs, masks, args.threads, args.path)
    print(json.dumps(res))
    if res["top1_agree"] < args.min_top1:
        sys.exit(1)


if __name__ == "__main__":
    main()
