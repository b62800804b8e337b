"""Latent and text-embedding caches: after them a training step costs only the U-Net.

A latent is keyed by the image's bytes, its bucket, crop, flip and the VAE, so editing an image
(or switching VAE) misses the cache instead of training on stale latents. SDXL's six size ids
(original size, crop after bucketing and flip, target size) are stored with each latent: they
are a function of the same key. So is an image's mask on the latent grid (masked loss,
trainer.data.masks): a mask file's bytes digest, or "alpha" for the image's own alpha channel
(the image digest covers it), joins the key; an image without a mask keeps the key it had.
The disk cache lives in `$XDG_CACHE_HOME/lora-studio/latents` (one small safetensors file per
entry, written atomically), shared between runs of the same images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from safetensors.torch import load_file, save_file

from trainer.atomic import atomic_write
from trainer.conditioning import Conditioning, size_ids
from trainer.data import image_to_tensor, open_upright, to_rgb
from trainer.data.masks import MaskSource, latent_mask

CACHE_VERSION = "1"
Slot = tuple[Path, tuple[int, int], bool]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lora-studio" / "latents"


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """Cheap identity of a VAE: its config and a few of its weights."""
    digest = hashlib.sha256(repr(sorted(dict(vae.config).items())).encode())
    tensors = list(vae.state_dict().items())
    for name, tensor in tensors[:: max(1, len(tensors) // 8)]:
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """Identity of a model's weights wherever they were loaded from (a moved file, a folder or
    a single file): every tensor's name, shape and first 256 values. A fine-tune or a merge
    changes them; reading only their heads keeps it cheap (an SDXL U-Net in well under 1 s)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LatentCache:
    """VAE latents (the distribution mean, times the VAE scaling factor) by image and variant."""

    def __init__(self, vae: torch.nn.Module, *, background: str, disk_dir: Path | None,
                 masks: Mapping[Path, MaskSource] | None = None) -> None:
        self.vae = vae
        self.background = background
        self.disk_dir = disk_dir
        self.masks = dict(masks or {})  # {image: its mask's source} (DatasetReport.masks)
        self.vae_id = vae_fingerprint(vae)
        self._memory: dict[Slot, torch.Tensor] = {}
        self._size_ids: dict[Slot, torch.Tensor] = {}
        self._masks: dict[Slot, torch.Tensor | None] = {}
        self._digests: dict[Path, str] = {}
        self.hits = 0
        self.misses = 0

    def _digest(self, path: Path) -> str:
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return self._digests[path]

    def key(self, path: Path, bucket: tuple[int, int], flip: bool) -> str:
        text = f"{CACHE_VERSION}|{self._digest(path)}|{bucket[0]}x{bucket[1]}|center|" \
               f"{int(flip)}|{self.background}|{self.vae_id}"
        source = self.masks.get(path)
        if source is not None:
            text += f"|mask:{'alpha' if source.file is None else self._digest(source.file)}"
        return hashlib.sha256(text.encode()).hexdigest()

    @torch.no_grad()
    def encode(self, path: Path, bucket: tuple[int, int], flip: bool) -> torch.Tensor:
        upright = open_upright(path)
        image = to_rgb(upright, self.background)
        pixels, crop = image_to_tensor(image, bucket, flip)
        self._size_ids[(path, bucket, flip)] = size_ids(image.size, crop, bucket)
        param = next(self.vae.parameters())
        pixels = pixels[None].to(param.device, param.dtype)
        latent = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        self._masks[(path, bucket, flip)] = latent_mask(self.masks.get(path), upright, bucket,
                                                        flip, tuple(latent.shape[-2:]))
        return latent[0].float().cpu()

    def mask(self, path: Path, bucket: tuple[int, int], flip: bool) -> torch.Tensor | None:
        """The (1, h, w) mask of an encoded image on its latent grid; None: no mask."""
        slot = (path, bucket, flip)
        if slot not in self._masks:
            self.get(path, bucket, flip)
        return self._masks[slot]

    def size_ids(self, path: Path, bucket: tuple[int, int], flip: bool) -> torch.Tensor:
        """SDXL's (original h, w, crop top, left, target h, w) of an encoded image."""
        slot = (path, bucket, flip)
        if slot not in self._size_ids:
            self.get(path, bucket, flip)
        return self._size_ids[slot]

    def get(self, path: Path, bucket: tuple[int, int], flip: bool) -> torch.Tensor:
        slot = (path, bucket, flip)
        if slot in self._memory:
            return self._memory[slot]
        latent = self._from_disk(path, bucket, flip) if self.disk_dir else None
        if latent is None:
            self.misses += 1
            latent = self.encode(path, bucket, flip)
            if self.disk_dir:
                self._to_disk(path, bucket, flip, latent)
        else:
            self.hits += 1
        self._memory[slot] = latent
        return latent

    def fill(self, entries: Iterable[tuple[Path, tuple[int, int], bool]],
             progress: Callable[[int, int], None] | None = None) -> dict[Path, str]:
        """Encode everything up front. An image that became unreadable since the scan is
        returned as {path: reason} instead of ending the run."""
        entries = list(entries)
        failed: dict[Path, str] = {}
        for done, (path, bucket, flip) in enumerate(entries, 1):
            if path in failed:
                continue
            try:
                self.get(path, bucket, flip)
            except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three
                failed[path] = f"could not be read any more ({error})"
            else:
                mask = self._masks[(path, bucket, flip)]
                # Under one latent cell of white left inside the crop: the loss, averaged over
                # the masked area, would train on a sliver of edge (or on nothing at all).
                if mask is not None and mask.sum() < 1.0:
                    source = self.masks[path].file or "(its alpha channel)"
                    failed[path] = (f"its mask {source} keeps less than one latent cell inside "
                                    f"the crop to its {bucket[0]}x{bucket[1]} bucket; widen the "
                                    "mask's white part")
            if progress:
                progress(done, len(entries))
        return failed

    def _disk_path(self, path: Path, bucket: tuple[int, int], flip: bool) -> Path:
        key = self.key(path, bucket, flip)
        assert self.disk_dir is not None
        return self.disk_dir / key[:2] / f"{key}.safetensors"

    def _from_disk(self, path: Path, bucket: tuple[int, int], flip: bool) -> torch.Tensor | None:
        file = self._disk_path(path, bucket, flip)
        try:
            entry = load_file(file)
            self._size_ids[(path, bucket, flip)] = entry["size_ids"]
            # under a key with a mask, an entry without one: the mask was white on the grid
            self._masks[(path, bucket, flip)] = entry.get("mask")
            return entry["latent"]
        except (OSError, KeyError, RuntimeError, ValueError):
            return None  # absent, damaged or from before size ids were stored: re-encode

    def _to_disk(self, path: Path, bucket: tuple[int, int], flip: bool,
                 latent: torch.Tensor) -> None:
        file = self._disk_path(path, bucket, flip)
        tensors = {"latent": latent.contiguous(),
                   "size_ids": self._size_ids[(path, bucket, flip)].contiguous()}
        if (mask := self._masks.get((path, bucket, flip))) is not None:
            tensors["mask"] = mask.contiguous()
        atomic_write(file, lambda tmp: save_file(tensors, tmp))


class TextEmbeddingCache:
    """Text-encoder outputs (context, and SDXL's pooled embedding) by caption; only valid while
    every text encoder is frozen."""

    def __init__(self, encode: Callable[[list[str]], Conditioning]) -> None:
        self._encode = encode
        self._memory: dict[str, Conditioning] = {}

    def fill(self, captions: Iterable[str], batch_size: int = 16) -> None:
        todo = sorted(set(captions) - self._memory.keys())
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            with torch.no_grad():
                embeddings = self._encode(chunk)
            for caption, embedding in zip(chunk, embeddings.split()):
                self._memory[caption] = embedding

    def get(self, captions: list[str]) -> Conditioning:
        self.fill(captions)
        return Conditioning.stack([self._memory[c] for c in captions])
