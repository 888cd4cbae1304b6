#!/usr/bin/python3
"""Trains the bundled demo model (tools/v4ref, the V4 architecture) on prepare_data.py output.

    train.py --data out/demo/train.npz --out out/demo/run [--config tools/demo/demo_config.json]
             [--steps 3000] [--threads 2] [--eval-data out/demo/eval.npz]
             [--export models/dsv4-demo --tokenizer out/demo/tokenizer] [--loss-png docs/...]

* Batches: conversations are bucketed by length (never packed: V4 attention and the compressors
  have no document mask, so a packed neighbour would leak into the next conversation), sorted,
  cut into batches of at most --batch-tokens padded tokens and shuffled per epoch. Padding is on
  the right, so a causal model never sees it; padded positions carry no loss.
* Loss: next-token cross entropy on the assistant-output tokens only (prepare_data's mask), plus
  --mtp-weight times the MTP block's loss (position t predicting token t+2, same mask).
* Optimiser: AdamW (weight decay on matrices only), linear warm-up, cosine decay to
  --min-lr-ratio, global grad-norm clipping. Non-hash MoE gates get the auxiliary-loss-free
  balancing update of their selection bias (bias += rate * sign(mean load - load)).
* Numerics: plain fp32 (TRAIN_FP32) first; the last --qat-fraction of the steps run with the
  reference's rounding and activation quantisation as straight-through fake quantisation
  (TRAIN_STE) *and* the weights of FP8/FP4 linears fake-quantised to their export grids (FP8
  128x128 blocks, FP4 per 32), so the exported checkpoint computes what was trained.
* Resumable: --out/state.pt (model, optimiser, data cursor, RNG, log) is written every
  --ckpt-every seconds and at the end; rerunning the same command continues from it.
  --time-limit stops early (state saved) so that a run fits a time box.
* At the end: --loss-png (matplotlib), and with --export the official-format checkpoint
  (export_demo.py) and its own held-out loss after the FP8/FP4 round trip.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tools/ -> `import v4ref`
sys.path.insert(0, HERE)

from v4ref import quant  # noqa: E402  pylint: disable=wrong-import-position
from v4ref.config import args_from_dict  # noqa: E402  pylint: disable=wrong-import-position
from v4ref.model import Gate, QLinear, Transformer  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_CONFIG = os.path.join(HERE, "demo_config.json")


# ---------------------------------------------------------------------------------------------
# Data


class Conversations:
    """The conversations of a prepare_data.py .npz, at most `max_len` tokens each."""

    def __init__(self, path: str, max_len: int):
        data = np.load(path)
        self.tokens = data["tokens"].astype(np.int64)
        self.mask = data["mask"].astype(bool)
        offsets = data["offsets"]
        self.vocab_size = int(data["vocab_size"])
        self.bos = int(data["bos_token_id"])
        self.eos = int(data["eos_token_id"])
        lengths = np.diff(offsets)
        keep = lengths <= max_len
        self.dropped = int((~keep).sum())
        self.starts = offsets[:-1][keep]
        self.lengths = lengths[keep]
        if len(self.starts) == 0:
            raise SystemExit(f"{path}: no conversation of at most {max_len} tokens")

    def batches(self, batch_tokens: int, seed: int):
        """Deterministic list of index arrays for one epoch: length buckets, shuffled."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.lengths))  # random tie order within a length
        order = order[np.argsort(self.lengths[order], kind="stable")]
        out, cur, cur_max = [], [], 0
        for i in order:
            n = int(self.lengths[i])
            if cur and max(cur_max, n) * (len(cur) + 1) > batch_tokens:
                out.append(np.asarray(cur))
                cur, cur_max = [], 0
            cur.append(i)
            cur_max = max(cur_max, n)
        if cur:
            out.append(np.asarray(cur))
        return [out[k] for k in rng.permutation(len(out))]

    def tensors(self, idx):
        """ids [B,S] (right-padded with EOS), target mask [B,S] (True = trained token)."""
        S = int(self.lengths[idx].max())
        ids = np.full((len(idx), S), self.eos, dtype=np.int64)
        mask = np.zeros((len(idx), S), dtype=bool)
        for r, i in enumerate(idx):
            s, n = int(self.starts[i]), int(self.lengths[i])
            ids[r, :n] = self.tokens[s:s + n]
            mask[r, :n] = self.mask[s:s + n]
        return torch.from_numpy(ids), torch.from_numpy(mask)


# ---------------------------------------------------------------------------------------------
# Model helpers


