#!/usr/bin/env bash
# The main job on a fresh machine: set up, build a tiny SD 1.x model and a small dataset,
# validate it, train a LoRA for 200 steps on the CPU, and print where the file is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
work=runs/quickstart
rm -rf "$work"
mkdir -p "$work"
lora-train make-tiny-model "$work/tiny-model"
python tools/make_shapes_dataset.py "$work/data"
lora-train validate --preset tiny-cpu --model "$work/tiny-model" --data "$work/data"
lora-train train --preset tiny-cpu --model "$work/tiny-model" --data "$work/data" \
    --out "$work/run" --name quickstart --steps 200 \
    --set 'sampling.prompts=["a red circle, white background --d 7"]' \
    --set sampling.every_n_steps=100
