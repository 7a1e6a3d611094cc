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
sca propose --env retail --n 2 --max-episodes 4 --max-steps 4 --max-new-tokens 256 \
    -o "$OUT/tasks.raw.jsonl" --rejected "$OUT/episodes.failed.jsonl"
echo "outputs in $OUT/"
