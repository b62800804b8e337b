"""The preview samplers artists know from A1111 / ComfyUI, as diffusers schedulers.

Each name maps to a scheduler class and its options, built from the base model's own
scheduler config (its beta schedule and prediction type). The ancestral sampler (Euler a)
adds noise at every step: it draws from the renderer's seeded generator, so a preview with a
given seed is the same image every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SAMPLER_NAMES = ("ddim", "euler", "euler_a", "dpmpp_2m", "euler_karras", "dpmpp_2m_karras")


@dataclass(frozen=True)
class Sampler:
    name: str
    label: str  # as A1111 names it
    scheduler: str  # the diffusers class
    options: dict = field(default_factory=dict)

    def build(self, scheduler_config):
        """A fresh scheduler of this kind from a model's scheduler config."""
        import diffusers

        return getattr(diffusers, self.scheduler).from_config(scheduler_config, **self.options)


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddim", "DDIM", "DDIMScheduler"),
    Sampler("euler", "Euler", "EulerDiscreteScheduler"),
    Sampler("euler_a", "Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    Sampler("euler_karras", "Euler Karras", "EulerDiscreteScheduler",
            {"use_karras_sigmas": True}),
    Sampler("dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
)}
assert tuple(SAMPLERS) == SAMPLER_NAMES


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}") from None
