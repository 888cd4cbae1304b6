"""A small pure-Python reader of Hugging Face byte-level BPE `tokenizer.json` files.

It implements exactly the pipeline the DeepSeek V4 tokenizer uses (see
tests/data/tokenizer/README.md): added tokens matched first (leftmost, then
longest), a `Sequence` of `Split` pre-tokenizers with behaviour `Isolated`
followed by `ByteLevel`, ranked BPE merges, and the `ByteLevel` decoder. The
demo tokenizer has the same structure, so this one module encodes both; the
tests check it against the golden V4 tokenizations.

Only Python's `re` is available (no `regex` module in Debian's python3), so
the Split patterns are translated: `\\p{L}` `\\p{M}` `\\p{N}` `\\p{P}` `\\p{S}` become
explicit code-point ranges built from `unicodedata`, and `\\s`/`\\S` become the
Unicode White_Space set, which is what Oniguruma (used by Hugging Face) means.
"""

import functools
import json
import re
import sys
import unicodedata

# Unicode White_Space (PropList.txt); Python's own `\s` also matches U+001C..U+001F.
_WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table used by ByteLevel."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
                 list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _escape(cp):
    return "\\U%08x" % cp


@functools.lru_cache(maxsize=None)
def _category_class(major):
    """Regex class body (no brackets) matching Unicode general category `major` (e.g. 'L')."""
    ranges = []
    start = None
    for cp in range(sys.maxunicode + 1):
        inside = unicodedata.category(chr(cp))[0] == major
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    if start is not None:
        ranges.append((start, sys.maxunicode))
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in ranges)


def _white_space_class():
    return "".join(_escape(ord(c)) for c in _WHITE_SPACE)


def translate_pattern(pattern):
    """Rewrites an Oniguruma Split pattern into an equivalent Python `re` pattern."""
    out = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in "pP" and pattern.startswith("{", i + 2):
                end = pattern.index("}", i + 2)
                name = pattern[i + 3:end]
                if len(name) != 1 or nxt == "P":
                    raise ValueError(f"unsupported property {pattern[i:end + 1]!r} in {pattern!r}")
                body = _category_class(name)
                out.append(body if in_class else f"[{body}]")
                i = end + 1
                continue
            if nxt == "s":
                body = _white_space_class()
                out.append(body if in_class else f"[{body}]")
                i += 2
                continue
            if nxt == "S":
                if in_class:
                    raise ValueError(f"\\S inside a character class is not supported: {pattern!r}")
                out.append(f"[^{_white_space_class()}]")
                i += 2
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            # A ']' or '^]' right after '[' is literal; copy it so it does not close the class.
            if pattern.startswith("^", i + 1):
                out.append("^")
                i += 1
            i += 1
            continue
        if c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


class Tokenizer:
    """Encoder/decoder for one byte-level BPE tokenizer.json."""

    def __init__(self, spec):
        if isinstance(spec, str):
            with open(spec, encoding="utf-8") as f:
                spec = json.load(f)
        model = spec["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"only BPE models are supported, got {model.get('type')}")
        self.vocab = model["vocab"]
        merges = model["merges"]
        pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        self.merge_rank = {p: r for r, p in enumerate(pairs)}
        self.added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        self.special_ids = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        for content, i in self.added.items():
            self.id_to_token[i] = content
        self.added_ids = set(self.added.values())
        # Leftmost match; among matches at the same place the longest (alternation order).
        ordered = sorted(self.added, key=len, reverse=True)
        self.added_re = re.compile("|".join(re.escape(t) for t in ordered)) if ordered else None
        self.splits = []
        self.byte_level = False
        pre = spec.get("pre_tokenizer")
        if pre and pre["type"] == "Sequence":
            steps = pre["pretokenizers"]
        else:
            steps = [pre] if pre else []
        for step in steps:
            if step["type"] == "Split":
                if step.get("behavior") != "Isolated" or step.get("invert"):
                    raise ValueError(
                        "only Split with behavior Isolated and invert false is supported")
                pattern = step["pattern"]
                if "Regex" in pattern:
                    self.splits.append(re.compile(translate_pattern(pattern["Regex"])))
                else:
                    self.splits.append(re.compile(re.escape(pattern["String"])))
            elif step["type"] == "ByteLevel":
                if step.get("add_prefix_space") or step.get("use_regex"):
                    raise ValueError("only ByteLevel with add_prefix_space=false, use_regex=false")
                self.byte_level = True
            else:
                raise ValueError(f"unsupported pre-tokenizer {step['type']}")
        if not self.byte_level:
            raise ValueError("the pre-tokenizer must end in ByteLevel")
        normalizer = spec.get("normalizer")
        if normalizer and not (normalizer["type"] == "Sequence" and not normalizer["normalizers"]):
            raise ValueError("normalizers are not supported")

    # ------------------------------------------------------------------ encoding

    def split_added(self, text):
        """[(segment, is_added_token)] in order."""
        if self.added_re is None:
            return [(text, False)] if text else []
        out = []
        pos = 0
        for m in self.added_re.finditer(text):
            if m.start() > pos:
                out.append((text[pos:m.start()], False))
            out.append((m.group(), True))
            pos = m.end()
        if pos < len(text):
            out.append((text[pos:], False))
        return out

    def pre_tokenize(self, text):
        """Pieces of a segment without added tokens, before ByteLevel mapping."""
        pieces = [text]
        for regex in self.splits:
            nxt = []
            for piece in pieces:
                pos = 0
                for m in regex.finditer(piece):
                    if m.start() == m.end():
                        continue
                    if m.start() > pos:
                        nxt.append(piece[pos:m.start()])
                    nxt.append(m.group())
                    pos = m.end()
                if pos < len(piece):
                    nxt.append(piece[pos:])
            pieces = nxt
        return pieces

    @functools.lru_cache(maxsize=1 << 18)
    def bpe(self, piece):
        """Token strings for one byte-level piece (ranked merges, lowest rank first)."""
        symbols = [BYTE_TO_CHAR[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            best = None
            best_rank = None
            for i in range(len(symbols) - 1):
                rank = self.merge_rank.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best is None:
                break
            pair = (symbols[best], symbols[best + 1])
            merged = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def encode(self, text, added_tokens=True):
        ids = []
        segments = self.split_added(text) if added_tokens else ([(text, False)] if text else [])
        for segment, is_added in segments:
            if is_added:
                ids.append(self.added[segment])
                continue
            for piece in self.pre_tokenize(segment):
                for token in self.bpe(piece):
                    ids.append(self.vocab[token])
        return ids

    # ------------------------------------------------------------------ decoding

    def decode(self, ids, skip_special_tokens=False):
        buf = bytearray()
        for i in ids:
            if i in self.added_ids:
                if skip_special_tokens and i in self.special_ids:
                    continue
                buf += self.id_to_token[i].encode("utf-8")
            else:
                buf += bytes(CHAR_TO_BYTE[c] for c in self.id_to_token[i])
        return buf.decode("utf-8", errors="replace")