def build_model(config_path: str, vocab_size: int, seed: int) -> Transformer:
    with open(config_path) as f:
        cfg = json.load(f)
    if cfg.get("vocab_size", 0) < vocab_size:
        cfg["vocab_size"] = vocab_size  # the embedding must cover every tokenizer id
    model = Transformer(args_from_dict(cfg))
    model.init_random_(seed)
    return model


def losses(model: Transformer, ids, mask, nm, with_mtp: bool):
    """(main loss, MTP loss or None, number of trained targets) on a padded batch."""
    logits, mtp_logits = model.forward_train(ids, nm, with_mtp=with_mtp)
    target = mask[:, 1:]
    n = int(target.sum())
    main = F.cross_entropy(logits[:, :-1][target], ids[:, 1:][target])
    mtp = None
    if mtp_logits is not None and ids.shape[1] > 2:
        t2 = mask[:, 2:]
        if bool(t2.any()):
            mtp = F.cross_entropy(mtp_logits[:, :-1][t2], ids[:, 2:][t2])
    return main, mtp, n


class WeightFakeQuant:
    """Context manager for weight QAT: FP8/FP4 linear weights hold their export-grid values
    during forward/backward (the gradient then flows to the fp32 master unchanged: STE)."""

    def __init__(self, model: Transformer, enabled: bool):
        self.items = []  # (parameter, storage kind)
        if not enabled:
            return
        modules = dict(model.named_modules())
        for name, p in model.named_parameters():
            owner_name, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            owner = modules.get(owner_name)
            if isinstance(owner, QLinear) and leaf == "weight" and (
                    owner.kind in ("fp8", "fp4") or owner_name.endswith("attn.wo_a")):
                self.items.append((p, "fp4" if owner.kind == "fp4" else "fp8"))
            elif leaf == "weight":  # exported as BF16 (norms, embed, head, gate, compressor)
                self.items.append((p, "bf16"))

    def __enter__(self):
        self.saved = []
        with torch.no_grad():
            for p, kind in self.items:
                w = p.data
                self.saved.append(w.clone())
                if kind == "fp4":
                    q, s = quant.quantize_weight_fp4(w, 32)
                    w.copy_(quant.dequant_fp4(q, s, 32))
                elif kind == "fp8":
                    q, s = quant.quantize_weight_fp8(w, 128)
                    w.copy_(quant.dequant_fp8_block(q, s, 128))
                else:
                    w.copy_(quant.bf16(w))
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for (p, _), w in zip(self.items, self.saved):
                p.data.copy_(w)


class LoadBalancer:
    """Auxiliary-loss-free balancing (DeepSeek-V3/V4): after each step, every non-hash gate's
    selection bias moves by `rate` towards under-loaded experts."""

    def __init__(self, model: Transformer, rate: float):
        self.rate = rate
        self.counts = {}
        self.gates = [m for m in model.modules() if isinstance(m, Gate) and not m.hash]
        for g in self.gates:
            g.register_forward_hook(self._hook)

    def _hook(self, gate, _inputs, output):
        if not gate.training:  # evaluation batches do not steer the balance
            return
        indices = output[1]
        c = torch.bincount(indices.reshape(-1), minlength=gate.weight.shape[0]).float()
        self.counts[id(gate)] = self.counts.get(id(gate), 0) + c

    @torch.no_grad()
    def update(self):
        for g in self.gates:
            c = self.counts.get(id(g))
            if c is not None and dist_on():
                dist.all_reduce(c)  # every rank moves the bias by the global load
            if c is not None and g.bias is not None:
                g.bias += self.rate * torch.sign(c.mean() - c)
        self.counts = {}


