#!/usr/bin/env bash
# Set up a venv (if missing) and run the whole test suite: the fast tests, then the slow ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen
lint-imports
python -m pytest -q -p no:cacheprovider
python -m pytest -q -p no:cacheprovider -m slow || { rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }
