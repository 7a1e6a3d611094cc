#!/usr/bin/env bash
# The paper's distillation recipe: a stronger teacher proposes and rolls out, the student is
# fine-tuned on all of the teacher's trajectories (--algo sft), then both are compared on the
# benchmark. Every intermediate file kept.
#   bash examples/distill.sh
#   TEACHER=meta-llama/Llama-3.1-70B-Instruct STUDENT=meta-llama/Llama-3.1-8B-Instruct bash examples/distill.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER=${TEACHER:-meta-llama/Llama-3.1-70B-Instruct}
STUDENT=${STUDENT:-meta-llama/Llama-3.1-8B-Instruct}
BACKEND=${BACKEND:-vllm}                           # vllm | openai | hf
ENV=${ENV:-retail}
OUT=${OUT:-runs/distill-$ENV}
TASKS=${TASKS:-800}
K=${K:-15}
TRIALS=${TRIALS:-4}
ACCELERATE=${ACCELERATE:-"accelerate launch --config_file examples/accelerate/zero3.yaml"}
SANDBOX=${SANDBOX:-auto}

teacher_flags=(--model "$TEACHER" --backend "$BACKEND")
if [[ -n "${BASE_URL:-}" ]]; then teacher_flags+=(--base-url "$BASE_URL"); fi
mkdir -p "$OUT"

sca propose --env "$ENV" --n "$TASKS" "${teacher_flags[@]}" --concurrency 64 --sandbox "$SANDBOX" \
    -o "$OUT/tasks.raw.jsonl" --rejected "$OUT/episodes.failed.jsonl"
sca validate "$OUT/tasks.raw.jsonl" -o "$OUT/tasks.jsonl" --rejected "$OUT/tasks.rejected.jsonl" --sandbox "$SANDBOX"
sca rollout "$OUT/tasks.jsonl" -o "$OUT/trajectories.jsonl" --trials "$K" "${teacher_flags[@]}" --concurrency 256 \
    --sandbox "$SANDBOX" --retry-failed
$ACCELERATE -m sca_cli.app train "$OUT/trajectories.jsonl" -o "$OUT/ckpt" --algo sft --preset paper --model "$STUDENT"
sca eval --env "$ENV" --trials "$TRIALS" --model "$STUDENT" --backend "$BACKEND" --sandbox "$SANDBOX" \
    -o "$OUT/eval.student.jsonl" --retry-failed
sca eval --env "$ENV" --trials "$TRIALS" --model "$OUT/ckpt" --backend "$BACKEND" --sandbox "$SANDBOX" \
    -o "$OUT/eval.distilled.jsonl" --retry-failed
sca report "$OUT" -o "$OUT/report" --compare "$OUT/eval.student.jsonl" "$OUT/eval.distilled.jsonl"
