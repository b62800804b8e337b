"""Reading and checking a .safetensors header without touching the tensor data (no torch).

`parse_header` is the one safetensors header parser in LoRA Studio: base checkpoints
(`read_header`, raising ModelError) and LoRA files (`trainer.lora_reader.read_header`, raising
LoraFileError) both build on it. It raises the neutral SafetensorsError, whose `kind` each
caller turns into its own message and advice.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from trainer.paths import special_file_problem

from .errors import ModelError, name_of

MAX_HEADER_BYTES = 100 * 1000 * 1000  # a real checkpoint header is well under 1 MB

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


class SafetensorsError(ValueError):
    """A file whose safetensors header is unusable; callers turn it into their own error.

    ``kind`` says what is wrong (``n`` / ``key`` / ``dtype`` / ``reason`` where they apply):
      "missing", "folder", "unreadable"  the file cannot be opened or read (``reason``)
      "empty"       shorter than the 8-byte length prefix
      "too_big"     the length prefix ``n`` is above MAX_HEADER_BYTES (nothing allocated)
      "short"       the header is under 2 bytes or runs past the end of the file
      "not_json"    the header is not UTF-8 JSON
      "not_object"  the header is JSON but not an object
      "bad_entry"   tensor ``key`` lacks a usable dtype / shape / data_offsets
      "dtype"       tensor ``key`` has a ``dtype`` that is not accepted
      "wrong_size"  tensor ``key``'s byte range does not match its dtype and shape
      "truncated"   the file ends before tensor ``key``'s data
    """

    def __init__(self, kind: str, path: Path, *, n: int = 0, key: str = "", dtype: str = "",
                 reason: str = "") -> None:
        super().__init__(f"{name_of(path)}: unusable safetensors header ({kind} {key})".strip())
        self.kind, self.path, self.n, self.key, self.dtype = kind, Path(path), n, key, dtype
        self.reason = reason

    def message(self, templates: dict[str, str]) -> str:
        """The caller's own one-line message: ``templates[kind]`` (falling back to "unreadable"
        for "missing" / "folder") formatted with name, path, n, key, dtype, reason and max."""
        template = templates.get(self.kind) or templates["unreadable"]
        return template.format(name=name_of(self.path), path=self.path, n=self.n, key=self.key,
                               dtype=self.dtype, reason=self.reason, max=MAX_HEADER_BYTES)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RawHeader:
    """What parse_header found; ``metadata`` is ``__metadata__`` exactly as stored ({} if absent),
    so each caller applies its own rule to it (any JSON value is possible)."""

    tensors: dict[str, TensorInfo]
    metadata: object
    header_bytes: int  # N, the JSON length; tensor data starts at 8 + N
    file_size: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int  # N, the JSON length; tensor data starts at 8 + N

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def file_head(path: Path, count: int) -> bytes:
    """The first ``count`` bytes of a file (fewer when it is shorter; b"" when unreadable,
    or a FIFO or device, which open() would wait on)."""
    if special_file_problem(path):
        return b""
    try:
        with open(path, "rb") as f:
            return f.read(count)
    except OSError:
        return b""


def looks_like_safetensors(path: Path) -> bool:
    """True when the first bytes are a plausible safetensors length + '{'."""
    head = file_head(path, 9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= n <= MAX_HEADER_BYTES


def parse_header(path: Path, dtypes: Collection[str] = DTYPE_SIZES) -> RawHeader:
    """Parse and validate the header; raise SafetensorsError for anything that is not a whole file.

    Checks: the length prefix (refused above 100 MB before allocating), the JSON, every dtype
    (against ``dtypes``, a subset of DTYPE_SIZES), every shape against its byte range, and that
    the data section is all there (truncation). No tensor data is read.
    """
    path = Path(path)
    if problem := special_file_problem(path):  # open() on a FIFO would wait forever
        raise SafetensorsError("special", path, reason=problem)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError("empty", path)
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError("too_big", path, n=n)
            if n < 2 or 8 + n > size:
                raise SafetensorsError("short", path, n=n)
            raw = f.read(n)
    except OSError as e:
        kind = ("folder" if isinstance(e, IsADirectoryError) else
                "missing" if isinstance(e, FileNotFoundError) else "unreadable")
        raise SafetensorsError(kind, path, reason=str(e.strerror or e)) from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError("not_json", path, n=n) from e
    if not isinstance(header, dict):
        raise SafetensorsError("not_object", path, n=n)
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for key, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError("bad_entry", path, key=key) from e
        if dtype not in dtypes or dtype not in DTYPE_SIZES:
            raise SafetensorsError("dtype", path, key=key, dtype=str(dtype))
        if start < 0 or end - start != math.prod(shape) * DTYPE_SIZES[dtype] \
                or any(d < 0 for d in shape):
            raise SafetensorsError("wrong_size", path, key=key)
        if end > data_len:
            raise SafetensorsError("truncated", path, key=key)
        tensors[key] = TensorInfo(dtype, shape)
    return RawHeader(tensors, metadata, n, size)


# what a base-model load says for each kind of header problem (names the file, gives advice)
_MODEL_MESSAGES = {
    "unreadable": "{name} cannot be read ({reason}); check the file",
    "special": "{reason}",
    "empty": "{name} is empty or truncated, not a safetensors file; "
             "download it again or pick another model",
    "too_big": "{name} is not a safetensors file (its header claims {n:,} bytes); "
               "pick a .safetensors checkpoint",
    "short": "{name} is truncated or not a safetensors file; download it again",
    "not_json": "{name} is truncated or not a safetensors file (unreadable header); "
                "download it again or pick another model",
    "bad_entry": "{name} is damaged (bad entry for tensor {key!r}); download it again",
    "dtype": "{name} stores tensor {key!r} as {dtype}, which LoRA Studio cannot read; "
             "pick an fp16 or fp32 checkpoint",
    "wrong_size": "{name} is damaged (tensor {key!r} has the wrong size); download it again",
    "truncated": "{name} is truncated (it ends before tensor {key!r}); download it again",
}
_MODEL_MESSAGES["not_object"] = _MODEL_MESSAGES["not_json"]


def read_header(path: Path) -> SafetensorsHeader:
    """A base checkpoint's header (parse_header's checks); raise ModelError for anything that
    is not a whole file. Metadata that is not a map is ignored; its values become strings."""
    path = Path(path)
    try:
        raw = parse_header(path)
    except SafetensorsError as e:
        raise ModelError(e.message(_MODEL_MESSAGES), path) from e
    metadata = raw.metadata if isinstance(raw.metadata, dict) else {}
    return SafetensorsHeader(raw.tensors, {str(k): str(v) for k, v in metadata.items()},
                             raw.header_bytes)
