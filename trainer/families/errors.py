"""The one exception this package raises."""

from __future__ import annotations

from pathlib import Path


class ModelError(Exception):
    """A message an artist understands: names the file and what to do.

    ``str(err)`` is one line that starts with the file or folder name. ``err.path`` is the
    path that was being loaded (``None`` when not known).
    """

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


def name_of(path: Path | str) -> str:
    """How a file is named in messages: its name (the folder name for a folder)."""
    p = Path(path)
    return p.name or str(p)


def few(keys, n: int = 4) -> str:
    """'a, b, c and 7 more' for error messages."""
    keys = sorted(keys)
    head = ", ".join(keys[:n])
    return head + (f" and {len(keys) - n} more" if len(keys) > n else "")
