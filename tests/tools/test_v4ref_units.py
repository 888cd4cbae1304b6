"""Unit checks of tools/v4ref that do not need the golden data's tolerances:
safetensors round trips, FP8/FP4 rounding against brute-force nearest-value search, checkpoint
dequantisation against an independent decode, and the training forward (finite loss, gradients,
and equality of the causal training forward with the inference prefill when rounding is exact).
Exit 0 = pass, 1 = fail, 77 = torch missing."""

import json
import os
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError:
    print(f"SKIP: {sys.executable} cannot import torch/numpy")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from v4ref import quant  # noqa: E402
from v4ref.config import ModelArgs  # noqa: E402
from v4ref.model import Transformer, load_model, read_checkpoint, sparse_attention  # noqa: E402
from v4ref.quant import EXACT, TRAIN_FP32, TRAIN_STE, Numerics  # noqa: E402
from v4ref.export import save_checkpoint  # noqa: E402
from v4ref.trace import trace  # noqa: E402
from v4ref.safetensors_io import (E4M3_TABLE, SafetensorsFile, load_file, pack_e2m1,  # noqa: E402
                                  save_file, unpack_e2m1)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
CKPT = os.path.join(ROOT, "tests", "data", "golden", "tiny-a", "checkpoint")
failures = []


