#!/usr/bin/python3
"""The bundled demo model (models/dsv4-demo), checked from the repository alone.

    test_bundled_model.py --dsv4 build/dsv4 [--model models/dsv4-demo] [--n 200] [--seed 3]

1. Held-out conversations are generated with a seed that neither training (1) nor the release
   evaluation (2) used, from the eval share of the question space (never trained on).
2. Engine vs PyTorch, teacher-forced, on the first --compare of them: top-1 agreement >= 99 %
   (tools/demo/compare_engine.py: `dsv4 logits --all-positions` against tools/v4ref's
   exact-numerics forward).
3. The engine's greedy answers (`dsv4 generate`) are scored by tools/demo/eval.py against the
   gates of docs/demo-model.md, each lowered by --margin to allow for the sample size (the release
   figures in the README come from 1000 prompts). Gates listed in --known-below (none: the
   bundled model reaches every gate) would be printed but not asserted.

Exit 77 (ctest: skipped) when the model folder does not exist.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "tools", "demo")
PY = "/usr/bin/python3"


def run(args, **kw):
    proc = subprocess.run(args, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        sys.exit(f"FAILED: {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--dsv4", required=True)
    p.add_argument("--model", default=os.path.join(ROOT, "models", "dsv4-demo"))
    p.add_argument("--n", type=int, default=200, help="held-out conversations to answer")
    p.add_argument("--compare", type=int, default=8, help="conversations for engine vs PyTorch")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--known-below", default="",
                   help="comma-separated gates reported but not asserted")
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.model, "config.json")):
        print(f"SKIP: no model in {args.model}")
        return 77

    with tempfile.TemporaryDirectory() as tmp:
        data, meta = os.path.join(tmp, "eval.jsonl"), os.path.join(tmp, "eval.meta.jsonl")
        run([PY, os.path.join(DEMO, "gen_data.py"), "--seed", str(args.seed), "--n", str(args.n),
             "--split", "eval", "--out", data, "--meta", meta])

        # Engine vs PyTorch on the same ids (teacher-forced).
        npz = os.path.join(tmp, "eval.npz")
        run([PY, os.path.join(DEMO, "prepare_data.py"), "--data", data, "--tokenizer", args.model,
             "--out", npz])
        cmp_out = run([PY, os.path.join(DEMO, "compare_engine.py"), "--model", args.model,
                       "--data", npz, "--dsv4", args.dsv4, "--n", str(args.compare),
                       "--min-top1", "0.99"])
        print("engine vs PyTorch:", cmp_out.strip())

        # Greedy answers by the engine, scored against the gates.
        prompts = os.path.join(tmp, "prompts.jsonl")
        run([PY, os.path.join(DEMO, "eval.py"), "prompts", "--data", data, "--meta", meta,
             "--out", prompts])
        completions = os.path.join(tmp, "completions.jsonl")
        run([PY, os.path.join(DEMO, "generate.py"), "--model", args.model, "--prompts", prompts,
             "--dsv4", args.dsv4, "--out", completions])
        report = json.loads(run([PY, os.path.join(DEMO, "eval.py"), "score", "--data", data,
                                 "--meta", meta, "--completions", completions,
                                 "--dsv4", args.dsv4]))
    failed = []
    known_below = set(filter(None, args.known_below.split(",")))
    for name, entry in report.items():
        if not isinstance(entry, dict) or "gate" not in entry:
            continue
        bound = entry["gate"] - args.margin
        ok = entry["total"] > 0 and entry["rate"] >= bound
        verdict = "ok" if ok else ("below (known, not asserted)" if name in known_below
                                   else "FAILED")
        print(f"{name}: {entry['passed']}/{entry['total']} = {entry['rate']:.3f} "
              f"(release gate {entry['gate']}, here >= {bound:.2f}) {verdict}")
        if not ok and name not in known_below:
            failed.append(name)
    if failed:
        print("FAILED gates:", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
