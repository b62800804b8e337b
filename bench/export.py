"""Export and verify at full size: time and file size of the LoRA file for rank 16 and 64,
attention-only and with the text encoder, in fp16.

For each case the network is attached to a freshly loaded base model (no training) with random
nonzero weights (peft's lora_A, and lora_B ~ N(0, 0.01) instead of zeros), then timed:
export = the loop's own `training_metadata` + `write_lora_file` (cast, hash, atomic write,
fsync); verify = `verify_lora_file` against the base model (every file rule, then diffusers'
`load_lora_weights` into a pipeline of the base, fused weights and outputs compared): what
`lora-train export` / `lora-train verify` run.

    python bench/export.py --size tiny                # seconds
    python bench/export.py                            # SD 1.5 layout, rank 16 and 64

Last line: `export_verify_s X`, export + verify seconds of the largest case (rank 64 with the
text encoder).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import common


def make_lora_file(config, model: Path, out: Path) -> tuple[float, int]:
    """(seconds to export, trainable parameters) of a random-weight LoRA for `config`."""
    import torch

    from trainer.checkpoint import TrainingPosition
    from trainer.data import scan_dataset
    from trainer.export import write_lora_file
    from trainer.metadata import training_metadata
    from trainer.models import load_base_model
    from trainer.network import apply_lora

    report = scan_dataset(config)
    base = load_base_model(model)
    torch.manual_seed(0)
    network = apply_lora(base.unet, base.text_encoder, config.network)
    with torch.no_grad():
        for up in network.parameters()[1::2]:  # (lora_A, lora_B) per layer
            up.normal_(0, 0.01)
    position = TrainingPosition(step=1, epoch=0, batch_in_epoch=1, total_steps=1)
    start = time.perf_counter()
    meta = training_metadata(config, report, base, position, time.time(), 1)
    write_lora_file(out, network.state_dict(), meta, config.output.save_precision)
    return time.perf_counter() - start, network.trainable_parameter_count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    from trainer.cli_lora import _quiet
    from trainer.verify import verify_lora_file

    _quiet()  # no progress bars or loader notes between the rows, as in `lora-train verify`
    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    model = common.base_model(args.size, root)
    data = common.dataset(root, 64, count=2)
    ranks = [min(r, 32) for r in args.ranks] if args.size == "tiny" else args.ranks
    print(f"{args.size}, fp16 files, U-Net attention on every block (128 projections at SD 1.5 "
          f"size); {common.machine_line()}")
    print("rank  text encoder  parameters  export s  verify s  file MiB  checks")
    total = 0.0
    for rank in ranks:
        for text_encoder in (False, True):
            config = common.bench_config(model, data, 64, steps=1, rank=rank, network={
                "train_text_encoder": text_encoder}, output={"save_precision": "fp16"})
            path = root / f"r{rank}{'-te' if text_encoder else ''}.safetensors"
            export_s, parameters = make_lora_file(config, model, path)
            gc.collect()
            start = time.perf_counter()
            report = verify_lora_file(path, model)
            verify_s = time.perf_counter() - start
            gc.collect()
            print(f"{rank:<6d}{'yes' if text_encoder else 'no':<14s}{parameters:>10,d}"
                  f"{export_s:>10.2f}{verify_s:>10.2f}{path.stat().st_size / 2**20:>10.2f}  "
                  f"{len(report.checks) - len(report.failures)}/{len(report.checks)} ok; "
                  f"{common.load_average()}", flush=True)
            if not report.ok:
                print(report.format())
                raise SystemExit("verify failed")
            total = export_s + verify_s
    print(f"export_verify_s {total:.2f}")


if __name__ == "__main__":
    main()
