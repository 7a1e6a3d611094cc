#!/usr/bin/env bash
# The main job on the built-in defaults: install sca (into ./.venv, see install.sh; skipped when done), then
# run the whole self-improvement loop (propose -> validate -> rollout -> train -> eval -> report) on the
# bundled small model, a local sandbox and retail, on CPU. Writes into ./runs/tiny-retail/. See
# examples/tiny_cpu.sh.
#
# Time: under 5 minutes on a 2-core machine (4 min 45 s measured beside other work, load average 4-5:
# train 2 min, generation in propose, rollout and eval 2 min, the rest start-ups and the report); the
# install adds a few minutes the first time (torch's CPU build, ~200 MB). On a busier machine each stage
# gets only its share of the CPU, so the run takes longer.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "quickstart: about 5 minutes on a 2-core machine (training 2, generation 2); longer on a busy machine;" \
     "the first install adds a few minutes" >&2
start=$SECONDS
if found=$(bash install.sh --check); then
    echo "quickstart: $found: install skipped (bash install.sh to install again)" >&2
else
    bash install.sh
fi
installed=$SECONDS
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    source "${SCA_VENV:-.venv}/bin/activate"  # what the user does after installing
fi
bash examples/tiny_cpu.sh
took() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
echo "quickstart: done in $(took $((SECONDS - start))): install $(took $((installed - start))), the loop" \
     "$(took $((SECONDS - installed))) (each stage's own summary above says where it went; load average" \
     "now: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown))" >&2
