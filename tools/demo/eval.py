#!/usr/bin/python3
"""Evaluation of the demo model on held-out conversations (the issue #5 gates).

    gen_data.py --seed 2 --n 1000 --split eval --out eval.jsonl --meta eval.meta.jsonl
    eval.py prompts   --data eval.jsonl --meta eval.meta.jsonl --out prompts.jsonl
    (generate: for each prompt, the raw text the model writes after it, EOS included)
    eval.py score     --data eval.jsonl --meta eval.meta.jsonl --completions completions.jsonl
    eval.py reference --data eval.jsonl --meta eval.meta.jsonl --out completions.jsonl

`prompts` writes one line per conversation: {"index", "category", "input"} where
`input` is the conversation cut before the turn to be generated (`dsv4 render`
input), plus "prompt", its rendered text. A tool conversation is cut right
after the user's question, so the model must produce the DSML tool call.
`score` reads {"index", "text"} lines and parses every completion with the chat
layer's parser (`dsv4 parse`). `reference` writes the completions the data
itself contains, which must score 100 %.

Gates (the exit status is 1 when one fails, with --check-gates):
  thinking_closed   thinking-mode completions that close </think> and then answer  >= 95 %
  tool_dsml_parsed  tool prompts whose completion parses with >= 1 DSML tool call  >= 95 %
  tool_right        ... and the first call names the expected tool                 >= 90 %
  json_parsed       JSON-requested answers whose content parses as a JSON object   >= 90 %
  arithmetic_exact  2-digit +/- answers whose last number is the exact result      >= 90 %
"""

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import v4chat  # noqa: E402  pylint: disable=wrong-import-position

GATES = {"thinking_closed": 0.95, "tool_dsml_parsed": 0.95, "tool_right": 0.90,
         "json_parsed": 0.90, "arithmetic_exact": 0.90}


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def turns_to_generate(category):
    """How many trailing messages the model has to produce for a category."""
    # tool: assistant call, tool result, final answer -> generate the call.
    return 3 if category == "tool" else 1


def split_conversation(conv, meta):
    """(prompt input object, expected completion text) of one eval conversation."""
    cut = len(conv["messages"]) - turns_to_generate(meta["category"])
    prompt = dict(conv, messages=conv["messages"][:cut])
    full = dict(conv, messages=conv["messages"][:cut + 1])
    outputs = [text for text, is_output in v4chat.render_segments(full) if is_output]
    return prompt, outputs[-1]


def cmd_prompts(args):
    with open(args.out, "w", encoding="utf-8") as f:
        for i, (conv, meta) in enumerate(zip(load_jsonl(args.data), load_jsonl(args.meta))):
            prompt, _ = split_conversation(conv, meta)
            f.write(json.dumps({"index": i, "category": meta["category"], "input": prompt,
                                "prompt": v4chat.render(prompt)}, ensure_ascii=False) + "\n")
    return 0


def cmd_reference(args):
    with open(args.out, "w", encoding="utf-8") as f:
        for i, (conv, meta) in enumerate(zip(load_jsonl(args.data), load_jsonl(args.meta))):
            _, expected = split_conversation(conv, meta)
            f.write(json.dumps({"index": i, "text": expected}, ensure_ascii=False) + "\n")
    return 0


