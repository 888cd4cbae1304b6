"""Check the PyTorch reference model against the golden data of the official reference.

Usage: /usr/bin/python3 -m v4ref.check_golden [GOLDEN_DIR] [--scenario long|short]...
(run from tools/, or with tools/ on PYTHONPATH). GOLDEN_DIR holds checkpoint/, manifest.json and
the golden safetensors files; the default is tests/data/golden/tiny-a of this repository.

The protocol is the one the C++ engine must pass (tests/data/golden/README.md §4 and §7):
* head only: golden final hidden states -> logits, rel L2 <= 1e-5 per vector, same top-1;
* teacher forcing per block: block i gets the golden input (prefill and every decode step), its
  caches are built from those inputs; prefill rel L2 <= 2e-2 over the unskipped rows, each
  unskipped decode step <= 0.1, attn_out / ffn_out at the stored positions <= 8e-2, indexer and
  MoE selections identical as sets on >= 99 % of the unskipped rows. Rows are skipped (near ties)
  when indexer_gap < 1e-2 or moe_gap < 1e-3;
* MTP from the golden main hidden states: rel L2 <= 2e-2 and same top-1;
* free running (sanity): median logits rel L2 <= 0.15 and top-1 agreement >= 65 %.
Every measured figure is printed; the exit status is 1 if any check fails, 77 if torch is missing.
"""

import argparse
import json
import os
import sys
import time

try:
    import torch
except ImportError:  # ctest maps 77 to "skipped"
    print(f"SKIP: {sys.executable} cannot import torch (install python3-torch)")
    sys.exit(77)

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "v4ref"

from v4ref.model import Recorder, load_model  # noqa: E402
from v4ref.quant import EXACT  # noqa: E402
from v4ref.safetensors_io import load_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_GOLDEN = os.path.join(REPO, "tests", "data", "golden", "tiny-a")

TOL = {
    "head": 1e-5,
    "prefill_block": 2e-2,
    "decode_step": 0.1,
    "sublayer": 8e-2,
    "selection_rows": 0.99,
    "mtp": 2e-2,
    "free_median": 0.15,
    "free_top1": 0.65,
    "indexer_gap": 1e-2,
    "moe_gap": 1e-3,
}


def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    den = ref.norm().item()
    num = (ours.double() - ref).norm().item()
    return num / den if den > 0 else num


class Report:
    def __init__(self):
        self.failures = []

    def check(self, name: str, value: float, limit: float, ok: bool):
        status = "ok" if ok else "FAIL"
        print(f"  {status:4} {name}: {value:.4g} (limit {limit:g})")
        if not ok:
            self.failures.append(f"{name}: {value:.4g} (limit {limit:g})")

    def at_most(self, name, value, limit):
        self.check(name, value, limit, value <= limit)

    def at_least(self, name, value, limit):
        self.check(name, value, limit, value >= limit)


def same_sets(ours: torch.Tensor, ref: torch.Tensor, rows) -> int:
    """Number of rows (among `rows`) whose selections differ as sets."""
    bad = 0
    for r in rows:
        if set(ours[r].tolist()) != set(ref[r].tolist()):
            bad += 1
    return bad


def skipped_rows(g, phase: str, layer: int, n: int):
    """Row indices of near ties of block `layer` (skipped by the protocol)."""
    skip = torch.zeros(n, dtype=torch.bool)
    name = f"{phase}.indexer_gap.layer{layer}"
    if name in g:
        skip |= g[name] < TOL["indexer_gap"]
    name = f"{phase}.moe_gap.layer{layer}"
    if name in g:
        skip |= g[name] < TOL["moe_gap"]
    return skip


def check_head(model, g, S, rep: Report):
    L = model.args.n_layers
    hidden = [g[f"prefill.hidden.layer{L - 1}"][S - 1]] + list(g[f"decode.hidden.layer{L - 1}"])
    refs = [g["prefill.logits"]] + list(g["decode.logits"])
    worst, agree = 0.0, 0
    with torch.no_grad():
        for h, ref in zip(hidden, refs):
            logits = model.logits(h[None, None], EXACT)[0, 0]
            worst = max(worst, rel_l2(logits, ref))
            agree += int(logits.argmax() == ref.argmax())
    rep.at_most("head-only logits rel L2 (max)", worst, TOL["head"])
    rep.check("head-only top-1 agreement", agree, len(refs), agree == len(refs))