def param_groups(model: Transformer, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        is_matrix = p.dim() == 2 and "hc_" not in leaf and leaf != "ape"
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def average_gradients(model: Transformer, procs: int):
    """Data parallelism: one flat all-reduce of every gradient (an expert no token of this rank's
    batch reached gets zeros), then the mean. Every rank then takes the same optimiser step on the
    same numbers, so the replicas stay identical without broadcasting weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= procs
    off = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[off:off + n].view_as(p))
        off += n


def progress(step: int, elapsed: float, args) -> float:
    """Fraction of the run done: by steps, or by the --time-budget clock if that is further."""
    frac = step / args.steps
    if args.time_budget:
        frac = max(frac, elapsed / args.time_budget)
    return min(1.0, frac)


def lr_at(step: int, frac: float, args) -> float:
    """Linear warm-up over --warmup steps, then cosine decay to min_lr_ratio at frac = 1."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    cos = 0.5 * (1 + math.cos(math.pi * frac))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cos)


@torch.no_grad()
def eval_loss(model, data: Conversations, batches, nm, wq: bool):
    total, count = 0.0, 0
    model.eval()
    with WeightFakeQuant(model, wq):
        for idx in batches:
            ids, mask = data.tensors(idx)
            main, _, n = losses(model, ids, mask, nm, with_mtp=False)
            total += float(main) * n
            count += n
    model.train()
    return total / max(1, count)


def plot_losses(log, path: str, title: str):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    steps = [r["step"] for r in log if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in log if "loss" in r], lw=0.8, alpha=0.5, label="train (batch)")
    if len(steps) > 20:  # moving average for readability
        k = max(5, len(steps) // 50)
        vals = np.convolve([r["loss"] for r in log if "loss" in r], np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], vals, lw=1.5, label=f"train (mean of {k})")
    ev = [r for r in log if "eval_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", ms=3,
                label="held-out eval")
    mtp = [r for r in log if r.get("mtp_loss") is not None]
    if mtp:
        ax.plot([r["step"] for r in mtp], [r["mtp_loss"] for r in mtp], lw=0.6, alpha=0.4,
                label="MTP (t+2)")
    qat = [r["step"] for r in log if r.get("qat")]
    if qat:
        ax.axvline(qat[0], color="grey", ls="--", lw=0.8, label="QAT (FP8/FP4 STE) from here")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy on assistant tokens (nats)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--data", required=True, help="prepare_data.py .npz (training set)")
    p.add_argument("--eval-data", help="prepare_data.py .npz of held-out conversations")
    p.add_argument("--out", required=True, help="run folder (state.pt, log.jsonl)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="HF-style V4 config.json")
    p.add_argument("--seq-len", type=int, default=768, help="drop longer conversations")
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per batch")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--mtp-weight", type=float, default=0.3)
    p.add_argument("--balance-rate", type=float, default=1e-3)
    p.add_argument("--qat-fraction", type=float, default=0.15,
                   help="last fraction of the steps with STE fake quantisation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--procs", type=int, default=1,
                   help="data-parallel processes (gloo on this machine): each trains its own "
                   "batch of --batch-tokens, gradients are averaged")
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds of training in all (resumed runs included): the schedule "
                   "(cosine, QAT phase, end) follows max(step/steps, time/budget); 0 = steps only")
    p.add_argument("--time-limit", type=float, default=0,
                   help="stop this invocation after so many seconds in all, state saved (pause)")
    p.add_argument("--ckpt-every", type=float, default=300, help="seconds between state saves")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--loss-png", help="write the loss curve here")
    p.add_argument("--export", help="export the trained model (official format) to this folder")
    p.add_argument("--tokenizer", help="tokenizer folder copied into the export")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.procs < 1:
        raise SystemExit("--procs must be >= 1")
    if args.procs == 1:
        train(0, args, None)
        return
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(train, args=(args, f"tcp://127.0.0.1:{port}"), nprocs=args.procs, join=True)


def watch_parent():
    """A spawned rank exits when the launching process dies (killed, not just interrupted),
    instead of training on as an orphan."""
    import threading  # pylint: disable=import-outside-toplevel
    parent = os.getppid()

    def poll():
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(1)  # pylint: disable=protected-access

    threading.Thread(target=poll, daemon=True).start()


