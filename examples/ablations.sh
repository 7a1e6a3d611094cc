#!/usr/bin/env bash
# The paper's filtering ablation (the rebuttal's table; Table 1's PAE row) on one environment, rerunnable;
# every intermediate file kept. For each task format:
#   cat               the paper's SCA: Code-as-Task, every CaT check
#   eval-only         "SCA no filtering": instruction + evaluation function, nothing filtered
#   instruction-only  PAE: an instruction only, an LLM judge as the reward
# propose 800 tasks -> validate -> rollout ~15 per task -> train --algo rft -> eval (4 trials); the base model
# evaluated once (zero-shot); sca audit on the cat and eval-only pools, a labelling sheet per format (Figure 4);
# then one report comparing them (Pass@1 / Pass@4 per format beside the rebuttal's, the funnel per format,
# the lax rates, the hand-label rates once a sheet is labelled).
#   bash examples/ablations.sh
#   FORMATS="cat instruction-only" bash examples/ablations.sh
#   BACKEND=openai BASE_URL=http://gpu1:8000/v1 MODEL=llama-8b bash examples/ablations.sh
# Layout: $OUT/eval.base.jsonl, $OUT/<format>/{tasks.raw,tasks,trajectories,eval}.jsonl, $OUT/<format>/ckpt,
# $OUT/<format>/sheet.csv, $OUT/report/ (sca report tells each run's format by its directory).
# Figure 4 by hand: label $OUT/<format>/sheet.csv (column label: 1 = the task was really done, 0 = not),
# then run this script again: it reads the labels into $OUT/<format>/rates.json and redraws the report.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-meta-llama/Llama-3.1-8B-Instruct}   # the challenger, the executor, the judge and the base of training
BACKEND=${BACKEND:-vllm}                           # vllm | openai | hf
ENV=${ENV:-retail}                                 # the rebuttal: retail
OUT=${OUT:-runs/ablations-$ENV}
FORMATS=${FORMATS:-"cat eval-only instruction-only"}
TASKS=${TASKS:-800}                                # the paper: 800 tasks per method
K=${K:-15}                                         # ~15 rollouts per task (12k trajectories)
TRIALS=${TRIALS:-4}                                # Pass@1 over 4 trials, Pass@4
LIMIT=${LIMIT:-}                                   # eval on the first LIMIT benchmark tasks only (a smoke run)
USER_MODEL=${USER_MODEL:-$MODEL}                   # the paper trained with the 8B as user, evaluated with GPT-4o
JUDGE_MODEL=${JUDGE_MODEL:-$MODEL}                 # PAE's judge (its backend and server: the executor's)
AUDIT=${AUDIT:-1}                                  # 0: no sca audit
SHEET=${SHEET:-100}                                # trajectories per format on the labelling sheet (0: none)
ACCELERATE=${ACCELERATE:-"accelerate launch --config_file examples/accelerate/zero3.yaml"}
SANDBOX=${SANDBOX:-auto}

model_flags=(--model "$MODEL" --backend "$BACKEND")
if [[ -n "${BASE_URL:-}" ]]; then model_flags+=(--base-url "$BASE_URL"); fi
user_flags=(--user-model "$USER_MODEL")
if [[ -n "${USER_BACKEND:-}" ]]; then user_flags+=(--user-backend "$USER_BACKEND"); fi
if [[ -n "${USER_BASE_URL:-}" ]]; then user_flags+=(--user-base-url "$USER_BASE_URL"); fi
eval_flags=(--env "$ENV" --trials "$TRIALS" --sandbox "$SANDBOX" --retry-failed)
if [[ -n "$LIMIT" ]]; then eval_flags+=(--limit "$LIMIT"); fi
say() { printf '\n== %s\n' "$*" >&2; }
has_labels() {  # whether a labelling sheet has at least one label written in it
    python3 -c "import csv,sys; sys.exit(not any((r.get('label') or '').strip() for r in csv.DictReader(open(sys.argv[1]))))" "$1"
}
mkdir -p "$OUT"

say "zero-shot: the base model on the benchmark"
sca eval "${eval_flags[@]}" "${model_flags[@]}" "${user_flags[@]}" -o "$OUT/eval.base.jsonl"

for fmt in $FORMATS; do
    dir="$OUT/$fmt"
    mkdir -p "$dir"
    reward=(--reward evaluate)
    if [[ $fmt == instruction-only ]]; then reward=(--reward judge --judge-model "$JUDGE_MODEL"); fi

    say "$fmt: propose, validate, rollout"
    sca propose --env "$ENV" --task-format "$fmt" --n "$TASKS" "${model_flags[@]}" --concurrency 64 \
        --sandbox "$SANDBOX" -o "$dir/tasks.raw.jsonl" --rejected "$dir/episodes.failed.jsonl"
    sca validate "$dir/tasks.raw.jsonl" -o "$dir/tasks.jsonl" --rejected "$dir/tasks.rejected.jsonl" \
        --sandbox "$SANDBOX"
    sca rollout "$dir/tasks.jsonl" -o "$dir/trajectories.jsonl" --trials "$K" "${reward[@]}" "${model_flags[@]}" \
        "${user_flags[@]}" --concurrency 256 --sandbox "$SANDBOX" --retry-failed

    say "$fmt: train --algo rft, eval"
    if [[ ! -f "$dir/ckpt/train_summary.json" ]]; then   # a finished checkpoint is kept on a rerun
        $ACCELERATE -m sca_cli.app train "$dir/trajectories.jsonl" -o "$dir/ckpt" --algo rft --preset paper \
            --model "$MODEL" --overwrite
    fi
    trained_flags=("${model_flags[@]}")
    trained_flags[1]="$dir/ckpt"                   # the trained checkpoint, served the same way
    if [[ $BACKEND == openai ]]; then
        echo "serve $dir/ckpt on an OpenAI-compatible server, then run the next command with its URL" >&2
    fi
    sca eval "${eval_flags[@]}" "${trained_flags[@]}" "${user_flags[@]}" -o "$dir/eval.jsonl"

    if [[ $AUDIT != 0 && $fmt != instruction-only ]]; then
        say "$fmt: audit the verifiers (mutants of each task's solution)"
        sca audit "$dir/tasks.jsonl" -o "$dir/tasks.audit.jsonl" --sandbox "$SANDBOX"
    fi
    if [[ $SHEET != 0 ]]; then
        if [[ ! -f "$dir/sheet.csv" ]]; then       # never over a sheet someone may be labelling
            sca audit --sheet "$SHEET" "$dir/trajectories.jsonl" --tasks "$dir/tasks.jsonl" -o "$dir/sheet.csv"
            echo "label $dir/sheet.csv (1 = done, 0 = not), then run this script again for Figure 4" >&2
        elif has_labels "$dir/sheet.csv"; then
            sca audit --labels "$dir/sheet.csv" -o "$dir/rates.json"
        fi
    fi
done

say "report: the formats compared"
sca report "$OUT" -o "$OUT/report"
echo "outputs in $OUT/ (the report: $OUT/report/README.md)" >&2
