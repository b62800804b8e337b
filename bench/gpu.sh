#!/usr/bin/env bash
# The GPU bench, one prepared script (bench/gpu.py does the measuring; its docstring lists what
# each section prints). Needs nothing from the internet.
#
#   bash bench/gpu.sh                  # on a machine with an NVIDIA GPU: at most ~8 minutes
#   bash bench/gpu.sh --budget 300     # a smaller time budget (default 420 s); sections that
#                                      # would overrun it are skipped with a line saying so
#   bash bench/gpu.sh --dry-run        # on a CPU machine: the same code paths, tiny model, fp32
#   bash bench/gpu.sh --fetch-wheels   # here (PyPI reachable): the cp312 wheels into .whl/
#
# Other options go to bench/gpu.py (--sections tests,sweep,vram,sdxl,ratio,multi --steps N
# --batch 1 4 8 --vram-precision fp16 --sdxl-precision bf16 --peak-tflops X --keep).
#
# Wheels: a GPU machine without diffusers (and pydantic, tomli-w, prodigyopt, lion-pytorch;
# transformers and peft at the project's pins) gets them from .whl/ (or $GPU_BENCH_WHEELS): every
# *.whl there is installed with --no-deps into a temp folder put first on PYTHONPATH. Make them
# once with --fetch-wheels (about 23 MB; the working tree plus .whl must stay under the device
# tool's 64 MiB), keep .whl/ ignored (`echo /.whl/ >> .git/info/exclude`), then on the device
# tool: run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=570).
#
# The big models (SD 1.5 layout ~4 GB folder, SDXL layout ~6.9 GB file, random weights) are built
# into $LORA_STUDIO_BENCH_CACHE, by default a folder under ${TMPDIR:-/tmp} here (not ~/.cache).
# The whole run is capped at the budget + 60 s (SIGTERM: gpu.py prints its summary and stops).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

if [ -n "${PYTHON:-}" ]; then
    :
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PYTHON=.venv/bin/python
else
    PYTHON=python3
fi

WHEELS=${GPU_BENCH_WHEELS:-$ROOT/.whl}
# What the GPU image lacks (or has at another version than pyproject.toml pins), at the versions
# this checkout's environment has; pydantic_core is compiled, hence --python-version 3.12.
WHEEL_NAMES="diffusers transformers peft pydantic pydantic_core annotated_types typing_inspection
typing_extensions tomli_w prodigyopt lion_pytorch"

if [ "${1:-}" = "--fetch-wheels" ]; then
    specs=$("$PYTHON" - $WHEEL_NAMES <<'EOF'
import importlib.metadata as md, sys
print(" ".join(f"{name}=={md.version(name)}" for name in sys.argv[1:]))
EOF
    ) || exit 1
    mkdir -p "$WHEELS"
    echo "downloading into $WHEELS: $specs"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" $specs || exit 1
    du -sh "$WHEELS"
    if [ "$WHEELS" = "$ROOT/.whl" ] && ! git check-ignore -q .whl 2>/dev/null; then
        echo "note: .whl/ is not ignored; run: echo /.whl/ >> .git/info/exclude"
    fi
    exit 0
fi

dry=0
budget=420
prev=""
for arg in "$@"; do
    [ "$arg" = "--dry-run" ] && dry=1
    [ "$prev" = "--budget" ] && budget=$arg
    case "$arg" in --budget=*) budget=${arg#--budget=} ;; esac
    prev=$arg
done

if [ "$dry" = 0 ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench-site.XXXXXX")
    start=$SECONDS
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$WHEELS"/*.whl || { echo "installing the wheels failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $site ($((SECONDS - start)) s)"
fi

if [ "$dry" = 0 ]; then
    export LORA_STUDIO_BENCH_CACHE=${LORA_STUDIO_BENCH_CACHE:-${TMPDIR:-/tmp}/lora-studio-bench-cache}
    mkdir -p "$LORA_STUDIO_BENCH_CACHE"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
    df -h "$LORA_STUDIO_BENCH_CACHE" | tail -1
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
cap=$(awk -v b="$budget" 'BEGIN { printf "%d", b + 60 }')
if command -v timeout >/dev/null; then
    timeout -s TERM -k 20 "$cap" "$PYTHON" bench/gpu.py "$@"
else
    "$PYTHON" bench/gpu.py "$@"
fi
rc=$?
[ "$rc" = 124 ] && echo "gpu.sh: stopped at the ${cap} s cap (budget $budget s + 60)"
exit "$rc"
