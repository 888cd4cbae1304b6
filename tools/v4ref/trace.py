"""Write a trace of the Python reference model in the golden file's tensor format, or compare two
such files.

  python3 -m v4ref.trace run CHECKPOINT OUT.safetensors --tokens 0,17,4,... --prompt-len S
  python3 -m v4ref.trace run CHECKPOINT OUT.safetensors --like GOLDEN.safetensors [--prompt-len S]
  python3 -m v4ref.trace compare A.safetensors B.safetensors

`run` follows the golden protocol (tests/data/golden/README.md §4): a fresh model, prefill of
tokens[0:S] at start_pos 0, then one decode step per remaining token, then the MTP convention
(prefill on the final hidden states with tokens[1:S+1]; one decode step after decode step 0).
The output has the same tensor names, shapes and dtypes as golden*.safetensors, so a trace of the
C++ engine and of this model can be compared on any checkpoint (`compare` prints rel L2 per real
tensor and set agreement per selection tensor).
"""

import argparse
import os
import sys

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "v4ref"

from v4ref.model import Recorder, Transformer, load_model  # noqa: E402
from v4ref.quant import EXACT  # noqa: E402
from v4ref.safetensors_io import load_file, save_file  # noqa: E402

SUB_EDGE = 16  # sub-layer outputs are stored for the first and last 16 prompt positions


def sub_positions(S: int) -> torch.Tensor:
    if S <= 2 * SUB_EDGE:
        return torch.arange(S)
    return torch.cat([torch.arange(SUB_EDGE), torch.arange(S - SUB_EDGE, S)])


def trace(model: Transformer, tokens: torch.Tensor, S: int) -> dict:
    """Run the golden protocol on tokens [N] with prompt length S; return {name: tensor}."""
    args = model.args
    N = tokens.shape[0]
    T = N - S
    if S < 1 or T < 0:
        raise ValueError(f"prompt length {S} does not fit {N} tokens")
    ids = tokens.long()[None]
    out = {"tokens": tokens.to(torch.int32)}
    cache = model.new_cache(1)
    rec = Recorder()
    hidden = []
    with torch.no_grad():
        out["prefill.logits"] = model.forward_step(ids[:, :S], 0, cache, EXACT, rec, hidden)[0]
    sub = sub_positions(S)
    out["prefill.sub_positions"] = sub.to(torch.int32)
    for i in range(args.n_layers):
        out[f"prefill.hidden.layer{i}"] = hidden[i][0]
    for name, value in rec.values.items():
        phase, kind, tag = name.split(".")
        if kind in ("attn_out", "ffn_out"):
            value = value[sub]
        out[name] = value
    decode_vals = {}
    logits = []
    with torch.no_grad():
        for t in range(T):
            rec = Recorder()
            rec.prefix = "decode"
            hidden = []
            logits.append(model.forward_step(ids[:, S + t:S + t + 1], S + t, cache, EXACT, rec,
                                             hidden)[0])
            for i in range(args.n_layers):
                decode_vals.setdefault(f"decode.hidden.layer{i}", []).append(hidden[i][0, 0])
            for name, value in rec.values.items():
                kind = name.split(".")[1]
                if kind in ("attn_out", "ffn_out", "moe_weights"):
                    continue  # the golden format keeps these for the prefill only
                # one row per step: [k] for selections, a scalar for the top-k gaps
                row = value.reshape(()) if kind.endswith("_gap") else value.reshape(-1)
                decode_vals.setdefault(name, []).append(row)
    if T:
        out["decode.logits"] = torch.stack(logits)
        for name, values in decode_vals.items():
            out[name] = torch.stack(values)
    if len(model.mtp) and N >= S + 1:
        L = args.n_layers
        mcache = model.new_cache(1)
        rec = Recorder()
        with torch.no_grad():
            h = out[f"prefill.hidden.layer{L - 1}"][None]
            lg, mh = model.mtp_step(h, ids[:, 1:S + 1], 0, mcache, EXACT, rec)
        out["mtp.prefill.logits"] = lg[0]
        out["mtp.prefill.hidden_last"] = mh[0, -1]
        out["mtp.prefill.moe_experts"] = rec.values["prefill.moe_experts.mtp"]
        if T >= 2:
            with torch.no_grad():
                h = out[f"decode.hidden.layer{L - 1}"][0][None, None]
                lg, mh = model.mtp_step(h, ids[:, S + 1:S + 2], S, mcache, EXACT)
            out["mtp.decode.logits"] = lg[0]
            out["mtp.decode.hidden"] = mh[0, -1]
    # Golden dtypes: F32 for real values, I32 for ids.
    for name, value in out.items():
        out[name] = value.to(torch.int32) if not value.is_floating_point() else value.float()
    return out


def compare(a: dict, b: dict) -> int:
    """Print rel L2 (real tensors) or differing rows as sets (integer tensors); 1 if shapes or
    names differ."""
    status = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'first' if name in a else 'second'} file")
            status = 1
            continue
        x, y = a[name], b[name]
        if x.shape != y.shape:
            print(f"{name}: shape {list(x.shape)} vs {list(y.shape)}")
            status = 1
            continue
        if x.is_floating_point():
            x64, y64 = x.double(), y.double()
            finite = torch.isfinite(x64) & torch.isfinite(y64)
            den = y64[finite].norm().item()
            num = (x64[finite] - y64[finite]).norm().item()
            print(f"{name}: rel L2 {num / den if den else num:.4g}")
        else:
            rows = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
            other = y.reshape(rows.shape)
            differ = sum(set(r.tolist()) != set(o.tolist()) for r, o in zip(rows, other))
            print(f"{name}: {differ} of {rows.shape[0]} rows differ as sets")
    return status


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="trace the Python model")
    run.add_argument("checkpoint")
    run.add_argument("out")
    run.add_argument("--tokens", help="comma-separated token ids (prompt, then decode inputs)")
    run.add_argument("--like", help="take tokens (and the prompt length) from a golden file")
    run.add_argument("--prompt-len", type=int)
    run.add_argument("--threads", type=int, default=2)
    cmp_ = sub.add_parser("compare", help="compare two trace/golden files")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    opts = ap.parse_args(argv)
    if opts.cmd == "compare":
        return compare(load_file(opts.a), load_file(opts.b))
    torch.set_num_threads(opts.threads)
    if opts.like:
        g = load_file(opts.like)
        tokens = g["tokens"].long()
        S = opts.prompt_len
        if S is None:
            T = g["decode.logits"].shape[0] if "decode.logits" in g else 0
            S = tokens.shape[0] - T
    elif opts.tokens:
        tokens = torch.tensor([int(t) for t in opts.tokens.split(",") if t.strip()])
        S = opts.prompt_len if opts.prompt_len is not None else tokens.shape[0]
    else:
        ap.error("run needs --tokens or --like")
    model = load_model(opts.checkpoint)
    bad = tokens[(tokens < 0) | (tokens >= model.args.vocab_size)]
    if bad.numel():
        ap.error(f"token id {int(bad[0])} is outside the vocabulary (size {model.args.vocab_size})")
    result = trace(model, tokens, S)
    save_file(result, opts.out, metadata={"producer": "tools/v4ref/trace.py",
                                          "prompt_len": S})
    print(f"wrote {len(result)} tensors to {opts.out} (prompt {S}, {tokens.shape[0] - S} decode "
          "steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
