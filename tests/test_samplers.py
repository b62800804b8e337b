"""Preview samplers (trainer/samplers.py): each is the diffusers scheduler it is named after,
renders on the tiny model, and draws the same image for the same seed (Euler a included)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from trainer.models import load_base_model
from trainer.samplers import SAMPLER_NAMES, get_sampler
from trainer.sampling import PreviewRenderer, PromptSpec


@pytest.fixture(scope="module")
def base(tiny_model):
    return load_base_model(tiny_model[0])


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_each_name_builds_its_scheduler_from_the_models_config(base) -> None:
    built = {name: get_sampler(name).build(base.noise_scheduler.config) for name in SAMPLER_NAMES}
    assert {name: type(s).__name__ for name, s in built.items()} == {
        "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
        "euler_a": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
        "euler_karras": "EulerDiscreteScheduler",
        "dpmpp_2m_karras": "DPMSolverMultistepScheduler"}
    assert built["euler_karras"].config.use_karras_sigmas
    assert not built["euler"].config.use_karras_sigmas
    assert built["dpmpp_2m"].config.algorithm_type == "dpmsolver++"
    for scheduler in built.values():  # the model's own schedule, not diffusers' defaults
        assert scheduler.config.beta_schedule == base.noise_scheduler.config.beta_schedule
    with pytest.raises(ValueError, match="unknown sampler 'plms'; one of ddim, euler"):
        get_sampler("plms")


def test_every_sampler_renders_and_a_seed_gives_the_same_image(base) -> None:
    spec = PromptSpec("a red circle", width=64, height=64, steps=3, seed=11)
    images = {}
    for name in SAMPLER_NAMES:
        renderer = PreviewRenderer(base, None, baseline=False, sampler=name)
        images[name] = pixels(renderer.render(spec, 1.0))
        assert images[name].shape == (64, 64, 3)
    again = PreviewRenderer(base, None, baseline=False, sampler="euler_a")
    assert np.array_equal(pixels(again.render(spec, 1.0)), images["euler_a"])
    other_seed = pixels(again.render(PromptSpec("a red circle", width=64, height=64, steps=3,
                                                seed=12), 1.0))
    assert not np.array_equal(other_seed, images["euler_a"])
    # the samplers walk different paths: no two of these images are the same
    names = list(images)
    assert all(not np.array_equal(images[a], images[b])
               for i, a in enumerate(names) for b in names[i + 1:])
