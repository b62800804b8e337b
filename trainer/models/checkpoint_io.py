"""Opening checkpoint files as a lazy {key: tensor} source (safetensors, safe .ckpt, folders)."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

from trainer.families.errors import ModelError, name_of
from trainer.families.torch_archive import is_torch_pickle
from trainer.families.safetensors_header import looks_like_safetensors, read_header


class TensorSource:
    """Key names and shapes up front; tensors read one at a time with ``get``."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None):
        self.path = path
        self.shapes = shapes
        self.metadata = metadata or {}

    def get(self, key: str):  # -> torch.Tensor
        raise NotImplementedError

    def keys(self) -> set[str]:
        return set(self.shapes)

    def close(self) -> None:
        """Let go of the file's memory map (reopened by the next `get`): the pages read so far
        stop counting as resident, so a loader can release each component's share in turn."""

    def rename(self, mapping: dict[str, str]) -> "TensorSource":
        """A view whose keys are renamed by ``mapping`` (old -> new); others keep their name."""
        return _RenamedSource(self, mapping)


class SafetensorsSource(TensorSource):
    def __init__(self, path: Path):
        header = read_header(path)  # validates size, JSON and truncation before anything else
        super().__init__(path, header.shapes(), header.metadata)
        self._handle = None

    def get(self, key: str):
        if self._handle is None:
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise ModelError(f"{name_of(self.path)} cannot be opened as safetensors ({e}); "
                                 "download it again", self.path) from e
        return self._handle.get_tensor(key)

    def close(self) -> None:
        self._handle = None


class DictSource(TensorSource):
    def __init__(self, path: Path, tensors: dict):
        super().__init__(path, {k: tuple(v.shape) for k, v in tensors.items()})
        self._tensors = tensors

    def get(self, key: str):
        return self._tensors[key]


class _RenamedSource(TensorSource):
    def __init__(self, inner: TensorSource, mapping: dict[str, str]):
        self._inner = inner
        self._back = {mapping.get(k, k): k for k in inner.shapes}
        super().__init__(inner.path, {mapping.get(k, k): s for k, s in inner.shapes.items()}, inner.metadata)

    def get(self, key: str):
        return self._inner.get(self._back[key])

    def close(self) -> None:
        self._inner.close()


class MultiSource(TensorSource):
    """Several files (shards) seen as one."""

    def __init__(self, path: Path, parts: list[TensorSource]):
        self._owner: dict[str, TensorSource] = {}
        for part in parts:
            for k in part.shapes:
                self._owner[k] = part
        super().__init__(path, {k: p.shapes[k] for k, p in self._owner.items()})

    def get(self, key: str):
        return self._owner[key].get(key)

    def close(self) -> None:
        for part in set(self._owner.values()):
            part.close()


def load_torch_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True (never unsafe unpickling); unwraps 'state_dict'."""
    import torch

    nm = name_of(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # the legacy (pre-zip) format cannot be memory-mapped
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelError(
            f"{nm} is a pickle that runs code when opened (unsafe to load), so LoRA Studio will "
            "not open it; pick the .safetensors version of this model", path) from e
    except (EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError) as e:
        raise ModelError(f"{nm} is truncated or not a PyTorch checkpoint ({str(e).splitlines()[0][:120]}); "
                         "download it again or pick a .safetensors model", path) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"{nm} does not hold a state dict; pick a Stable Diffusion checkpoint", path)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{nm} holds no weights; pick a Stable Diffusion checkpoint", path)
    return tensors


def open_checkpoint(path: Path) -> TensorSource:
    """One checkpoint file, chosen by its content (never its name)."""
    path = Path(path)
    if is_torch_pickle(path) and not looks_like_safetensors(path):
        return DictSource(path, load_torch_checkpoint(path))
    return SafetensorsSource(path)


def open_component_weights(folder: Path, stem: str) -> TensorSource:
    """The weights of one diffusers/transformers subfolder, e.g. (unet/, "diffusion_pytorch_model").

    Prefers full-precision safetensors, then the fp16 variant, then sharded files, then .bin
    (through the same weights_only loader).
    """
    candidates = [f"{stem}.safetensors", f"{stem}.fp16.safetensors"]
    for name in candidates:
        if (folder / name).is_file():
            return SafetensorsSource(folder / name)
    for name in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json",
                 f"{stem}.bin.index.json", "pytorch_model.bin.index.json"):
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))  # a map of tensor -> shard file
                if not all(isinstance(f, str) and "/" not in f and f != ".." for f in files):
                    raise ValueError("shard names must be file names in the folder")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ModelError(f"{name_of(folder)}/{name} is damaged (its weight_map is not a "
                                 "map of tensor names to shard files); download the model "
                                 "again", index) from e
            parts = [open_checkpoint(folder / f) for f in files]
            return MultiSource(index, parts)
    for name in (f"{stem}.bin", f"{stem}.fp16.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            return DictSource(folder / name, load_torch_checkpoint(folder / name))
    raise ModelError(f"folder {name_of(folder.parent)}/{folder.name} has no weights file "
                     f"({stem}.safetensors); download the model again", folder)
