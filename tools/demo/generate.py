#!/usr/bin/python3
"""Greedy completions of eval.py prompts, by the C++ engine or by the PyTorch model.

    generate.py --model models/dsv4-demo --prompts prompts.jsonl --out completions.jsonl \
                --dsv4 build/dsv4          # engine: `dsv4 generate` per prompt
    generate.py --model models/dsv4-demo --prompts prompts.jsonl --out completions.jsonl \
                --torch                    # tools/v4ref, exact numerics, same greedy rule

Prompts are tokenized with the model folder's tokenizer.json (tools/demo/hf_tokenizer.py);
each completion is decoded back to text, with the EOS text appended when generation stopped at
EOS, and written as {"index", "text"} lines for `eval.py score`.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import hf_tokenizer  # noqa: E402  pylint: disable=wrong-import-position


def engine_generate(dsv4, model_dir, ids, max_tokens):
    proc = subprocess.run([dsv4, "generate", "--model", model_dir, "--prompt-ids",
                           ",".join(map(str, ids)), "--max-tokens", str(max_tokens)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"dsv4 generate failed: {proc.stderr.strip()}")
    text = proc.stdout.strip()
    return [int(t) for t in text.split(",")] if text else []


def torch_generate(model, ids, max_tokens, eos):
    """The engine's greedy rule (argmax, lowest id on ties), stopping at EOS (not returned)."""
    import torch  # pylint: disable=import-outside-toplevel
    cache = model.new_cache(1)
    logits = model.forward_step(torch.tensor([ids]), 0, cache)
    out, pos = [], len(ids)
    while len(out) < max_tokens:
        tok = int(torch.argmax(logits[0]))  # torch.argmax returns the first maximum
        if tok == eos:
            break
        out.append(tok)
        logits = model.forward_step(torch.tensor([[tok]]), pos, cache)
        pos += 1
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="eval.py prompts output")
    p.add_argument("--out", required=True)
    p.add_argument("--dsv4", help="the dsv4 binary (engine generation)")
    p.add_argument("--torch", action="store_true", help="generate with tools/v4ref instead")
    p.add_argument("--max-tokens", type=int, default=600)
    p.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if bool(args.dsv4) == bool(args.torch):
        raise SystemExit("give exactly one of --dsv4 BINARY and --torch")
    tok = hf_tokenizer.Tokenizer(os.path.join(args.model, "tokenizer.json"))
    with open(os.path.join(args.model, "config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    eos_text = tok.decode([eos])
    model = None
    if args.torch:
        import torch  # pylint: disable=import-outside-toplevel
        from v4ref.model import load_model  # pylint: disable=import-outside-toplevel
        torch.set_num_threads(args.threads)
        model = load_model(args.model)
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [json.loads(line) for line in f if line.strip()]
    if args.limit:
        prompts = prompts[:args.limit]
    with open(args.out, "w", encoding="utf-8") as out:
        for n, pr in enumerate(prompts):
            ids = tok.encode(pr["prompt"])
            if model is not None:
                gen = torch_generate(model, ids, args.max_tokens, eos)
            else:
                gen = engine_generate(args.dsv4, args.model, ids, args.max_tokens)
            text = tok.decode(gen) + (eos_text if len(gen) < args.max_tokens else "")
            out.write(json.dumps({"index": pr["index"], "text": text}, ensure_ascii=False) + "\n")
            if (n + 1) % 50 == 0:
                print(f"{n + 1}/{len(prompts)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
