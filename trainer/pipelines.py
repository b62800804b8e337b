"""diffusers' pipeline of a loaded base model's family, built from its own components.

One place for the preview renderer and verify: StableDiffusionPipeline for SD 1.x / 2.x,
StableDiffusionXLPipeline for SDXL (the family's `pipeline_class`), with no safety checker and
nothing fetched.
"""

from __future__ import annotations


def pipeline_class(family):
    import diffusers

    return getattr(diffusers, family.pipeline_class)


def pipeline_extras(family) -> dict:
    """Constructor arguments a family's pipeline needs beyond the networks (no safety checker)."""
    if family.pipeline_class == "StableDiffusionPipeline":
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return {}


def build_pipeline(base, scheduler=None):
    """The family's pipeline over `base`'s own U-Net, VAE, text encoders and tokenizers (shared,
    not copied: adapters injected into them show in the pipeline)."""
    family = base.spec
    parts = {"vae": base.vae, "unet": base.unet, "scheduler": scheduler or base.noise_scheduler}
    for spec in family.text_encoders:
        parts[spec.component] = getattr(base, spec.component)
        parts[spec.tokenizer_component] = getattr(base, spec.tokenizer_component)
    pipe = pipeline_class(family)(**parts, **pipeline_extras(family))
    pipe.set_progress_bar_config(disable=True)
    return pipe
