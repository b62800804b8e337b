"""BaseModel: the loaded components of a Stable Diffusion checkpoint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.families import Family, get_family

if TYPE_CHECKING:  # the heavy libraries are imported only by the loader
    from diffusers.models import AutoencoderKL, UNet2DConditionModel
    from diffusers.schedulers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """Lowercase hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class BaseModel:
    """The frozen base model a LoRA is trained on.

    ``family`` is the family name ("sd1", "sd2", "sdxl"; `spec` is its Family) and
    ``prediction_type`` what the file says ("epsilon" or "v_prediction"). SDXL has a second
    text encoder and tokenizer (diffusers' names); the others leave them None.
    ``source_sha256`` is the sha256 of the single checkpoint file (``None`` for a diffusers
    folder); it is computed on first access (streamed) because hashing a 2-7 GB file takes
    seconds and only the exported metadata needs it.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    family: str
    prediction_type: str
    source: Path
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    _sha256: str | None = field(default=None, repr=False, compare=False)

    @property
    def source_sha256(self) -> str | None:
        if self._sha256 is None and Path(self.source).is_file():
            self._sha256 = sha256_file(Path(self.source))
        return self._sha256

    @property
    def spec(self) -> Family:
        return get_family(self.family)

    @property
    def text_encoders(self) -> dict[str, object]:
        """{component: text encoder} in the family's order ("text_encoder", "text_encoder_2")."""
        return {s.component: getattr(self, s.component) for s in self.spec.text_encoders}

    @property
    def tokenizers(self) -> dict[str, object]:
        return {s.component: getattr(self, s.tokenizer_component) for s in self.spec.text_encoders}

    @property
    def is_single_file(self) -> bool:
        return Path(self.source).is_file()

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (8 for every SD model)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_scaling_factor(self) -> float:
        """Multiply VAE latents by this before the U-Net (0.18215 SD 1/2, 0.13025 SDXL)."""
        return float(self.vae.config.scaling_factor)
