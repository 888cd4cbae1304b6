#!/bin/sh
# Builds the bundled demo model end to end (docs/demo-model.md):
#   data -> tokenizer -> ids/masks -> training (<= 2 h on 2 cores) -> export -> evaluation.
#
#   tools/demo/build_demo.sh [DSV4_BINARY]     (default build/dsv4; run from anywhere)
#
# Environment: WORK (default out/demo), MODEL (default models/dsv4-demo), PROCS (data-parallel
# training processes, default 2), THREADS (torch threads per process, default 1: on 2 cores two
# 1-thread processes train 1.6x faster than one, one 2-thread process slower, docs/demo-model.md),
# TIME_BUDGET (training seconds, default 6600), STEPS (default 20000, whichever ends first: the clock ends it),
# EVAL_LIMIT (engine: prompts to generate for the gates, default 0 = all 1000),
# TORCH_EVAL_LIMIT (the same with the PyTorch model, much slower per token: default 200).
# Rerunning after an interruption resumes training from $WORK/run/state.pt; delete $WORK to
# start over. Uses Debian's /usr/bin/python3 (torch 1.13, numpy, matplotlib).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DSV4=${1:-build/dsv4}
WORK=${WORK:-out/demo}
MODEL=${MODEL:-models/dsv4-demo}
THREADS=${THREADS:-1}
PROCS=${PROCS:-2}
TIME_BUDGET=${TIME_BUDGET:-6600}
STEPS=${STEPS:-20000}
EVAL_LIMIT=${EVAL_LIMIT:-0}
TORCH_EVAL_LIMIT=${TORCH_EVAL_LIMIT:-200}
PY=/usr/bin/python3
# Debian's torch calls the BLAS behind the libblas.so.3 alternative: the netlib reference BLAS
# unless an optimised one is installed (apt-get install libopenblas0-pthread: training runs 2x
# faster). OpenBLAS 0.3.21 misdetects recent Xeons as Prescott, so name the core from the flags.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512_bf16 /proc/cpuinfo; then OPENBLAS_CORETYPE=Cooperlake
  elif grep -qw avx512f /proc/cpuinfo; then OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then OPENBLAS_CORETYPE=Haswell
  fi
  [ -n "${OPENBLAS_CORETYPE:-}" ] && export OPENBLAS_CORETYPE
fi
case "$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null)" in
  */blas/libblas.so*) echo "build_demo.sh: torch will use the slow reference BLAS; apt-get install libopenblas0-pthread" >&2 ;;
esac
[ -x "$DSV4" ] || { echo "build_demo.sh: $DSV4 is not an executable dsv4 binary" >&2; exit 1; }
mkdir -p "$WORK"

# Each data step runs only when its output is missing (delete $WORK to regenerate everything).
[ -f "$WORK/train.jsonl" ] ||
  $PY tools/demo/gen_data.py --seed 1 --n 60000 --out "$WORK/train.jsonl" --meta "$WORK/train.meta.jsonl"
[ -f "$WORK/eval.jsonl" ] ||
  $PY tools/demo/gen_data.py --seed 2 --n 1000 --split eval --out "$WORK/eval.jsonl" --meta "$WORK/eval.meta.jsonl"
[ -f "$WORK/tokenizer/tokenizer.json" ] ||
  $PY tools/demo/train_tokenizer.py --data "$WORK/train.jsonl" --vocab-size 2048 --out "$WORK/tokenizer"
[ -f "$WORK/eval.npz" ] ||
  $PY tools/demo/prepare_data.py --data "$WORK/eval.jsonl" --tokenizer "$WORK/tokenizer" --out "$WORK/eval.npz"
[ -f "$WORK/train.npz" ] ||
  $PY tools/demo/prepare_data.py --data "$WORK/train.jsonl" --tokenizer "$WORK/tokenizer" \
      --max-tokens 768 --out "$WORK/train.npz"

$PY tools/demo/train.py --data "$WORK/train.npz" --eval-data "$WORK/eval.npz" --out "$WORK/run" \
    --procs "$PROCS" --threads "$THREADS" --time-budget "$TIME_BUDGET" --steps "$STEPS" \
    --loss-png docs/loss-curve.png --export "$MODEL" --tokenizer "$WORK/tokenizer"

# Engine vs PyTorch, teacher-forced on held-out conversations (gate: top-1 >= 99 %).
$PY tools/demo/compare_engine.py --model "$MODEL" --data "$WORK/eval.npz" --dsv4 "$DSV4" --n 50 \
    --min-top1 0.99 | tee "$WORK/compare.json"

# Gates on greedy answers, engine and PyTorch.
$PY tools/demo/eval.py prompts --data "$WORK/eval.jsonl" --meta "$WORK/eval.meta.jsonl" \
    --out "$WORK/prompts.jsonl"
$PY tools/demo/generate.py --model "$MODEL" --prompts "$WORK/prompts.jsonl" --dsv4 "$DSV4" \
    --limit "$EVAL_LIMIT" --out "$WORK/completions.engine.jsonl"
$PY tools/demo/generate.py --model "$MODEL" --prompts "$WORK/prompts.jsonl" --torch \
    --threads "$THREADS" --limit "$TORCH_EVAL_LIMIT" --out "$WORK/completions.torch.jsonl"
# eval.py scores every conversation of the file it is given: cut the data to the prompts generated.
cut_eval() {  # $1 = limit (0 = all), $2 = name
  if [ "$1" -gt 0 ]; then
    head -n "$1" "$WORK/eval.jsonl" > "$WORK/eval.$2.jsonl"
    head -n "$1" "$WORK/eval.meta.jsonl" > "$WORK/eval.$2.meta.jsonl"
  else
    cp "$WORK/eval.jsonl" "$WORK/eval.$2.jsonl"
    cp "$WORK/eval.meta.jsonl" "$WORK/eval.$2.meta.jsonl"
  fi
}
cut_eval "$TORCH_EVAL_LIMIT" torch
cut_eval "$EVAL_LIMIT" engine
for who in torch engine; do
  echo "== $who"
  $PY tools/demo/eval.py score --data "$WORK/eval.$who.jsonl" --meta "$WORK/eval.$who.meta.jsonl" \
      --completions "$WORK/completions.$who.jsonl" --dsv4 "$DSV4" | tee "$WORK/score.$who.json"
done
du -sh "$MODEL"
