#!/usr/bin/python3
"""Trains the demo model's byte-level BPE tokenizer (Hugging Face tokenizer.json).

    train_tokenizer.py --data train.jsonl --vocab-size 3072 --out DIR [--dsv4 build/dsv4]

Input: conversations from gen_data.py (encode-case `input` objects). Each one is
rendered to the exact V4 prompt text -- with `dsv4 render` when --dsv4 is given,
otherwise with tools/demo/v4chat.py (the tests check both agree) -- and the BPE
merges are learned on those texts.

Output (DIR/tokenizer.json, DIR/tokenizer_config.json) has the structure of the
V4 tokenizer (models/deepseek-v4-tokenizer/): the same normalizer, pre-tokenizer
Sequence (the same Split regexes + ByteLevel), post-processor and decoder are
copied from it, and its added tokens are copied with their exact strings and
flags, except the numbered place-holders (`<｜place▁holder▁no▁N｜>`,
`<|place_holder_mm_span_N|>`), which carry no meaning and would only waste
embedding rows in a tiny model.

Id layout, mirroring V4: 0 = BOS, 1 = EOS, 2 = pad (also in the BPE vocab, as in
V4), then the 256 byte symbols, then the learned merges in rank order, then the
other added tokens in their V4 order. `--vocab-size` is the total. The ids of
BOS/EOS are printed and written to DIR/special_token_ids.json for the export step.

By default digits are never merged (every digit is its own token): the V4
pre-tokenizer already cuts numbers into groups of at most three digits, and
single-digit tokens let a tiny model learn column-wise arithmetic that
generalises to operand pairs it has not seen. `--merge-digits` turns this off.
"""

import argparse
import collections
import heapq
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import hf_tokenizer  # noqa: E402  pylint: disable=wrong-import-position
import v4chat  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(HERE))
V4_TOKENIZER_DIR = os.path.join(REPO, "models", "deepseek-v4-tokenizer")
LEADING_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]


def is_placeholder(content):
    return content.startswith("<｜place▁holder▁no▁") or content.startswith(
        "<|place_holder_mm_span_")


def render_all(conversations, dsv4):
    """Rendered prompt text of every conversation."""
    if not dsv4:
        return [v4chat.render(c) for c in conversations]
    texts = []
    for i, conv in enumerate(conversations):
        proc = subprocess.run([dsv4, "render"], input=json.dumps(conv, ensure_ascii=False),
                              capture_output=True, text=True, encoding="utf-8", check=False)
        if proc.returncode != 0:
            raise SystemExit(f"dsv4 render failed on conversation {i}: {proc.stderr.strip()}")
        texts.append(proc.stdout)
    return texts


class BpeTrainer:
    """Byte-level BPE with incremental pair counts (only words holding the merged pair change)."""

    def __init__(self, word_counts, merge_digits):
        self.merge_digits = merge_digits
        self.symbols = [hf_tokenizer.BYTE_TO_CHAR[b] for b in range(256)]
        self.symbol_id = {s: i for i, s in enumerate(self.symbols)}
        self.words = []
        self.counts = []
        for word, count in word_counts.items():
            self.words.append([self.symbol_id[hf_tokenizer.BYTE_TO_CHAR[b]] for b in word.encode()])
            self.counts.append(count)
        self.pair_count = collections.Counter()
        self.pair_words = collections.defaultdict(set)
        for w, syms in enumerate(self.words):
            for pair in zip(syms, syms[1:]):
                self.pair_count[pair] += self.counts[w]
                self.pair_words[pair].add(w)
        self.heap = []
        for pair, count in self.pair_count.items():
            self._push(pair, count)

    def _allowed(self, pair):
        if self.merge_digits:
            return True
        text = self.symbols[pair[0]] + self.symbols[pair[1]]
        return not any(c.isdigit() for c in text)

    def _push(self, pair, count):
        if count > 0 and self._allowed(pair):
            # Ties break on the token strings, so the result does not depend on dict order.
            heapq.heappush(self.heap, (-count, self.symbols[pair[0]], self.symbols[pair[1]], pair))

    def _best(self):
        while self.heap:
            neg, _, _, pair = heapq.heappop(self.heap)
            if self.pair_count.get(pair, 0) == -neg:
                return pair, -neg
        return None, 0

    def train(self, num_merges, min_count=2):
        merges = []
        while len(merges) < num_merges:
            pair, count = self._best()
            if pair is None or count < min_count:
                break
            new_id = len(self.symbols)
            self.symbols.append(self.symbols[pair[0]] + self.symbols[pair[1]])
            merges.append((self.symbols[pair[0]], self.symbols[pair[1]]))
            changed = set()
            for w in list(self.pair_words[pair]):
                syms = self.words[w]
                weight = self.counts[w]
                for old in zip(syms, syms[1:]):
                    self.pair_count[old] -= weight
                    changed.add(old)
                    self.pair_words[old].discard(w)
                merged = []
                i = 0
                while i < len(syms):
                    if i + 1 < len(syms) and (syms[i], syms[i + 1]) == pair:
                        merged.append(new_id)
                        i += 2
                    else:
                        merged.append(syms[i])
                        i += 1
                self.words[w] = merged
                for new in zip(merged, merged[1:]):
                    self.pair_count[new] += weight
                    changed.add(new)
                    self.pair_words[new].add(w)
            for p in changed:
                self._push(p, self.pair_count[p])
            del self.pair_count[pair]
        return merges


