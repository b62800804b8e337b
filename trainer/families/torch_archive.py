"""A `.ckpt` (torch.save) file looked at without torch: is it a PyTorch archive at all?

Its family can only be read by unpickling it (in the trainer, with `weights_only=True`), but a
file that is not a PyTorch archive, or a zip archive cut short by a failed download, can be
named when it is picked instead of at Start.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from trainer.families.errors import name_of
from trainer.paths import special_file_problem


def is_torch_pickle(path: Path) -> bool:
    """A torch.save file: a zip archive (torch >= 1.6) or a bare pickle (older torch)."""
    if special_file_problem(path):  # a FIFO: open() would wait forever
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


def torch_archive_problem(path: Path) -> str:
    """Why `path` can't be a PyTorch checkpoint, in words ('' when it may be one)."""
    name = name_of(path)
    if problem := special_file_problem(path):
        return problem
    if not is_torch_pickle(path):
        return (f"{name} is not a PyTorch checkpoint (it does not start like one); pick a "
                ".safetensors model, or download the .ckpt again")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if not zipped:  # a legacy bare pickle: only unpickling can tell more
        return ""
    if not zipfile.is_zipfile(path):  # the archive's index, at its very end, is missing
        return f"{name} is truncated (the download was cut short?); download it again"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        return f"{name} is truncated or damaged ({error}); download it again"
    if not any(entry.endswith("/data.pkl") or entry == "data.pkl" for entry in names):
        return f"{name} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"
    return ""
