"""Writing the product: one kohya-format `.safetensors` LoRA with its metadata and hashes.

See shared/lora-format.md. Tensors are `lora_unet_*` / `lora_te_*` modules with `lora_down`,
`lora_up` and the real `alpha`, all in the save precision; every metadata value is a string.
`sshs_model_hash` is the sha256 of the tensor-data section, computed by serialising the final
tensors once before the real header is written (the data section does not depend on metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save, save_file

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BASE_VERSIONS = {"sd1": ("sd_v1", "stable-diffusion-v1/lora", False)}


def tensor_data_hashes(tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of the tensors as safetensors will write them."""
    blob = save(tensors)
    header_len = int.from_bytes(blob[:8], "little")
    data = blob[8 + header_len:]
    model_hash = hashlib.sha256(data).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def base_model_metadata(family: str, prediction_type: str) -> dict[str, str]:
    """The keys A1111 groups LoRAs by, and the modelspec architecture."""
    if family not in BASE_VERSIONS:
        raise ValueError(f"cannot export a LoRA for base family {family!r} yet")
    version, architecture, is_v2 = BASE_VERSIONS[family]
    return {
        "ss_base_model_version": version,
        "ss_v2": str(is_v2),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
    }


def write_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                    save_precision: str = "fp16") -> Path:
    """Cast, hash and write atomically (temp file + fsync + rename): an existing file at `path`
    is replaced whole or not at all."""
    dtype = SAVE_DTYPES[save_precision]
    final = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    model_hash, legacy_hash = tensor_data_hashes(final)
    header = {k: str(v) for k, v in metadata.items()}
    header.update({"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(final, tmp, metadata=header)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