def build_spec(base, merges, added_v4):
    """tokenizer.json object with the V4 layout."""
    vocab = {}
    for content in LEADING_SPECIALS:
        vocab[content] = len(vocab)
    for b in range(256):
        vocab[hf_tokenizer.BYTE_TO_CHAR[b]] = len(vocab)
    for a, b in merges:
        token = a + b
        if token in vocab:
            raise AssertionError(f"merge {a!r} {b!r} produced an existing token")
        vocab[token] = len(vocab)
    added = []
    next_id = len(vocab)
    for entry in added_v4:
        entry = dict(entry)
        if entry["content"] in LEADING_SPECIALS:
            entry["id"] = vocab[entry["content"]]
        else:
            entry["id"] = next_id
            next_id += 1
        added.append(entry)
    added.sort(key=lambda e: e["id"])
    model = dict(base["model"])
    model["vocab"] = vocab
    model["merges"] = [f"{a} {b}" for a, b in merges]
    spec = {}
    for key in base:  # keep V4's key order
        spec[key] = base[key]
    spec["added_tokens"] = added
    spec["model"] = model
    return spec


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, nargs="+", help="gen_data.py .jsonl file(s)")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="total vocabulary size including the added tokens")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dsv4", help="path of the dsv4 binary: render with `dsv4 render`")
    parser.add_argument("--base", default=V4_TOKENIZER_DIR,
                        help="V4 tokenizer directory whose structure and added tokens are copied")
    parser.add_argument("--merge-digits", action="store_true",
                        help="allow merges of digits (default: every digit is its own token)")
    args = parser.parse_args(argv)

    with open(os.path.join(args.base, "tokenizer.json"), encoding="utf-8") as f:
        base = json.load(f)
    with open(os.path.join(args.base, "tokenizer_config.json"), encoding="utf-8") as f:
        base_config = json.load(f)
    added_v4 = [t for t in base["added_tokens"] if not is_placeholder(t["content"])]
    kept = {t["content"] for t in added_v4}
    missing = [c for c in LEADING_SPECIALS if c not in kept]
    if missing:
        raise SystemExit(f"the base tokenizer lacks {missing}")

    conversations = []
    for path in args.data:
        with open(path, encoding="utf-8") as f:
            conversations += [json.loads(line) for line in f if line.strip()]
    if not conversations:
        raise SystemExit("no conversations in --data")
    texts = render_all(conversations, args.dsv4)

    # Word counts: split off added tokens (never learned), pre-tokenize each
    # distinct segment once (the data is templated and repeats a lot).
    splitter = hf_tokenizer.Tokenizer({
        "model": {"type": "BPE", "vocab": {}, "merges": []}, "added_tokens": added_v4,
        "pre_tokenizer": base["pre_tokenizer"], "normalizer": base["normalizer"]})
    segments = collections.Counter()
    for text in texts:
        for segment, is_added in splitter.split_added(text):
            if not is_added:
                segments[segment] += 1
    words = collections.Counter()
    for segment, count in segments.items():
        for piece in splitter.pre_tokenize(segment):
            words[piece] += count

    num_merges = args.vocab_size - len(added_v4) - 256
    if num_merges < 0:
        raise SystemExit(f"--vocab-size must be at least {len(added_v4) + 256} "
                         f"(256 bytes + {len(added_v4)} added tokens)")
    merges = BpeTrainer(words, args.merge_digits).train(num_merges)
    if len(merges) < num_merges:
        print(f"warning: only {len(merges)} merges occur at least twice; vocabulary is "
              f"{len(merges) + 256 + len(added_v4)} instead of {args.vocab_size}", file=sys.stderr)

    spec = build_spec(base, merges, added_v4)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(spec, indent=2, ensure_ascii=False))
    config = dict(base_config)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    tok = hf_tokenizer.Tokenizer(spec)
    ids = {"bos_token_id": tok.added[LEADING_SPECIALS[0]],
           "eos_token_id": tok.added[LEADING_SPECIALS[1]],
           "pad_token_id": tok.added[LEADING_SPECIALS[2]],
           "vocab_size": len(tok.id_to_token)}
    with open(os.path.join(args.out, "special_token_ids.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(ids, indent=2) + "\n")

    lengths = sorted(len(tok.encode(t)) for t in texts[:2000])
    print(json.dumps(dict(ids, merges=len(merges), conversations=len(texts),
                          tokens_median=lengths[len(lengths) // 2], tokens_max=lengths[-1],
                          share_le_256=round(sum(n <= 256 for n in lengths) / len(lengths), 3))))


if __name__ == "__main__":
    main()
