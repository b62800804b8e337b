"""`lora-train demo-eval RUN_DIR`: did the demo LoRA learn the style? Base vs trained.

Renders the held-out scenes (never in the demo dataset) with the run's exported LoRA at
strength 0 (the base model) and 1, with the same seeds, and compares their palette distance
to the demo style. Writes demo-eval.json and demo-eval.png (baseline row over trained row)
into the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from trainer.atomic import atomic_write_text
from trainer.config_io import ConfigError, build_config, load_config_data
from trainer.demo.render import render_captions, render_grid
from trainer.demo.style_score import held_out_prompts, improvement, palette_distance
from trainer.runs import summarize_run

RESULT_FILE = "demo-eval.json"
GRID_FILE = "demo-eval.png"


class DemoEvalError(ConfigError):
    """The run folder cannot be evaluated (no config, no exported LoRA)."""


@dataclass(frozen=True)
class DemoEvaluation:
    lora_file: Path
    captions: list[str]
    baseline: list[float]  # palette distance per held-out picture, strength 0
    trained: list[float]   # the same pictures at strength 1

    @property
    def improvement(self) -> float:
        return improvement(self.baseline, self.trained)

    def as_dict(self) -> dict:
        return {"lora_file": str(self.lora_file), "captions": self.captions,
                "baseline_distance": round(mean(self.baseline), 4),
                "trained_distance": round(mean(self.trained), 4),
                "improvement": round(self.improvement, 4),
                "baseline": [round(x, 4) for x in self.baseline],
                "trained": [round(x, 4) for x in self.trained]}


def exported_lora(run_dir: Path) -> Path:
    if not (run_dir / "config.toml").is_file():
        raise DemoEvalError(f"{run_dir} is not a run folder (no config.toml); pass the folder "
                            "`lora-train train --out` wrote")
    files = summarize_run(run_dir).lora_files
    existing = [Path(f) if Path(f).is_absolute() else run_dir / f for f in files]
    existing = [f for f in existing if f.is_file()]
    if not existing:
        raise DemoEvalError(f"{run_dir} has no exported LoRA file yet; let the run finish (or "
                            f"resume it: lora-train train --resume {run_dir})")
    return existing[-1]


def evaluate_run(run_dir: Path) -> DemoEvaluation:
    """Score the run's last exported LoRA on the held-out scenes and write the results."""
    import torch

    from trainer.init_from import init_network_from
    from trainer.models import load_base_model
    from trainer.network import apply_lora
    from trainer.sampling import PreviewRenderer

    run_dir = Path(run_dir)
    lora_file = exported_lora(run_dir)
    config = build_config(load_config_data(run_dir / "config.toml"), source=str(run_dir))
    if config.precision.threads:
        torch.set_num_threads(config.precision.threads)  # as the run did (1 for the demo)
    base = load_base_model(config.model.path)
    torch.manual_seed(0)  # peft's init draws from the global RNG; the file overwrites it anyway
    network = apply_lora(base.unet, base.text_encoder, config.network.model_copy(update={"init_from": None}))
    init_network_from(network, lora_file)
    renderer = PreviewRenderer(base, network, baseline=False)

    prompts = held_out_prompts()
    captions = [scene.caption() for scene, _ in prompts]
    seeds = [seed for _, seed in prompts]
    before = render_captions(renderer, captions, seeds, strength=0.0)
    after = render_captions(renderer, captions, seeds, strength=1.0)
    result = DemoEvaluation(lora_file, captions, [palette_distance(i) for i in before],
                            [palette_distance(i) for i in after])
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result.as_dict(), indent=2) + "\n")
    grid = render_grid(before + after, columns=len(before))
    grid.save(run_dir / f".{GRID_FILE}.tmp", format="PNG")
    (run_dir / f".{GRID_FILE}.tmp").replace(run_dir / GRID_FILE)
    return result


def report(result: DemoEvaluation) -> str:
    return "\n".join([
        f"LoRA: {result.lora_file}",
        f"held-out pictures: {len(result.baseline)} ({len(set(result.captions))} scenes)",
        "palette distance to the demo style, lower is closer (0 = only the style's colours):",
        f"  base model (strength 0): {mean(result.baseline):.4f}",
        f"  with the LoRA (strength 1): {mean(result.trained):.4f}",
        f"style score improvement: {result.improvement:.1%}",
    ])
