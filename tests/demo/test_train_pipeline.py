#!/usr/bin/python3
"""demo_train_pipeline: tools/demo/train.py + export_demo.py + the C++ engine on a tiny config.

    test_train_pipeline.py --dsv4 build/dsv4

1. A synthetic, learnable task (arithmetic progressions, loss on the second half of each
   sequence) as a prepare_data.py-style .npz.
2. train.py with a time limit that stops it after the first step, then the same command again:
   it must resume from the saved state and finish (fp32 steps, then QAT steps).
3. The training loss must fall well below its start; the loss curve PNG must exist.
4. The export (official format): config.json with the V4 field names and the data's bos/eos ids,
   FP8 (F8_E4M3 + F8_E8M0 scales) linears, packed FP4 (I8) routed experts, BF16 norms.
   Its held-out loss, reloaded by tools/v4ref, must equal the trained model's QAT loss (the
   export quantises exactly what QAT simulated).
5. --procs 2 (data parallel): pause, resume, identical replicas, falling loss.
6. `dsv4 logits` loads it and agrees with tools/v4ref teacher-forced (compare_engine.py).
Exit 77 (skipped) without torch.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "tools", "demo")
PY = sys.executable

try:
    import numpy as np
    import torch  # noqa: F401  pylint: disable=unused-import
except ImportError:
    print("skipped: numpy/torch not available")
    sys.exit(77)

sys.path.insert(0, DEMO)
sys.path.insert(0, os.path.join(ROOT, "tools"))

failures = []


def expect(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def write_npz(path, n, seed, vocab):
    """Sequences BOS, a, a+d, a+2d, ... (mod vocab-3, offset 3), EOS; the mask covers the
    second half and EOS, like assistant output after a prompt."""
    rng = np.random.default_rng(seed)
    tokens, mask, offsets = [], [], [0]
    for _ in range(n):
        length = int(rng.integers(10, 40))
        a, d = int(rng.integers(0, vocab - 3)), int(rng.integers(1, 4))
        body = [3 + (a + k * d) % (vocab - 3) for k in range(length)]
        ids = [0] + body + [1]
        m = [0] * (1 + length // 2) + [1] * (len(ids) - 1 - length // 2)
        tokens += ids
        mask += m
        offsets.append(len(tokens))
    np.savez(path, tokens=np.asarray(tokens, np.int32), mask=np.asarray(mask, np.uint8),
             offsets=np.asarray(offsets, np.int64), bos_token_id=np.int64(0),
             eos_token_id=np.int64(1), vocab_size=np.int64(vocab))


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"FAIL: {' '.join(cmd[:3])} ... exited {proc.returncode}")
    return proc.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dsv4", required=True)
    p.add_argument("--keep", help="work in this folder instead of a temporary one")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(DEMO, "tiny_config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        train, ev = os.path.join(work, "train.npz"), os.path.join(work, "eval.npz")
        write_npz(train, 400, 1, vocab)
        write_npz(ev, 16, 2, vocab)
        run_dir, export = os.path.join(work, "run"), os.path.join(work, "model")
        png = os.path.join(work, "loss.png")
        steps = 40
        cmd = [PY, os.path.join(DEMO, "train.py"), "--data", train, "--eval-data", ev, "--out",
               run_dir, "--config", os.path.join(DEMO, "tiny_config.json"), "--steps",
               str(steps), "--batch-tokens", "384", "--warmup", "5", "--lr", "1e-2",
               "--qat-fraction", "0.25", "--log-every", "1", "--eval-every", "1000",
               "--eval-batches", "2", "--threads", "2"]
        out = run(cmd + ["--time-limit", "0.001"])
        expect("time limit reached at step 1" in out, "--time-limit stops after the first step")
        out = run(cmd + ["--export", export, "--loss-png", png])
        expect("resumed from" in out and "at step 1" in out, "second run resumes at step 1")
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        losses = [r["loss"] for r in log if "loss" in r]
        steps_logged = [r["step"] for r in log if "loss" in r]
        expect(steps_logged == list(range(1, steps + 1)), "one log record per step, no gaps")
        first, last = np.mean(losses[:3]), np.mean(losses[-5:])
        expect(last < 0.7 * first, f"training loss falls: {first:.3f} -> {last:.3f}")
        expect(any(r.get("qat") for r in log) and not log[0].get("qat"),
               "fp32 steps first, then QAT steps")
        expect(os.path.getsize(png) > 1000, "loss curve PNG written")

        with open(os.path.join(export, "config.json")) as f:
            cfg = json.load(f)
        expect(cfg["bos_token_id"] == 0 and cfg["eos_token_id"] == 1, "config bos/eos ids")
        expect(cfg["hidden_size"] == 64 and cfg["compress_ratios"] == [0, 4, 8, 0] and
               cfg["num_nextn_predict_layers"] == 1 and cfg["hc_mult"] == 4,
               "config.json has the V4 field names and the trained config")
        from v4ref.safetensors_io import SafetensorsFile  # pylint: disable=import-outside-toplevel
        with open(os.path.join(export, "model.safetensors.index.json")) as f:
            weight_map = json.load(f)["weight_map"]
        files = {s: SafetensorsFile(os.path.join(export, s)) for s in set(weight_map.values())}
        dtype = {n: files[s].dtype(n) for n, s in weight_map.items()}
        expect(dtype["layers.0.attn.wq_a.weight"] == "F8_E4M3" and
               dtype["layers.0.attn.wq_a.scale"] == "F8_E8M0", "FP8 linears with E8M0 scales")
        expect(dtype["layers.1.ffn.experts.0.w1.weight"] == "I8" and
               dtype["layers.1.ffn.experts.0.w1.scale"] == "F8_E8M0", "packed FP4 experts")
        expect(dtype["layers.0.ffn.shared_experts.w1.weight"] == "F8_E4M3", "FP8 shared expert")
        expect(dtype["embed.weight"] == "BF16" and dtype["norm.weight"] == "BF16" and
               dtype["layers.0.ffn.gate.tid2eid"] == "I64" and "mtp.0.e_proj.weight" in dtype,
               "BF16 embeddings/norms, hash table, MTP block")
        with open(os.path.join(run_dir, "export.json")) as f:
            rep = json.load(f)
        diff = abs(rep["eval_loss_exported"] - rep["eval_loss_trained_ste"])
        expect(diff < 2e-3, f"exported model's held-out loss {rep['eval_loss_exported']} == "
               f"trained QAT loss {rep['eval_loss_trained_ste']} (diff {diff:.2g})")

        # Data parallelism: two processes, paused after the first step and resumed; train.py
        # itself compares the replicas' weights at the end and fails if they differ.
        ddp_dir = os.path.join(work, "run-ddp")
        ddp = [PY, os.path.join(DEMO, "train.py"), "--data", train, "--out", ddp_dir,
               "--config", os.path.join(DEMO, "tiny_config.json"), "--steps", "12",
               "--batch-tokens", "384", "--warmup", "2", "--lr", "1e-2", "--log-every", "1",
               "--procs", "2", "--threads", "1"]
        out = run(ddp + ["--time-limit", "0.001"])
        expect("time limit reached at step 1" in out, "2 processes: --time-limit pauses")
        out = run(ddp)
        expect("resumed from" in out and "2 data-parallel replicas identical after step 12" in out,
               "2 processes resume and end with identical replicas")
        with open(os.path.join(ddp_dir, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        expect([r["step"] for r in log if "loss" in r] == list(range(1, 13)),
               "2 processes: one log record per step")
        losses = [r["loss"] for r in log if "loss" in r]
        expect(np.mean(losses[-3:]) < np.mean(losses[:3]),
               f"2 processes: training loss falls: {losses[:3]} -> {losses[-3:]}")

        import compare_engine  # pylint: disable=import-outside-toplevel
        d = np.load(ev)
        off = d["offsets"]
        seqs = [d["tokens"][off[i]:off[i + 1]].tolist() for i in range(4)]
        masks = [d["mask"][off[i]:off[i + 1]] for i in range(4)]
        res = compare_engine.compare(export, args.dsv4, seqs, masks)
        print(json.dumps(res))
        expect(res["top1_agree"] >= 0.95, f"engine top-1 == PyTorch top-1 at "
               f"{res['top1_agree']:.1%} of {res['positions']} positions (>= 95%)")
        expect(res["rel_l2"] < 5e-2, f"engine vs PyTorch logits rel L2 {res['rel_l2']:.2g}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
