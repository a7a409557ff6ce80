#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtual environment in .venv with pvd and its test extras.
# Where the system Python already has torch (a GPU machine), the venv reuses it; otherwise it installs
# torch==2.13.0, which on the project's CPU machines is a CPU build that lies on disk (a plain `torch`
# requirement would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        "$PYTHON" -m venv --system-site-packages .venv
    else
        "$PYTHON" -m venv .venv
    fi
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -e ".[test]"
.venv/bin/python -c "import torch, triton; print(f'pvd set up: torch {torch.__version__}, triton {triton.__version__}, cuda {torch.cuda.is_available()}')"
