#!/usr/bin/env bash
# The main job on the built-in defaults: install sca (into ./.venv, see install.sh), then run the whole
# self-improvement loop (propose -> validate -> rollout -> train -> eval -> report) on the bundled small
# model, a local sandbox and retail, on CPU. Writes into ./runs/tiny-retail/. See examples/tiny_cpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    source "${SCA_VENV:-.venv}/bin/activate"  # what the user does after installing
fi
bash examples/tiny_cpu.sh