def loads_or_none(text):
    """json.loads, or None when the model wrote arguments that are not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_completion(dsv4, text, thinking):
    """The chat layer's parse of a completion, or None where it rejects it."""
    proc = subprocess.run([dsv4, "parse"], input=json.dumps(
        {"text": text, "thinking_mode": "thinking" if thinking else "chat"}, ensure_ascii=False),
                          capture_output=True, text=True, encoding="utf-8", check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def last_integer(text):
    numbers = re.findall(r"-?\d+", text or "")
    return int(numbers[-1]) if numbers else None


def score(data, metas, completions, dsv4):
    """Counts per metric: {name: [passed, total]}."""
    by_index = {c["index"]: c["text"] for c in completions}
    counts = {}

    def add(name, ok):
        passed, total = counts.get(name, (0, 0))
        counts[name] = (passed + int(bool(ok)), total + 1)

    for i, (conv, meta) in enumerate(zip(data, metas)):
        text = by_index.get(i)
        if text is None:
            raise SystemExit(f"no completion for index {i}")
        thinking = conv["thinking_mode"] == "thinking"
        category = meta["category"]
        parsed = parse_completion(dsv4, text, thinking)
        add("parsed", parsed is not None)
        if thinking:
            after = text.split(v4chat.THINK_END, 1)[1] if v4chat.THINK_END in text else ""
            add("thinking_closed", after.replace(v4chat.EOS, "").strip() != "")
        calls = (parsed or {}).get("tool_calls") or []
        content = (parsed or {}).get("content") or ""
        if category == "tool":
            add("tool_dsml_parsed", len(calls) >= 1)
            right = len(calls) >= 1 and calls[0]["function"]["name"] == meta["tool"]
            add("tool_right", right)
            add("tool_arguments_exact", right and loads_or_none(calls[0]["function"]["arguments"])
                == meta["arguments"])
        elif category == "tool_none":
            add("tool_none_answers_directly", parsed is not None and not calls and content.strip())
        elif category == "json":
            try:
                value = json.loads(content)
            except json.JSONDecodeError:
                value = None
            add("json_parsed", isinstance(value, dict))
            add("json_exact", value == meta["answer"])
        elif category == "arithmetic":
            add("arithmetic_exact", last_integer(content) == int(meta["answer"]))
            add(f"arithmetic_exact_{conv['thinking_mode']}",
                last_integer(content) == int(meta["answer"]))
            # Diagnostics: are the steps of the working true, and is it the asked problem?
            for x, op, y, z in re.findall(r"(-?\d+) ([+-]) (\d+) = (-?\d+)", text):
                add("arithmetic_steps_true",
                    (int(x) + int(y) if op == "+" else int(x) - int(y)) == int(z))
            add("arithmetic_operands_copied",
                f"{meta['a']} {meta['op']} {meta['b']}" in text or
                f"{meta['b']} - {meta['a']}" in text)
        elif category in ("qa", "multiturn") and meta.get("answer") is not None:
            add(f"{category}_answer_in_content", str(meta["answer"]).lower() in content.lower())
    return counts


def cmd_score(args):
    dsv4 = args.dsv4 or os.path.join(REPO, "build", "dsv4")
    if not os.path.exists(dsv4):
        raise SystemExit(
            f"dsv4 binary not found at {dsv4}; pass --dsv4 (it parses the completions)")
    counts = score(load_jsonl(args.data), load_jsonl(args.meta), load_jsonl(args.completions),
                   dsv4)
    report = {}
    failed = []
    for name, (passed, total) in sorted(counts.items()):
        rate = passed / total if total else 0.0
        entry = {"passed": passed, "total": total, "rate": round(rate, 4)}
        if name in GATES:
            entry["gate"] = GATES[name]
            if rate < GATES[name]:
                failed.append(name)
        report[name] = entry
    for name in GATES:
        if name not in counts:
            failed.append(name)
            report[name] = {"passed": 0, "total": 0, "rate": 0.0, "gate": GATES[name]}
    report["gates_failed"] = failed
    print(json.dumps(report, indent=2))
    return 1 if args.check_gates and failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("prompts", "reference", "score"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True, help="gen_data.py --split eval output")
        p.add_argument("--meta", required=True, help="its --meta file")
        if name == "score":
            p.add_argument("--completions", required=True, help='{"index", "text"} lines')
            p.add_argument("--dsv4", help="dsv4 binary (default: build/dsv4)")
            p.add_argument("--check-gates", action="store_true", help="exit 1 if a gate fails")
        else:
            p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return {"prompts": cmd_prompts, "reference": cmd_reference, "score": cmd_score}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