def check_blocks(model, g, S, T, tokens, rep: Report):
    args = model.args
    sub_pos = g["prefill.sub_positions"].long()
    for i, block in enumerate(model.layers):
        tag = f"layer{i}"
        cache = block.attn.new_cache(1)
        rec = Recorder()
        if i == 0:
            x = model.embed_streams(tokens[None, :S])
        else:
            x = g[f"prefill.hidden.layer{i - 1}"][None]
        with torch.no_grad():
            out = block(x, tokens[None, :S], EXACT, 0, cache, rec)[0]
        skip = skipped_rows(g, "prefill", i, S)
        keep = (~skip).nonzero().flatten()
        ref = g[f"prefill.hidden.layer{i}"]
        print(f" block {i} (ratio {args.compress_ratios[i]}), prefill: {int(skip.sum())} of {S} rows "
              "skipped as near ties")
        rep.at_most(f"block {i} prefill rel L2", rel_l2(out[keep], ref[keep]), TOL["prefill_block"])
        sub_keep = [j for j, p in enumerate(sub_pos.tolist()) if not skip[p]]
        pos_keep = sub_pos[sub_keep]
        for kind in ("attn_out", "ffn_out"):
            ours = rec.values[f"prefill.{kind}.{tag}"][pos_keep]
            rep.at_most(f"block {i} prefill {kind} rel L2", rel_l2(ours, g[f"prefill.{kind}.{tag}"][
                sub_keep]), TOL["sublayer"])
        rows = keep.tolist()
        for kind in ("indexer_topk", "moe_experts"):
            name = f"prefill.{kind}.{tag}"
            if name in g:
                bad = same_sets(rec.values[name], g[name].long(), rows)
                frac = 1 - bad / max(len(rows), 1)
                rep.at_least(f"block {i} prefill {kind} identical rows ({bad} differ)", frac,
                             TOL["selection_rows"])
        if T == 0:
            continue
        dskip = skipped_rows(g, "decode", i, T)
        worst, bad_sel, n_sel = 0.0, {"indexer_topk": 0, "moe_experts": 0}, 0
        for t in range(T):
            pos = S + t
            ids = tokens[None, pos:pos + 1]
            if i == 0:
                x = model.embed_streams(ids)
            else:
                x = g[f"decode.hidden.layer{i - 1}"][t][None, None]
            rec = Recorder()
            rec.prefix = "decode"
            with torch.no_grad():
                out = block(x, ids, EXACT, pos, cache, rec)[0, 0]
            if dskip[t]:
                continue
            worst = max(worst, rel_l2(out, g[f"decode.hidden.layer{i}"][t]))
            n_sel += 1
            for kind in bad_sel:
                name = f"decode.{kind}.{tag}"
                if name in g:
                    bad_sel[kind] += same_sets(rec.values[name], g[name][t:t + 1].long(), [0])
        print(f" block {i} decode: {int(dskip.sum())} of {T} steps skipped as near ties")
        rep.at_most(f"block {i} decode rel L2 (worst step)", worst, TOL["decode_step"])
        for kind, bad in bad_sel.items():
            if f"decode.{kind}.{tag}" in g:
                rep.at_least(f"block {i} decode {kind} identical rows ({bad} differ)",
                             1 - bad / max(n_sel, 1), TOL["selection_rows"])


