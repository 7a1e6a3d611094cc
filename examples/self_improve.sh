#!/usr/bin/env bash
# The paper's self-improvement recipe on one environment, rerunnable; every intermediate file kept.
#   propose 800 tasks -> validate -> rollout ~15 per task -> train --algo rft -> eval (4 trials),
#   before and after, -> report comparing base and trained.
# For GPUs: vLLM for inference (or OpenAI-compatible servers), TRL (accelerate) for training.
#   bash examples/self_improve.sh
#   MODEL=Qwen/Qwen2.5-7B-Instruct ENV=calculation bash examples/self_improve.sh
#   BACKEND=openai BASE_URL=http://gpu1:8000/v1 MODEL=llama-8b bash examples/self_improve.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-meta-llama/Llama-3.1-8B-Instruct}   # the challenger, the executor and the base of training
BACKEND=${BACKEND:-vllm}                           # vllm | openai | hf
ENV=${ENV:-retail}
OUT=${OUT:-runs/self-improve-$ENV}
TASKS=${TASKS:-800}                                # the paper: 800 tasks
K=${K:-15}                                         # ~15 rollouts per task (12k trajectories)
TRIALS=${TRIALS:-4}                                # Pass@1 over 4 trials, Pass@4
USER_MODEL=${USER_MODEL:-$MODEL}                   # the paper trained with the 8B as user, evaluated with GPT-4o
ACCELERATE=${ACCELERATE:-"accelerate launch --config_file examples/accelerate/zero3.yaml"}
SANDBOX=${SANDBOX:-auto}

model_flags=(--model "$MODEL" --backend "$BACKEND")
if [[ -n "${BASE_URL:-}" ]]; then model_flags+=(--base-url "$BASE_URL"); fi
user_flags=(--user-model "$USER_MODEL")
if [[ -n "${USER_BACKEND:-}" ]]; then user_flags+=(--user-backend "$USER_BACKEND"); fi
if [[ -n "${USER_BASE_URL:-}" ]]; then user_flags+=(--user-base-url "$USER_BASE_URL"); fi
mkdir -p "$OUT"

sca propose --env "$ENV" --n "$TASKS" "${model_flags[@]}" --concurrency 64 --sandbox "$SANDBOX" \
    -o "$OUT/tasks.raw.jsonl" --rejected "$OUT/episodes.failed.jsonl"
sca validate "$OUT/tasks.raw.jsonl" -o "$OUT/tasks.jsonl" --rejected "$OUT/tasks.rejected.jsonl" --sandbox "$SANDBOX"
sca rollout "$OUT/tasks.jsonl" -o "$OUT/trajectories.jsonl" --trials "$K" "${model_flags[@]}" "${user_flags[@]}" \
    --concurrency 256 --sandbox "$SANDBOX" --retry-failed
$ACCELERATE -m sca_cli.app train "$OUT/trajectories.jsonl" -o "$OUT/ckpt" --algo rft --preset paper \
    --model "$MODEL"
sca eval --env "$ENV" --trials "$TRIALS" "${model_flags[@]}" "${user_flags[@]}" --sandbox "$SANDBOX" \
    -o "$OUT/eval.base.jsonl" --retry-failed
base_flags=("${model_flags[@]}")
base_flags[1]="$OUT/ckpt"                          # the trained checkpoint, served the same way
if [[ $BACKEND == openai ]]; then
    echo "serve $OUT/ckpt on an OpenAI-compatible server, then run the next command with its URL" >&2
fi
sca eval --env "$ENV" --trials "$TRIALS" "${base_flags[@]}" "${user_flags[@]}" --sandbox "$SANDBOX" \
    -o "$OUT/eval.trained.jsonl" --retry-failed
sca report "$OUT" -o "$OUT/report" --compare "$OUT/eval.base.jsonl" "$OUT/eval.trained.jsonl"
