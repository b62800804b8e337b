"""detect_architecture: the family of a diffusers folder or one checkpoint file.

A .safetensors file is classified from its header (key names and shapes); no tensor data is
read. A .ckpt has no separate header, so it is opened with ``torch.load(weights_only=True,
mmap=True)``, which maps rather than reads the data. The rules themselves are torch-free, in
trainer.families.detect, so the window applies the same ones.
"""

from __future__ import annotations

from pathlib import Path

from trainer.families.detect import ARCHITECTURE_NAMES as FAMILY_NAMES  # noqa: F401 - re-exported
from trainer.families.detect import classify_folder, classify_keys
from trainer.families.errors import ModelError, name_of
from trainer.paths import special_file_problem


def detect_architecture(path: Path) -> str:
    """"sd1" | "sd2" | "sd2_v" | "sdxl" for a diffusers folder or one checkpoint file.

    Raises ModelError (naming the file) for a LoRA, a VAE, a refiner, an inpainting model, a
    damaged or truncated file, a file that is not a checkpoint, or an unknown architecture.
    "sd2_v" is reported only when the file says so (a ``v_pred`` key, or the folder's scheduler
    config); otherwise SD 2.x is "sd2".
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return classify_folder(path)
    if problem := special_file_problem(path):  # a link loop is no missing file
        raise ModelError(problem, path)
    if not path.exists():
        raise ModelError(f"{name_of(path)} does not exist; check the path", path)
    from .checkpoint_io import open_checkpoint  # torch is imported only for a .ckpt

    source = open_checkpoint(path)
    return classify_keys(source.shapes, path, source.metadata)
