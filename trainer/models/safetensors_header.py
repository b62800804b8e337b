"""Reading and checking a .safetensors header without touching the tensor data (no torch)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError, name_of

MAX_HEADER_BYTES = 100 * 1000 * 1000  # a real checkpoint header is well under 1 MB

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int  # N, the JSON length; tensor data starts at 8 + N

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def looks_like_safetensors(path: Path) -> bool:
    """True when the first bytes are a plausible safetensors length + '{'."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= n <= MAX_HEADER_BYTES


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header; raise ModelError for anything that is not a whole file.

    Checks: the length prefix (refused above 100 MB before allocating), the JSON, every dtype,
    every shape against its byte range, and that the data section is all there (truncation).
    """
    path = Path(path)
    nm = name_of(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelError(f"{nm} is empty or truncated, not a safetensors file; "
                                 "download it again or pick another model", path)
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES:
                raise ModelError(f"{nm} is not a safetensors file (its header claims {n:,} bytes); "
                                 "pick a .safetensors checkpoint", path)
            if 8 + n > size:
                raise ModelError(f"{nm} is truncated or not a safetensors file; "
                                 "download it again", path)
            raw = f.read(n)
    except OSError as e:
        raise ModelError(f"{nm} cannot be read ({e.strerror or e}); check the file", path) from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{nm} is truncated or not a safetensors file (unreadable header); "
                         "download it again or pick another model", path) from e
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for key, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{nm} is damaged (bad entry for tensor {key!r}); "
                             "download it again", path) from e
        if dtype not in DTYPE_SIZES:
            raise ModelError(f"{nm} stores tensor {key!r} as {dtype}, which LoRA Studio cannot read; "
                             "pick an fp16 or fp32 checkpoint", path)
        if end - start != math.prod(shape) * DTYPE_SIZES[dtype] or start < 0:
            raise ModelError(f"{nm} is damaged (tensor {key!r} has the wrong size); "
                             "download it again", path)
        if end > data_len:
            raise ModelError(f"{nm} is truncated (it ends before tensor {key!r}); "
                             "download it again", path)
        tensors[key] = TensorInfo(dtype, shape)
    if not isinstance(metadata, dict):
        metadata = {}
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in metadata.items()}, n)
