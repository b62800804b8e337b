#!/usr/bin/env bash
# Create .venv and install LoRA Studio with its test tools. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import trainer, pytest, pytestqt, importlinter" 2>/dev/null \
        || [ pyproject.toml -nt .venv/.installed ]; then
    python -m pip install -q --upgrade pip
    # torch first, pinned: on these machines it resolves to the local CPU wheel.
    python -m pip install -q "torch==2.13.0"
    python -m pip install -q -e ".[test]"
    touch .venv/.installed
fi
