#!/usr/bin/env bash
# The main job on the built-in defaults: the bundled small model, a local sandbox, retail.
# Installs sca first (see install.sh). Writes into ./runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh
OUT=runs/quickstart
mkdir -p "$OUT"

sca envs
sca envs show retail --no-policy

# The CaT filter on hand-written tasks: valid ones, and one defect per check.
python3 examples/write_demo_tasks.py > "$OUT/demo_tasks.jsonl"
sca validate "$OUT/demo_tasks.jsonl" -o "$OUT/demo.valid.jsonl" --rejected "$OUT/demo.rejected.jsonl" --overwrite

# The challenger, on the bundled SmolLM2-135M on CPU: a small model rarely writes a valid task,
# but every episode, valid or not, is kept with its transcript.
# On 2 CPU cores each step reads the ~6.7k-token retail prompt: a few minutes in all.
sca propose --env retail --n 1 --max-episodes 2 --max-steps 2 --concurrency 2 --max-new-tokens 128 \
    -o "$OUT/tasks.raw.jsonl" --rejected "$OUT/episodes.failed.jsonl" --overwrite
echo "outputs in $OUT/"
