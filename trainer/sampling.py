"""Preview images during training, from prompt lines in kohya's syntax.

`a red fox --n blurry --w 512 --h 512 --s 20 --l 7 --d 1234 --m 0.8` = prompt, negative prompt,
width, height, steps, guidance scale, seed, LoRA strength. Each prompt is also rendered at
strength 0 (the base model) with the same seed, so images are comparable over time. Rendering
never touches the training random streams: torch's global RNG is forked around it and the
sampler uses its own seeded generator.
"""

from __future__ import annotations

import io
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from trainer.config import SamplingConfig
from trainer.events import Sample
from trainer.network import LoraNetwork

OPTION = re.compile(r"(?:^|\s)--([nwhsldm])(?=\s|$)")


class PromptError(ValueError):
    """A preview prompt line cannot be read."""


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    scale: float = 7.0
    seed: int = 1234
    strength: float = 1.0


def parse_prompt_line(line: str, defaults: PromptSpec) -> PromptSpec:
    """One kohya prompt line -> PromptSpec; unknown or bad options name themselves."""
    pieces = OPTION.split(line.strip())
    spec = replace(defaults, prompt=pieces[0].strip())
    converters: dict[str, tuple[str, Callable[[str], object]]] = {
        "n": ("negative", str), "w": ("width", int), "h": ("height", int), "s": ("steps", int),
        "l": ("scale", float), "d": ("seed", int), "m": ("strength", float)}
    for flag, raw in zip(pieces[1::2], pieces[2::2]):
        field_name, convert = converters[flag]
        try:
            value = convert(raw.strip())
        except ValueError:
            raise PromptError(f"preview prompt {line!r}: --{flag} needs a number, got "
                              f"{raw.strip()!r}") from None
        spec = replace(spec, **{field_name: value})
    if not spec.prompt:
        raise PromptError(f"preview prompt {line!r} has no text before its options")
    if spec.width % 8 or spec.height % 8 or min(spec.width, spec.height) < 64:
        raise PromptError(f"preview prompt {line!r}: --w/--h must be multiples of 8, at least 64")
    return spec


def prompt_specs(config: SamplingConfig, resolution: int) -> list[PromptSpec]:
    defaults = PromptSpec(prompt="", width=config.width or resolution,
                          height=config.height or resolution, steps=config.steps,
                          scale=config.guidance_scale, seed=config.seed)
    return [parse_prompt_line(line, defaults) for line in config.prompts if line.strip()]


class PreviewRenderer:
    """Renders PromptSpecs with the model being trained (adapters live in the U-Net); with no
    network, the base model alone."""

    def __init__(self, base_model, network: LoraNetwork | None, *, baseline: bool,
                 sampler: str = "ddim") -> None:
        from trainer.pipelines import build_pipeline
        from trainer.samplers import get_sampler

        scheduler = get_sampler(sampler).build(base_model.noise_scheduler.config)
        self.pipeline = build_pipeline(base_model, scheduler)  # the family's own pipeline
        self.modules = [base_model.unet, *base_model.text_encoders.values()]
        self.network = network
        self.baseline = baseline

    def render(self, spec: PromptSpec, strength: float) -> bytes:
        device = self.pipeline.unet.device
        generator = torch.Generator("cpu").manual_seed(spec.seed)
        # Sample latents on the CPU generator so a preview is the same image on any device.
        factor = self.pipeline.vae_scale_factor
        latents = torch.randn((1, self.pipeline.unet.config.in_channels, spec.height // factor,
                               spec.width // factor), generator=generator)
        pipe = self.pipeline
        strength_set = self.network.strength(strength) if self.network else nullcontext()
        with strength_set, torch.no_grad():
            denoised = pipe(
                spec.prompt, negative_prompt=spec.negative or None, width=spec.width,
                height=spec.height, num_inference_steps=spec.steps, guidance_scale=spec.scale,
                latents=latents.to(device, pipe.unet.dtype), output_type="latent",
                generator=generator,  # an ancestral sampler's noise: seeded too
            ).images
            # Decode ourselves: the VAE stays fp32 while the U-Net may run in fp16 on CUDA.
            decoded = pipe.vae.decode(denoised.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor)
            image = pipe.image_processor.postprocess(decoded.sample, output_type="pil")[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def render_all(self, specs: list[PromptSpec], step: int) -> list[Sample]:
        """Every prompt at its strength, plus strength 0; training RNG streams untouched."""
        samples = []
        with outside_training(self.modules):
            for spec in specs:
                for strength in [spec.strength] + ([0.0] if self.baseline else []):
                    samples.append(Sample(step=step, prompt=spec.prompt, seed=spec.seed,
                                          scale=strength, png_bytes=self.render(spec, strength)))
        return samples


@contextmanager
def outside_training(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Between two training steps (a preview, a validation pass): the modules in eval mode
    and torch's random streams forked, both as they were afterwards, so the training goes on
    as if nothing had run."""
    modes = [module.training for module in modules]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        for module in modules:
            module.eval()
        try:
            yield
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
