"""A comparison grid: prompts x checkpoints x LoRA strengths, rendered with fixed seeds, to
answer "which checkpoint should I keep?" by eye (A1111's XYZ-plot habit).

Every picture is cached under the hash of what decides it: the checkpoint's LoRA file (its
bytes), the prompt line's settings, the seed, the strength, the sampler and the size; strength
0 is the base model, one picture whatever the checkpoint. A grid whose pictures are all cached
is put together without loading a model. `trainer.grid_image` draws the labelled sheet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from trainer.atomic import atomic_write_bytes
from trainer.config import TrainConfig
from trainer.config_io import ConfigError, build_config, load_config_data
from trainer.sampling import PromptSpec, parse_prompt_line


@dataclass(frozen=True)
class GridCheckpoint:
    """One column group of the grid: a saved checkpoint of a run."""

    folder: Path
    step: int
    config: TrainConfig
    lora_hash: str

    @property
    def label(self) -> str:
        return f"{self.folder.parent.parent.name} step {self.step}"


def read_checkpoint(folder: Path) -> GridCheckpoint:
    """A checkpoint folder (`RUN/checkpoints/step-NNNNNN`) as the grid uses it."""
    folder = Path(folder)
    lora, config_file = folder / "lora.safetensors", folder / "config.toml"
    if not lora.is_file() or not config_file.is_file():
        raise ConfigError(f"{folder} is not a checkpoint folder (it needs lora.safetensors and "
                          "config.toml); pass a run folder or its checkpoints/step-NNNNNN")
    digest = hashlib.sha256(lora.read_bytes()).hexdigest()
    config = build_config(load_config_data(config_file), source=str(config_file))
    return GridCheckpoint(folder, int(folder.name.split("-")[-1]), config, digest)


def checkpoints_in(path: Path) -> list[GridCheckpoint]:
    """A run folder (every checkpoint it kept, oldest first) or one checkpoint folder."""
    path = Path(path)
    if (path / "lora.safetensors").is_file():
        return [read_checkpoint(path)]
    found = sorted((path / "checkpoints").glob("step-*")) if path.is_dir() else []
    if not found:
        raise ConfigError(f"{path} holds no checkpoint (looked in {path / 'checkpoints'})")
    return [read_checkpoint(folder) for folder in found]


@dataclass(frozen=True)
class GridRequest:
    checkpoints: list[GridCheckpoint]
    prompts: list[PromptSpec]
    strengths: list[float]
    sampler: str
    model: Path  # the base every checkpoint was trained on


def make_request(checkpoints: list[GridCheckpoint], prompt_lines: list[str],
                 strengths: list[float], sampler: str, *, steps: int, guidance: float,
                 seed: int, model: Path | None = None) -> GridRequest:
    """Check the choices and fix every picture's settings (the size: the first run's)."""
    if not checkpoints or not prompt_lines or not strengths:
        raise ConfigError("a grid needs at least one checkpoint, one prompt and one strength")
    models = {str(c.config.model.path) for c in checkpoints}
    if model is None and len(models) > 1:
        raise ConfigError(f"the checkpoints come from runs of different base models "
                          f"({', '.join(sorted(models))}); compare runs of one base, or pass "
                          "--model to render them all on one")
    side = checkpoints[0].config.dataset.resolution
    defaults = PromptSpec(prompt="", width=side, height=side, steps=steps, scale=guidance,
                          seed=seed)
    prompts = [parse_prompt_line(line, defaults) for line in prompt_lines if line.strip()]
    return GridRequest(checkpoints, prompts, list(strengths), sampler,
                       Path(model or checkpoints[0].config.model.path))


def cell_key(request: GridRequest, checkpoint: GridCheckpoint, prompt: PromptSpec,
             strength: float) -> str:
    """The cache name of one picture: what decides its pixels, hashed."""
    decided = {"lora": checkpoint.lora_hash if strength else "", "strength": strength,
               "prompt": asdict(replace(prompt, strength=0.0)), "sampler": request.sampler,
               "model": str(request.model)}
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:32]


class _Renderers:
    """The base model loaded once, a LoRA per checkpoint loaded into it as it is needed."""

    def __init__(self, request: GridRequest) -> None:
        self.request, self.base, self.network, self.renderer = request, None, None, None
        self.shape, self.loaded = "", ""  # the network's settings; the LoRA in it (its hash)

    def render(self, checkpoint: GridCheckpoint, prompt: PromptSpec, strength: float) -> bytes:
        from safetensors.torch import load_file

        from trainer.models import load_base_model
        from trainer.network import apply_lora_to
        from trainer.sampling import PreviewRenderer

        network_config = checkpoint.config.network.model_copy(update={"init_from": None})
        shape = network_config.model_dump_json()
        if self.base is None or (strength and shape != self.shape):
            self.base = load_base_model(self.request.model)  # a LoRA of another shape: afresh
            self.network = apply_lora_to(self.base, network_config)
            self.renderer = PreviewRenderer(self.base, self.network, baseline=False,
                                            sampler=self.request.sampler)
            self.shape, self.loaded = shape, ""
        if strength and self.loaded != checkpoint.lora_hash:
            self.network.load_state_dict(load_file(checkpoint.folder / "lora.safetensors"))
            self.loaded = checkpoint.lora_hash
        return self.renderer.render(prompt, strength)


def render_cells(request: GridRequest, cache: Path,
                 progress: Callable[[int, int, bool], None] = lambda done, total, hit: None,
                 ) -> list[list[list[Path]]]:
    """Every picture as a cached PNG: cells[prompt][checkpoint][strength]. `progress(done,
    total, cached)` after each one."""
    cache.mkdir(parents=True, exist_ok=True)
    renderers = _Renderers(request)
    total = len(request.prompts) * len(request.checkpoints) * len(request.strengths)
    cells, done = [], 0
    for prompt in request.prompts:
        rows = []
        for checkpoint in request.checkpoints:
            row = []
            for strength in request.strengths:
                file = cache / f"{cell_key(request, checkpoint, prompt, strength)}.png"
                hit = file.is_file()
                if not hit:
                    atomic_write_bytes(file, renderers.render(checkpoint, prompt, strength))
                row.append(file)
                done += 1
                progress(done, total, hit)
            rows.append(row)
        cells.append(rows)
    return cells