def check_mtp(model, g, S, T, tokens, rep: Report):
    if not len(model.mtp) or "mtp.prefill.logits" not in g:
        return
    L = model.args.n_layers
    cache = model.new_cache(1)
    rec = Recorder()
    with torch.no_grad():
        h = g[f"prefill.hidden.layer{L - 1}"][None]
        logits, out = model.mtp_step(h, tokens[None, 1:S + 1], 0, cache, EXACT, rec)
    ref = g["mtp.prefill.logits"]
    rep.at_most("MTP prefill logits rel L2", rel_l2(logits[0], ref), TOL["mtp"])
    rep.check("MTP prefill top-1 identical", float(logits[0].argmax() == ref.argmax()), 1,
              bool(logits[0].argmax() == ref.argmax()))
    print(f"  info MTP prefill last hidden rel L2: "
          f"{rel_l2(out[0, -1], g['mtp.prefill.hidden_last']):.4g}")
    if "mtp.prefill.moe_experts" in g:
        bad = same_sets(rec.values["prefill.moe_experts.mtp"], g["mtp.prefill.moe_experts"].long(),
                        range(S))
        print(f"  info MTP prefill MoE selections differing (no near-tie data): {bad} of {S}")
    if T < 2 or "mtp.decode.logits" not in g:
        return
    with torch.no_grad():
        h = g[f"decode.hidden.layer{L - 1}"][0][None, None]
        logits, out = model.mtp_step(h, tokens[None, S + 1:S + 2], S, cache, EXACT)
    ref = g["mtp.decode.logits"]
    rep.at_most("MTP decode logits rel L2", rel_l2(logits[0], ref), TOL["mtp"])
    rep.check("MTP decode top-1 identical", float(logits[0].argmax() == ref.argmax()), 1,
              bool(logits[0].argmax() == ref.argmax()))
    print(f"  info MTP decode hidden rel L2: {rel_l2(out[0, -1], g['mtp.decode.hidden']):.4g}")


def check_free_running(model, g, S, T, tokens, rep: Report):
    cache = model.new_cache(1)
    rels, agree = [], 0
    with torch.no_grad():
        logits = model.forward_step(tokens[None, :S], 0, cache, EXACT)[0]
        refs = [g["prefill.logits"]] + list(g["decode.logits"])
        outs = [logits]
        for t in range(T):
            outs.append(model.forward_step(tokens[None, S + t:S + t + 1], S + t, cache, EXACT)[0])
    for ours, ref in zip(outs, refs):
        rels.append(rel_l2(ours, ref))
        agree += int(ours.argmax() == ref.argmax())
    srt = sorted(rels)
    median = srt[len(srt) // 2] if len(srt) % 2 else 0.5 * (srt[len(srt) // 2 - 1] +
                                                              srt[len(srt) // 2])
    print(f"  info free-running prefill logits rel L2 {rels[0]:.4g}, max over steps "
          f"{max(rels):.4g}")
    rep.at_most("free-running logits rel L2 (median)", median, TOL["free_median"])
    rep.at_least(f"free-running top-1 agreement ({agree}/{len(rels)})", agree / len(rels),
                 TOL["free_top1"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("golden_dir", nargs="?", default=DEFAULT_GOLDEN)
    ap.add_argument("--scenario", action="append", help="scenario name(s) from manifest.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-free-running", action="store_true")
    opts = ap.parse_args(argv)
    torch.set_num_threads(opts.threads)
    t0 = time.time()
    with open(os.path.join(opts.golden_dir, "manifest.json")) as f:
        manifest = json.load(f)
    model = load_model(os.path.join(opts.golden_dir, manifest.get("checkpoint", "checkpoint")))
    print(f"loaded {opts.golden_dir} in {time.time() - t0:.1f} s: {model.args.n_layers} layers, "
          f"dim {model.args.dim}, compress_ratios {model.args.compress_ratios}")
    rep = Report()
    scenarios = opts.scenario or list(manifest["scenarios"].keys())
    for name in scenarios:
        sc = manifest["scenarios"][name]
        g = load_file(os.path.join(opts.golden_dir, sc["file"]))
        tokens = g["tokens"].long()
        S = int(sc["prompt_len"])
        T = int(g["decode.logits"].shape[0]) if "decode.logits" in g else 0
        print(f"scenario {name}: prompt {S} tokens, {T} decode steps")
        ts = time.time()
        check_head(model, g, S, rep)
        check_blocks(model, g, S, T, tokens, rep)
        check_mtp(model, g, S, T, tokens, rep)
        if not opts.skip_free_running:
            check_free_running(model, g, S, T, tokens, rep)
        print(f" scenario {name} took {time.time() - ts:.1f} s")
    print(f"total {time.time() - t0:.1f} s")
    if rep.failures:
        print(f"FAILED {len(rep.failures)} check(s):")
        for f in rep.failures:
            print(f"  {f}")
        return 1
    print("all golden checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