def expect(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def nearest(values, grid):
    """Brute force round-to-nearest, ties to the candidate with an even code index."""
    out = []
    for v in values:
        d = np.abs(grid - v)
        best = np.flatnonzero(d == d.min())
        out.append(grid[best[0]] if len(best) == 1 else grid[[b for b in best if b % 2 == 0][0]])
    return np.array(out, dtype=np.float32)


def test_rounding():
    torch.manual_seed(0)
    pos = np.sort(E4M3_TABLE[:127][~np.isnan(E4M3_TABLE[:127])])  # codes 0..126 ascending
    x = torch.cat([torch.rand(4000) * 460 - 230, torch.randn(2000) * 0.01,
                   torch.tensor(pos[:-1] + np.diff(pos) / 2)])  # midpoints: ties
    x = x.clamp(-448, 448)
    ref = np.sign(x.numpy()) * nearest(np.abs(x.numpy()), pos)
    expect(np.array_equal(quant.round_e4m3(x).numpy(), ref.astype(np.float32)),
           "round_e4m3 == brute-force nearest e4m3 (ties to even)")
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    y = torch.cat([torch.rand(3000) * 12 - 6, torch.tensor(grid[:-1] + np.diff(grid) / 2)])
    ref = np.sign(y.numpy()) * nearest(np.abs(y.numpy()), grid)
    expect(np.array_equal(quant.round_e2m1(y).numpy(), ref.astype(np.float32)),
           "round_e2m1 == brute-force nearest e2m1 (ties to even)")
    a = torch.randn(3, 256).to(torch.bfloat16).float()
    q = quant.fp8_fake_quant(a, 128)
    blocks = a.reshape(3, 2, 128)
    scale = 2.0 ** torch.ceil(torch.log2(blocks.abs().amax(-1, keepdim=True) / 448))
    expect(torch.equal(q, (quant.round_e4m3(blocks / scale) * scale).reshape(3, 256)),
           "fp8_fake_quant uses scale 2^ceil(log2(amax/448)) per block")
    expect(torch.equal(q.to(torch.bfloat16).float(), q), "fp8 fake-quant values are bf16-exact")


def test_safetensors_roundtrip():
    t = {"f": torch.randn(3, 5), "b": torch.randn(4).to(torch.bfloat16), "i": torch.arange(6),
         "i32": torch.arange(4, dtype=torch.int32)}
    fp8 = torch.tensor(E4M3_TABLE[[0, 1, 9, 77, 126, 128, 200]])
    t["e4"] = fp8
    scale = torch.tensor([2.0**-3, 1.0, 2.0**7])
    t["e8"] = scale
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.safetensors")
        save_file(t, path, metadata={"k": "v"}, dtypes={"e4": "F8_E4M3", "e8": "F8_E8M0"})
        back = load_file(path)
        st = SafetensorsFile(path)
        expect(st.metadata == {"k": "v"} and st.dtype("e4") == "F8_E4M3", "metadata and dtypes")
    ok = all(torch.equal(back[k].float(), t[k].float()) for k in t)
    expect(ok, "safetensors round trip of F32/BF16/I64/I32/F8_E4M3/F8_E8M0")
    codes = np.random.default_rng(0).integers(0, 16, size=(3, 8))
    vals = unpack_e2m1(pack_e2m1(codes))
    table = np.array([0, .5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    expect(np.array_equal(vals, np.where(codes & 8, -1, 1) * table[codes & 7]),
           "E2M1 pack/unpack, low nibble = even element")


def test_checkpoint_dequant():
    st_path = None
    for name in sorted(os.listdir(CKPT)):
        if name.endswith(".safetensors"):
            f = SafetensorsFile(os.path.join(CKPT, name))
            if "layers.0.ffn.experts.0.w1.weight" in f and "layers.0.attn.wkv.weight" in f:
                st_path = f
    tensors = read_checkpoint(CKPT)
    if st_path is None:
        print("info: expert and wkv tensors are in different shards; using read_checkpoint only")
        return
    raw = st_path.raw("layers.0.ffn.experts.0.w1.weight").view(np.uint8)
    sc = st_path.raw("layers.0.ffn.experts.0.w1.scale").astype(np.int64)
    table = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, -1, -1.5, -2, -3, -4, -6])
    w = np.zeros((raw.shape[0], raw.shape[1] * 2))
    for r in range(raw.shape[0]):
        for c in range(raw.shape[1] * 2):
            code = (raw[r, c // 2] >> (4 * (c % 2))) & 0xF
            w[r, c] = table[code] * 2.0 ** (sc[r, c // 32] - 127)
    expect(np.array_equal(tensors["layers.0.ffn.experts.0.w1.weight"].double().numpy(), w),
           "FP4 expert dequantisation matches an independent decode")
    q = st_path.raw("layers.0.attn.wkv.weight")
    s = st_path.raw("layers.0.attn.wkv.scale").astype(np.int64)
    w = E4M3_TABLE[q].astype(np.float64) * 2.0 ** (np.repeat(np.repeat(s, 128, 0), 128, 1)[
        :q.shape[0], :q.shape[1]] - 127)
    expect(np.array_equal(tensors["layers.0.attn.wkv.weight"].double().numpy(), w),
           "FP8 block dequantisation matches an independent decode")
    wq, sq = quant.quantize_weight_fp8(tensors["layers.0.attn.wkv.weight"])
    expect(torch.equal(quant.dequant_fp8_block(wq, sq), tensors["layers.0.attn.wkv.weight"]),
           "FP8 weight re-quantisation is lossless on checkpoint weights")


def test_training_path():
    torch.manual_seed(0)
    model = load_model(CKPT)
    ids = torch.randint(0, model.args.vocab_size, (2, 40))
    # The causal training forward with exact numerics equals the inference prefill.
    with torch.no_grad():
        logits, _ = model.forward_train(ids[:1], EXACT, with_mtp=False)
        last = model.forward_step(ids[:1], 0, model.new_cache(1), EXACT)
    expect(torch.equal(logits[0, -1], last[0]), "training forward (exact numerics) == prefill")
    for nm, name in ((TRAIN_STE, "ste"), (TRAIN_FP32, "fp32")):
        model.zero_grad()
        logits, mtp_logits = model.forward_train(ids, nm)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))
        loss = loss + 0.3 * torch.nn.functional.cross_entropy(
            mtp_logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 2:].reshape(-1))
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        finite = torch.isfinite(loss).item() and all(
            torch.isfinite(g).all().item() for g in grads.values() if g is not None)
        expect(finite, f"training forward/backward ({name}) gives a finite loss {loss.item():.3f}")
        names = ["layers.0.attn.wq_a.weight", "layers.0.hc_attn_fn", "embed.weight",
                 "layers.0.attn.attn_sink", "mtp.0.e_proj.weight"]
        # A compressor gets gradients once the sequence holds a complete block.
        names += [f"layers.{i}.attn.compressor.wkv.weight"
                  for i, r in enumerate(model.args.compress_ratios[:model.args.n_layers])
                  if 0 < r <= ids.shape[1]][:1]
        for n in names:
            g = grads.get(n)
            expect(g is not None and g.abs().sum().item() > 0, f"gradient reaches {n} ({name})")
    # Batch elements are independent: row 1 of a batch equals a batch of one.
    with torch.no_grad():
        both, _ = model.forward_train(ids, TRAIN_FP32, with_mtp=False)
        one, _ = model.forward_train(ids[1:], TRAIN_FP32, with_mtp=False)
    expect(torch.allclose(both[1], one[0], atol=1e-4, rtol=1e-4), "batched rows are independent")


def test_trace_format():
    """trace.py writes exactly the golden file's tensor names, shapes and dtypes."""
    golden_path = os.path.join(ROOT, "tests", "data", "golden", "tiny-a", "golden_short.safetensors")
    golden = SafetensorsFile(golden_path)
    model = load_model(CKPT)
    tokens = golden.get("tokens").long()
    S = tokens.shape[0] - golden.shape("decode.logits")[0]
    out = trace(model, tokens, S)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.safetensors")
        save_file(out, path)
        ours = SafetensorsFile(path)
        expect(set(ours.keys()) == set(golden.keys()), "trace has the golden tensor names")
        same = all((ours.dtype(n), ours.shape(n)) == (golden.dtype(n), golden.shape(n))
                   for n in golden.keys() if n in ours)
        expect(same, "trace tensors have the golden dtypes and shapes")
    ref = golden.get("prefill.hidden.layer0")
    err = ((out["prefill.hidden.layer0"] - ref).norm() / ref.norm()).item()
    expect(err < 1e-3, f"trace prefill.hidden.layer0 matches the golden ({err:.3g})")


def test_export_roundtrip():
    """save_checkpoint writes the released storage types; re-loading gives the same model."""
    model = load_model(CKPT)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(model, d, shards=3)
        again = load_model(d)
        orig_index = json.load(open(os.path.join(CKPT, "model.safetensors.index.json")))
        new_index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
        expect(set(orig_index["weight_map"]) == set(new_index["weight_map"]),
               "exported checkpoint has the original tensor names")
        files = {}
        same_types = True
        for name, shard in orig_index["weight_map"].items():
            a = files.setdefault(("o", shard), SafetensorsFile(os.path.join(CKPT, shard)))
            nshard = new_index["weight_map"][name]
            b = files.setdefault(("n", nshard), SafetensorsFile(os.path.join(d, nshard)))
            same_types &= (a.dtype(name), a.shape(name)) == (b.dtype(name), b.shape(name))
        expect(same_types, "exported tensors have the original dtypes and shapes")
    p1 = dict(model.named_parameters())
    p1.update(dict(model.named_buffers()))
    p2 = dict(again.named_parameters())
    p2.update(dict(again.named_buffers()))
    expect(all(torch.equal(p1[n], p2[n]) for n in p1), "export + load reproduces every parameter")


def test_tiled_attention():
    """The tiled online softmax (tiles of 64, running max) equals one plain softmax when nothing
    is rounded, across tiles, masked entries and a fully masked first tile."""
    torch.manual_seed(1)
    B, S, H, d, N, K = 1, 6, 3, 32, 300, 150
    q, kv = torch.randn(B, S, H, d), torch.randn(B, N, d)
    # Index lists never repeat a row (a window, the indexer's top-k, the HCA entries).
    idx = torch.stack([torch.randperm(N)[:K] for _ in range(B * S)]).reshape(B, S, K)
    idx[0, 1, ::3] = -1
    idx[0, 2, :64] = -1  # first tile fully masked
    sink = torch.randn(H)
    plain = sparse_attention(q, kv, sink, idx, 0.2, TRAIN_FP32)
    tiled = sparse_attention(q, kv, sink, idx, 0.2,
                             Numerics(round="off", quant="off", tiled_attention=True))
    expect(torch.allclose(plain, tiled, rtol=1e-5, atol=1e-6),
           "tiled online-softmax attention == plain softmax with sink")


def test_decode_matches_causal_forward():
    """On a random model with other dimensions and layer order (CSA first, HCA ratio 8, a window
    layer, a CSA MTP block, window 8 < prompt), prefill + one-token decode steps give the same
    logits as the causal full-sequence forward (fp32, no rounding): caches, ring order,
    compressor states and index offsets are consistent with the prefill semantics."""
    args = ModelArgs(vocab_size=97, dim=128, moe_inter_dim=64, n_layers=3, n_hash_layers=1,
                     n_heads=4, n_routed_experts=4, n_activated_experts=2, route_scale=2.0,
                     q_lora_rank=64, head_dim=128, rope_head_dim=64, o_groups=2, o_lora_rank=32,
                     window_size=8, compress_ratios=[4, 8, 0, 4], original_seq_len=64,
                     rope_factor=4.0, index_n_heads=2, index_head_dim=128, index_topk=3,
                     hc_sinkhorn_iters=5).validate()
    model = Transformer(args)
    model.init_random_(seed=3, std=0.2)
    ids = torch.randint(0, args.vocab_size, (1, 41), generator=torch.Generator().manual_seed(4))
    S = 13
    with torch.no_grad():
        full, mtp_full = model.forward_train(ids, TRAIN_FP32)
        h = model.run_layers(ids, 0, None, TRAIN_FP32)
        cache = model.new_cache(1)
        worst = 0.0
        for t in range(S - 1, ids.shape[1]):
            if t == S - 1:
                got = model.forward_step(ids[:, :S], 0, cache, TRAIN_FP32)[0]
            else:
                got = model.forward_step(ids[:, t:t + 1], t, cache, TRAIN_FP32)[0]
            worst = max(worst, ((got - full[0, t]).norm() / full[0, t].norm()).item())
        expect(worst < 1e-4, f"decode == causal forward on a random config (max rel {worst:.2g})")
        mcache = model.new_cache(1)
        m0, _ = model.mtp_step(h[:, :S], ids[:, 1:S + 1], 0, mcache, TRAIN_FP32)
        m1, _ = model.mtp_step(h[:, S:S + 1], ids[:, S + 1:S + 2], S, mcache, TRAIN_FP32)
        err = max(((m0[0] - mtp_full[0, S - 1]).norm() / mtp_full[0, S - 1].norm()).item(),
                  ((m1[0] - mtp_full[0, S]).norm() / mtp_full[0, S].norm()).item())
        expect(err < 1e-4, f"MTP prefill/decode == MTP training forward (max rel {err:.2g})")
        exact = model.forward_step(ids[:, :S], 0, model.new_cache(1), EXACT)[0]
        expect(bool(torch.isfinite(exact).all()), "exact numerics run on a non-golden config")


def main():
    torch.set_num_threads(2)
    test_tiled_attention()
    test_decode_matches_causal_forward()
    test_export_roundtrip()
    test_trace_format()
    test_rounding()
    test_safetensors_roundtrip()
    test_checkpoint_dequant()
    test_training_path()
    if failures:
        print(f"FAILED: {len(failures)}")
        return 1
    print("all unit checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
