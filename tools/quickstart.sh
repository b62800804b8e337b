#!/usr/bin/env bash
# The main job on a fresh machine: set up, then the built-in demo. Check the demo dataset,
# train a style LoRA on the project's own small pretrained base model (CPU only, a few
# minutes), and score it: the base model vs the LoRA on scenes the LoRA never saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
run="runs/demo-$(date +%Y%m%d-%H%M%S)"  # a new folder each time: earlier runs are kept
lora-train validate --preset demo
lora-train train --preset demo --out "$run"
lora-train demo-eval "$run"
echo "the previews are in $run/samples; open the run in the window: lora-studio, File > Open run"