def train(rank: int, args, init_method):
    """One training process; rank 0 logs, evaluates, saves and exports."""
    if init_method is not None:
        watch_parent()
        dist.init_process_group("gloo", init_method=init_method, rank=rank,
                                world_size=args.procs)
    lead = rank == 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    data = Conversations(args.data, args.seq_len)
    eval_data = Conversations(args.eval_data, args.seq_len) if args.eval_data else None
    eval_batches = (eval_data.batches(args.batch_tokens, 12345)[:args.eval_batches]
                    if eval_data else [])
    model = build_model(args.config, data.vocab_size, args.seed)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                            betas=(0.9, 0.95), eps=1e-8)
    balancer = LoadBalancer(model, args.balance_rate)
    state_path = os.path.join(args.out, "state.pt")
    log_path = os.path.join(args.out, "log.jsonl")
    step, epoch, cursor, log, elapsed, done = 0, 0, 0, [], 0.0, False
    if os.path.exists(state_path):
        st = torch.load(state_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, epoch, cursor, log, elapsed = (st["step"], st["epoch"], st["cursor"], st["log"],
                                             st["elapsed"])
        torch.set_rng_state(st["rng"])
        if lead:
            print(f"resumed from {state_path} at step {step}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    if lead:
        print(json.dumps({"params": n_params, "conversations": len(data.lengths),
                      "dropped_too_long": data.dropped, "steps": args.steps,
                      "args": vars(args)}), flush=True)

    def save():
        if not lead:
            return
        tmp = state_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "epoch": epoch, "cursor": cursor, "log": log, "elapsed": elapsed,
                    "rng": torch.get_rng_state(), "config": model.args.__dict__,
                    "bos_token_id": data.bos, "eos_token_id": data.eos}, tmp)
        os.replace(tmp, state_path)
        with open(log_path, "w") as f:
            for r in log:
                f.write(json.dumps(r) + "\n")

    batches = data.batches(args.batch_tokens, args.seed * 1000 + epoch)
    start = time.time() - elapsed

    def synced_clock() -> float:
        """Seconds of training so far by rank 0's clock, so that every rank agrees on the
        schedule (learning rate, QAT phase, end)."""
        t = torch.tensor([time.time() - start], dtype=torch.float64)
        if dist_on():
            dist.broadcast(t, 0)
        return float(t)

    last_save = time.time()
    model.train()
    done = progress(step, elapsed, args) >= 1.0
    while not done:
        # A step takes `procs` batches, one per rank (cursor counts batches, not steps).
        if cursor + args.procs > len(batches):
            epoch, cursor = epoch + 1, 0
            batches = data.batches(args.batch_tokens, args.seed * 1000 + epoch)
        ids, mask = data.tensors(batches[cursor + rank])
        frac = progress(step, synced_clock(), args)
        qat = frac >= 1 - args.qat_fraction
        nm = quant.TRAIN_STE if qat else quant.TRAIN_FP32
        lr = lr_at(step, frac, args)
        for g in opt.param_groups:
            g["lr"] = lr
        with WeightFakeQuant(model, qat):
            main, mtp, n = losses(model, ids, mask, nm, with_mtp=args.mtp_weight > 0)
            loss = main + (args.mtp_weight * mtp if mtp is not None else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if dist_on():
            average_gradients(model, args.procs)
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip))
        opt.step()
        balancer.update()
        step, cursor = step + 1, cursor + args.procs
        elapsed = synced_clock()
        done = progress(step, elapsed, args) >= 1.0
        if lead and (step % args.log_every == 0 or done or step == 1):
            rec = {"step": step, "epoch": epoch, "loss": round(float(main), 4),
                   "mtp_loss": round(float(mtp), 4) if mtp is not None else None,
                   "lr": lr, "grad_norm": round(gnorm, 3), "targets": n,
                   "tokens": int(ids.numel()) * args.procs, "qat": qat, "elapsed": round(elapsed, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
        if lead and eval_batches and (step % args.eval_every == 0 or done):
            ev = eval_loss(model, eval_data, eval_batches, nm, qat)
            log.append({"step": step, "eval_loss": round(ev, 4), "qat": qat})
            print(json.dumps(log[-1]), flush=True)
        if time.time() - last_save > args.ckpt_every:
            save()
            last_save = time.time()
        if not done and args.time_limit and elapsed > args.time_limit:
            if lead:
                print(f"time limit reached at step {step}; rerun the same command to continue",
                      flush=True)
            break
    if dist_on():
        # The replicas must have stayed identical (same data order, same reductions).
        sums = torch.tensor([float(sum(p.double().sum() for p in model.parameters()))],
                            dtype=torch.float64)
        gathered = [torch.zeros_like(sums) for _ in range(args.procs)]
        dist.all_gather(gathered, sums)
        if any(float(g) != float(sums) for g in gathered):
            raise SystemExit(f"data-parallel replicas diverged: {[float(g) for g in gathered]}")
        if lead:
            print(f"{args.procs} data-parallel replicas identical after step {step}", flush=True)
    save()
    if not lead:
        return
    if args.loss_png:
        plot_losses(log, args.loss_png,
                    f"dsv4 demo model ({n_params / 1e6:.1f} M parameters, {step} steps)")
    if args.export and done:
        import export_demo  # pylint: disable=import-outside-toplevel
        export_demo.export(model, args.export, data.bos, data.eos, args.tokenizer)
        report = {"exported": args.export}
        if eval_batches:
            from v4ref.model import load_model  # pylint: disable=import-outside-toplevel
            reloaded = load_model(args.export)
            report["eval_loss_trained_ste"] = round(
                eval_loss(model, eval_data, eval_batches, quant.TRAIN_STE, True), 4)
            report["eval_loss_exported"] = round(
                eval_loss(reloaded, eval_data, eval_batches, quant.TRAIN_STE, False), 4)
        print(json.dumps(report), flush=True)
        with open(os.path.join(args.out, "export.json"), "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
