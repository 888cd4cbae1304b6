#!/usr/bin/python3
"""Tokenizes gen_data.py conversations for training: ids + loss mask (.npz).

    prepare_data.py --data train.jsonl --tokenizer DIR --out train.npz [--dsv4 build/dsv4]

Output arrays (numpy .npz):
  tokens  int32  all conversations' ids, concatenated (each starts with BOS)
  mask    uint8  1 where the token is assistant output (reasoning, </think>,
                 content, DSML tool calls, EOS): the positions to train on
  offsets int64  conversation i is tokens[offsets[i]:offsets[i+1]]
  bos_token_id, eos_token_id, vocab_size  scalars, from the tokenizer

Rendering uses tools/demo/v4chat.py (it knows where assistant output starts);
with --dsv4 every text is also rendered by `dsv4 render` and must be identical.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import hf_tokenizer  # noqa: E402  pylint: disable=wrong-import-position
import v4chat  # noqa: E402  pylint: disable=wrong-import-position


def tokenize_conversation(tok, conv):
    """(ids, mask) of one conversation."""
    ids, mask = [], []
    for text, is_output in v4chat.render_segments(conv):
        piece = tok.encode(text)
        ids += piece
        mask += [int(is_output)] * len(piece)
    return ids, mask


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, nargs="+")
    parser.add_argument("--tokenizer", required=True, help="directory with tokenizer.json")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--dsv4", help="also render with `dsv4 render` and require equality")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="drop conversations longer than this (0 = keep all)")
    args = parser.parse_args(argv)

    tok = hf_tokenizer.Tokenizer(os.path.join(args.tokenizer, "tokenizer.json"))
    bos = tok.added[v4chat.BOS]
    eos = tok.added[v4chat.EOS]
    tokens, mask, offsets = [], [], [0]
    dropped = 0
    for path in args.data:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                conv = json.loads(line)
                if args.dsv4:
                    proc = subprocess.run([args.dsv4, "render"], input=line, capture_output=True,
                                          text=True, encoding="utf-8", check=False)
                    if proc.returncode != 0 or proc.stdout != v4chat.render(conv):
                        raise SystemExit(f"{path}:{line_no}: dsv4 render disagrees with v4chat.py "
                                         f"({proc.stderr.strip() or 'different text'})")
                ids, m = tokenize_conversation(tok, conv)
                if args.max_tokens and len(ids) > args.max_tokens:
                    dropped += 1
                    continue
                tokens += ids
                mask += m
                offsets.append(len(tokens))
    np.savez(args.out, tokens=np.asarray(tokens, dtype=np.int32),
             mask=np.asarray(mask, dtype=np.uint8), offsets=np.asarray(offsets, dtype=np.int64),
             bos_token_id=np.int64(bos), eos_token_id=np.int64(eos),
             vocab_size=np.int64(max(tok.id_to_token) + 1))
    lengths = np.diff(np.asarray(offsets))
    print(json.dumps({"conversations": int(len(lengths)), "dropped_too_long": dropped,
                      "tokens": len(tokens), "trained_tokens": int(sum(mask)),
                      "max_len": int(lengths.max()) if len(lengths) else 0,
                      "mean_len": round(float(lengths.mean()), 1) if len(lengths) else 0}))


if __name__ == "__main__":
    main()
