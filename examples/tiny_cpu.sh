#!/usr/bin/env bash
# The whole self-improvement loop on the bundled SmolLM2-135M, on CPU, in about 10-15 minutes on 2 cores:
#   propose -> validate -> rollout -> train --algo rft -> eval (base and trained) -> report
# Every stage's output stays in $OUT to read by hand. Tiny settings: the point is the plumbing,
# not the numbers (a 135M model solves almost nothing; see self_improve.sh for the paper's recipe).
#   bash examples/tiny_cpu.sh                 retail (the default)
#   ENV=calculation bash examples/tiny_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${ENV:-retail}
OUT=${OUT:-runs/tiny-$ENV}
SANDBOX=${SANDBOX:-auto}
mkdir -p "$OUT"
say() { printf '\n== %s\n' "$*" >&2; }

say "the environment"
sca envs

say "1. propose: the challenger writes CaT tasks (a 135M model rarely writes a valid one; every episode is kept)"
sca propose --env "$ENV" --n 1 --max-episodes 1 --max-steps 2 --concurrency 1 --max-new-tokens 96 \
    --sandbox "$SANDBOX" -o "$OUT/tasks.raw.jsonl" --rejected "$OUT/episodes.failed.jsonl" --overwrite

say "2. validate: the proposed tasks, and hand-written ones easy enough for a 135M model to pass sometimes"
python3 - "$ENV" "$OUT" <<'PY'
import json, sys
env, out = sys.argv[1], sys.argv[2]
tiny = [json.loads(x) for x in open("examples/tiny_tasks.jsonl") if json.loads(x)["env"] == env]
with open(f"{out}/tasks.candidates.jsonl", "w") as f:
    for line in open(f"{out}/tasks.raw.jsonl"):
        f.write(line)
    for task in tiny:
        f.write(json.dumps(task) + "\n")
PY
sca validate "$OUT/tasks.candidates.jsonl" -o "$OUT/tasks.jsonl" --rejected "$OUT/tasks.rejected.jsonl" \
    --sandbox "$SANDBOX" --overwrite

say "3. rollout: the executor solves each valid task 4 times (the simulated user too, in retail)"
rewarded=0
for seed in 0 1 2; do
    sca rollout "$OUT/tasks.jsonl" -o "$OUT/trajectories.jsonl" --trials 4 --max-steps 2 --max-new-tokens 48 \
        --concurrency 8 --seed "$seed" --sandbox "$SANDBOX" --overwrite
    rewarded=$(python3 -c "import json,sys; print(sum(json.loads(l).get('reward') == 1 for l in open(sys.argv[1])))" \
        "$OUT/trajectories.jsonl")
    if [[ $rewarded -gt 0 ]]; then break; fi
    echo "no trajectory earned reward 1 with seed $seed: sampling again" >&2
done
if [[ $rewarded -eq 0 ]]; then
    echo "error: no trajectory earned reward 1 in 3 rollouts: rejection fine-tuning has nothing to learn from" >&2
    exit 1
fi

say "4. train: rejection fine-tuning on the $rewarded rewarded trajectories"
sca train "$OUT/trajectories.jsonl" -o "$OUT/ckpt" --algo rft --epochs 1 --overwrite

say "5. eval: the benchmark, base model and trained checkpoint (1 task, 1 trial: plumbing, not a measurement)"
sca eval --env "$ENV" --limit 1 --trials 1 --max-steps 2 --max-new-tokens 48 --sandbox "$SANDBOX" \
    -o "$OUT/eval.base.jsonl" --overwrite
sca eval --env "$ENV" --model "$OUT/ckpt" --limit 1 --trials 1 --max-steps 2 --max-new-tokens 48 \
    --sandbox "$SANDBOX" -o "$OUT/eval.trained.jsonl" --overwrite

say "6. report: every stage's tables and plots"
sca report "$OUT" -o "$OUT/report" --compare "$OUT/eval.base.jsonl" "$OUT/eval.trained.jsonl"
echo "outputs in $OUT/ (the report: $OUT/report/README.md)" >&2
