"""Reading any LoRA file: ours, kohya's, diffusers/PEFT-named and OneTrainer's.

Every naming is normalised to kohya module names (`lora_unet_down_blocks_0_..._to_q`,
`lora_te_text_model_encoder_layers_0_self_attn_q_proj`, see docs/lora-format.md) with a
`down` [r, in], an `up` [out, r] and an alpha, so `lora-train inspect`, `verify` and
`--init-from` see one shape of data whatever wrote the file.

Namings understood (the key's tail, then its head):
- tails: `.lora_down.weight` / `.lora_up.weight` / `.alpha` (kohya, OneTrainer),
  `.lora_A.weight` / `.lora_B.weight` (PEFT), `.lora.down.weight` / `.lora.up.weight` and
  `.lora_linear_layer.down.weight` (older diffusers), `.to_q_lora.down.weight` (diffusers
  attention processors);
- heads: `lora_unet_...` / `lora_te_...` / `lora_te1_` / `lora_te2_` (kohya), `lora_unet.` /
  `lora_te.` (OneTrainer's dotted names), `unet.` / `text_encoder.` / `text_encoder_2.`
  (diffusers), `base_model.model.` (a bare PEFT model), `unet.input_blocks...` / `clip_l.`
  (OneTrainer's OMI layout, converted with SD 1.x/2.x block arithmetic).
A file without alphas (PEFT/diffusers convention) has alpha = rank, i.e. scale 1, unless its
`lora_adapter_metadata` says otherwise.

Safety: the header length is checked before anything is allocated (at most 100 MB), every
tensor's byte range is checked against the file, metadata values must be strings, and long
metadata values are cut on import (with a warning).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from trainer.network_kinds import FILE_PARTS, LORA, NetworkKind, kind_of_suffixes
from trainer.config import MAX_METADATA_CHARS  # per value; a 256 px JPEG thumbnail is ~30 000
from trainer.families.safetensors_header import (
    DTYPE_SIZES, SafetensorsError, TensorInfo, parse_header,
)

# the safetensors dtypes a LoRA file may use (the unsigned U16/U32/U64 are refused)
SAFETENSORS_DTYPES = {k: v for k, v in DTYPE_SIZES.items() if k not in ("U16", "U32", "U64")}
DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}

# (tail, part, naming) - checked in this order; every tail is a proper suffix of the key.
_TAILS = (
    (".lora_down.weight", "down", "kohya"), (".lora_up.weight", "up", "kohya"),
    (".lora_A.weight", "down", "peft"), (".lora_B.weight", "up", "peft"),
    (".lora_linear_layer.down.weight", "down", "diffusers (old)"),
    (".lora_linear_layer.up.weight", "up", "diffusers (old)"),
    (".lora.down.weight", "down", "diffusers (old)"), (".lora.up.weight", "up", "diffusers (old)"),
    ("_lora.down.weight", "down", "diffusers (old)"), ("_lora.up.weight", "up", "diffusers (old)"),
    (".alpha", "alpha", "kohya"),
)
_UNSUPPORTED = {".dora_scale": "DoRA", ".lora_magnitude_vector": "DoRA", ".hada_w1_a": "LoHa",
                ".lokr_w1": "LoKr", ".lora_mid.weight": "LoCon-Tucker", ".oft_blocks": "OFT",
                ".diff": "full diff", ".diff_b": "full diff"}
_UNET_DIFFUSERS = re.compile(r"^(down_blocks|mid_block|up_blocks|conv_in|conv_out|time_embedding)")
_UNET_COMPVIS = re.compile(r"^(input_blocks|middle_block|output_blocks|time_embed|out\.)")
_TEXT = re.compile(r"^(text_model\.|encoder\.layers\.)")
_RESNET_COMPVIS = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
                   "skip_connection": "conv_shortcut"}
TRAINING_RECORD_KEYS = (
    "modelspec.title", "modelspec.author", "modelspec.date", "modelspec.license",
    "modelspec.tags", "modelspec.description", "modelspec.resolution", "modelspec.prediction_type",
    "ss_output_name", "ss_sd_model_name", "ss_new_sd_model_hash", "ss_training_started_at",
    "ss_training_finished_at", "ss_steps", "ss_epoch", "ss_num_epochs", "ss_max_train_steps",
    "ss_num_train_images", "ss_batch_size_per_device", "ss_total_batch_size", "ss_learning_rate",
    "ss_unet_lr", "ss_text_encoder_lr", "ss_optimizer", "ss_lr_scheduler", "ss_resolution",
    "ss_mixed_precision", "ss_seed", "ss_clip_skip", "ss_noise_offset", "ss_min_snr_gamma",
    "ss_network_args", "ss_dataset_dirs",
)


class LoraFileError(ValueError):
    """A file that cannot be read as a LoRA; the message is one line saying why."""


TensorEntry = TensorInfo  # one header entry: dtype (safetensors name: F16, BF16, ...), shape


@dataclass
class LoraModule:
    """One adapted module, whatever the file called it."""

    name: str                                            # kohya module name
    keys: dict[str, str] = field(default_factory=dict)   # part (down/up/alpha) -> key in the file
    down: "torch.Tensor | None" = None
    up: "torch.Tensor | None" = None
    alpha: float | None = None                           # None: the file has no alpha

    @property
    def rank(self) -> int | None:
        return int(self.down.shape[0]) if self.down is not None and self.down.dim() else None

    @property
    def effective_alpha(self) -> float | None:
        """The alpha every loader applies: the stored one, or the rank when there is none."""
        return self.alpha if self.alpha is not None else (
            float(self.rank) if self.rank is not None else None)

    @property
    def scale(self) -> float:
        return (self.effective_alpha or 0.0) / self.rank if self.rank else 0.0

    def delta(self, dtype=None) -> "torch.Tensor":
        """(alpha / r) * up @ down in the base weight's shape (fp64 by default; never bf16)."""
        import torch

        dtype = dtype or torch.float64
        down, up = self.down.to(dtype), self.up.to(dtype)
        if down.dim() == 4:  # conv: up [out, r, 1, 1] @ down [r, in, k, k]
            product = (up.flatten(1) @ down.flatten(1)).reshape(
                up.shape[0], down.shape[1], down.shape[2], down.shape[3])
        else:
            product = up @ down
        return product * self.scale


@dataclass
class LoraFile:
    path: Path
    size: int
    header_bytes: int
    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
    tensors: dict[str, "torch.Tensor"]
    modules: dict[str, LoraModule]
    namings: Counter
    unknown_keys: list[str]
    warnings: list[str]
    file_sha256: str
    data_sha256: str

    # --- hashes -------------------------------------------------------------------------
    @property
    def autov2(self) -> str:
        """Civitai AutoV2: the first 10 hex characters of the whole file's sha256."""
        return self.file_sha256[:10]

    @property
    def autov3(self) -> str:
        """Civitai AutoV3 = sshs_model_hash recomputed: sha256 of the bytes after the header."""
        return self.data_sha256

    # --- what the tensors say -----------------------------------------------------------
    @property
    def naming(self) -> str:
        if not self.namings:
            return "none"
        return " + ".join(name for name, _ in self.namings.most_common())

    @property
    def dtypes(self) -> Counter:
        return Counter(DTYPE_NAMES.get(e.dtype, e.dtype) for e in self.entries.values())

    @property
    def dtype(self) -> str:
        found = self.dtypes
        return next(iter(found)) if len(found) == 1 else \
            "mixed: " + ", ".join(f"{n} x{c}" for n, c in found.most_common())

    @property
    def ranks(self) -> Counter:
        return Counter(m.rank for m in self.modules.values() if m.rank is not None)

    @property
    def alphas(self) -> Counter:
        return Counter(m.effective_alpha for m in self.modules.values()
                       if m.effective_alpha is not None)

    @property
    def missing_alphas(self) -> list[str]:
        return [m.name for m in self.modules.values() if m.alpha is None]

    @property
    def incomplete(self) -> list[str]:
        """Modules lacking a down or an up tensor."""
        return [m.name for m in self.modules.values() if m.down is None or m.up is None]

    def block_counts(self) -> Counter:
        """Modules per block: "unet down.0", "unet mid", "unet up.3", "text encoder", ..."""
        return Counter(block_of(name) for name in self.modules or self.kind_modules)

    @property
    def unet_modules(self) -> list[str]:
        return [n for n in self.modules if n.startswith("lora_unet_")]

    @property
    def text_encoder_modules(self) -> list[str]:
        return [n for n in self.modules if n.startswith(("lora_te_", "lora_te1_", "lora_te2_"))]

    # --- what the metadata says ---------------------------------------------------------
    @property
    def base_version(self) -> str:
        if "ss_base_model_version" in self.metadata:
            return self.metadata["ss_base_model_version"]
        if "modelspec.architecture" in self.metadata:
            return self.metadata["modelspec.architecture"]
        guess = self.guess_base()
        return f"{guess} (guessed from the tensor shapes; the file does not say)" if guess \
            else "unknown (the file does not say)"

    def guess_base(self) -> str | None:
        if any(n.startswith(("lora_te1_", "lora_te2_")) or "input_blocks" in n
               or "middle_block" in n or "output_blocks" in n for n in self.modules):
            return "sdxl_base_v1-0"
        widths = {m.down.shape[1] for n, m in self.modules.items() if m.down is not None and (
            n.endswith(("attn2_to_k", "attn2_to_v"))
            or (n.startswith("lora_te_") and "_self_attn_" in n))}
        return {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl_base_v1-0"}.get(
            next(iter(widths)) if len(widths) == 1 else 0)

    @property
    def family(self) -> str | None:
        """"sd1", "sd2" or "sdxl": what the metadata says (A1111's rule: an `sdxl_` version is
        SDXL, ss_v2 "True" is SD 2.x), else what the names and widths show; None if neither."""
        version = self.metadata.get("ss_base_model_version") or ""
        architecture = self.metadata.get("modelspec.architecture") or ""
        if version.startswith("sdxl_") or architecture.startswith("stable-diffusion-xl"):
            return "sdxl"
        if version.startswith("sd_v2") or self.metadata.get("ss_v2") == "True" \
                or architecture.startswith("stable-diffusion-v2"):
            return "sd2"
        if version.startswith("sd_v1") or architecture.startswith("stable-diffusion-v1"):
            return "sd1"
        guess = self.guess_base() or ""
        return {"sdxl_base_v1-0": "sdxl", "sd_v2": "sd2", "sd_v1": "sd1"}.get(guess)

    @property
    def kind_modules(self) -> dict[str, dict[str, str]]:
        """module name -> {part: key} by the raw keys' suffixes of every kind (`lora_down.weight`,
        `hada_w1_a`, `lokr_w1`, `dora_scale`, `alpha`): the file as A1111 / ComfyUI / LyCORIS
        read kohya names, before any other naming is normalised."""
        found: dict[str, dict[str, str]] = {}
        for key in self.entries:
            if (place := kind_part(key)) is not None:
                found.setdefault(place[0], {})[place[1]] = key
        return found

    @property
    def network_kind(self) -> NetworkKind:
        """The kind most modules' tensors show (DoRA, LoHa, LoKr); LoRA otherwise."""
        shown = Counter(kind_of_suffixes(set(parts)) for parts in self.kind_modules.values())
        shown.pop(None, None)
        shown.pop(LORA, None)
        return shown.most_common(1)[0][0] if shown else LORA

    @property
    def kind(self) -> str:
        """The network kind in words with the options the file records: "LoRA", LoCon when a
        module is a k x k conv, "LoKr (LyCORIS: factor 4, conv_dim 8, ...)"."""
        kind = self.network_kind
        if kind is LORA:
            conv = any(m.down is not None and m.down.dim() == 4
                       and tuple(m.down.shape[2:]) != (1, 1) for m in self.modules.values())
            return "LoCon (LoRA with conv layers)" if conv else "LoRA"
        try:
            args = json.loads(self.metadata.get("ss_network_args") or "{}")
        except ValueError:
            args = {}
        options = [f"{key} {args[key]}" for key in ("algo", "factor", "decompose_both", "dora_wd",
                                                    "wd_on_output", "conv_dim", "conv_alpha",
                                                    "rank_dropout", "module_dropout", "use_tucker")
                   if isinstance(args, dict) and key in args]
        return f"{kind.label} (LyCORIS{': ' + ', '.join(options) if options else ''})"

    def trigger_words(self, top: int = 10) -> tuple[list[str], list[tuple[str, int]]]:
        """(modelspec.trigger_phrase split at commas, the most frequent training tags)."""
        phrase = [t.strip() for t in self.metadata.get("modelspec.trigger_phrase", "").split(",")
                  if t.strip()]
        return phrase, top_tags(self.metadata, top)

    def training_record(self) -> dict[str, str]:
        record = {}
        for key in TRAINING_RECORD_KEYS:
            value = self.metadata.get(key)
            if value in (None, ""):
                continue
            if key in ("ss_training_started_at", "ss_training_finished_at"):
                value = _timestamp_text(value)
            record[key] = value
        return record

    def kohya_tensors(self) -> dict[str, "torch.Tensor"]:
        """The modules as kohya tensors (alpha written out: the stored one or the rank)."""
        import torch

        out = {}
        for name, module in self.modules.items():
            if module.down is None or module.up is None:
                raise LoraFileError(f"{self.path.name}: module {name} has no "
                                    f"{'lora_down' if module.down is None else 'lora_up'} "
                                    "tensor; the file is incomplete")
            out[f"{name}.lora_down.weight"] = module.down
            out[f"{name}.lora_up.weight"] = module.up
            out[f"{name}.alpha"] = torch.tensor(module.effective_alpha, dtype=module.down.dtype)
        return out


# --- names ------------------------------------------------------------------------------

def block_of(name: str) -> str:
    for pattern, label in ((r"^lora_unet_down_blocks_(\d+)_", "unet down.{}"),
                           (r"^lora_unet_mid_block_", "unet mid"),
                           (r"^lora_unet_up_blocks_(\d+)_", "unet up.{}"),
                           (r"^lora_unet_input_blocks_(\d+)_", "unet input.{}"),
                           (r"^lora_unet_middle_block_", "unet middle"),
                           (r"^lora_unet_output_blocks_(\d+)_", "unet output.{}"),
                           (r"^lora_unet_", "unet other"),
                           (r"^lora_te1_", "text encoder 1"), (r"^lora_te2_", "text encoder 2"),
                           (r"^lora_te_", "text encoder")):
        match = re.match(pattern, name)
        if match:
            return label.format(*match.groups())
    return "other"


def _te_kohya(prefix: str, path: str) -> str:
    if not path.startswith("text_model."):
        path = "text_model." + path
    return f"{prefix}_{path.replace('.', '_')}"


def compvis_to_diffusers(path: str) -> str | None:
    """An SD 1.x/2.x U-Net module path in the original (compvis) layout in diffusers' layout."""
    match = re.match(r"^input_blocks\.(\d+)\.(\d+)\.(.+)$", path)
    if match:
        n, part, rest = int(match[1]), int(match[2]), match[3]
        if n == 0:
            return None
        block, index = (n - 1) // 3, (n - 1) % 3
        if index == 2 and rest == "op":
            return f"down_blocks.{block}.downsamplers.0.conv"
        if part == 1:
            return f"down_blocks.{block}.attentions.{index}.{rest}"
        if part == 0 and rest in _RESNET_COMPVIS:
            return f"down_blocks.{block}.resnets.{index}.{_RESNET_COMPVIS[rest]}"
        return None
    if path.startswith("input_blocks.0.0"):
        return "conv_in"
    match = re.match(r"^middle_block\.(\d+)\.(.+)$", path)
    if match:
        part, rest = int(match[1]), match[2]
        if part == 1:
            return f"mid_block.attentions.0.{rest}"
        if rest in _RESNET_COMPVIS:
            return f"mid_block.resnets.{part // 2}.{_RESNET_COMPVIS[rest]}"
        return None
    match = re.match(r"^output_blocks\.(\d+)\.(\d+)\.(.+)$", path)
    if match:
        n, part, rest = int(match[1]), int(match[2]), match[3]
        block, index = n // 3, n % 3
        if rest == "conv" and part in (1, 2):
            return f"up_blocks.{block}.upsamplers.0.conv"
        if part == 1:
            return f"up_blocks.{block}.attentions.{index}.{rest}"
        if part == 0 and rest in _RESNET_COMPVIS:
            return f"up_blocks.{block}.resnets.{index}.{_RESNET_COMPVIS[rest]}"
        return None
    return {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
            "out.2": "conv_out"}.get(path)


def _diffusers_path(path: str, legacy_attention: bool, text: bool) -> str:
    path = path.replace(".processor.", ".").replace(".processor", "")
    if legacy_attention:  # attention processor names: attn1.to_q_lora -> attn1.to_q
        if text:
            path = re.sub(r"self_attn\.to_(q|k|v)$", r"self_attn.\1_proj", path)
            path = re.sub(r"self_attn\.to_out$", "self_attn.out_proj", path)
        else:
            path = re.sub(r"\.to_out$", ".to_out.0", path)
    return path


def normalise_key(key: str) -> tuple[str, str, str] | None:
    """(kohya module name, part, naming) for one tensor key, or None when not understood."""
    for tail, part, naming in _TAILS:
        if key.endswith(tail) and len(key) > len(tail):
            stem = key[:-len(tail)]
            break
    else:
        return None
    legacy = tail.startswith("_lora.")
    # kohya: one dotted part before the tail, prefix lora_unet_ / lora_te*_
    if "." not in stem and re.match(r"^lora_(unet|te|te1|te2)_.", stem):
        if naming == "peft":
            naming = "kohya names with PEFT tensors"
        return stem, part, naming
    head, _, rest = stem.partition(".")
    if head in ("lora_unet", "lora_te", "lora_te1", "lora_te2") and rest:
        naming = "OneTrainer"
        if head == "lora_unet":
            name = "lora_unet_" + _diffusers_path(rest, legacy, False).replace(".", "_")
        else:
            name = _te_kohya(head, _diffusers_path(rest, legacy, True))
        return name, part, naming
    if head == "base_model" and rest.startswith("model."):
        head, _, rest = rest[len("model."):].partition(".")
        rest = f"{head}.{rest}"
        head = "unet" if _UNET_DIFFUSERS.match(rest) else (
            "text_encoder" if _TEXT.match(rest) else "")
        naming = "peft"
    elif _UNET_DIFFUSERS.match(stem) or _UNET_COMPVIS.match(stem) or _TEXT.match(stem):
        rest = stem
        head = "text_encoder" if _TEXT.match(stem) else "unet"
    naming = "diffusers (PEFT)" if naming in ("peft", "kohya") else naming
    if head == "unet":
        if _UNET_COMPVIS.match(rest):
            converted = compvis_to_diffusers(rest)
            if converted is None:
                return None
            return "lora_unet_" + converted.replace(".", "_"), part, "OneTrainer (OMI)"
        return "lora_unet_" + _diffusers_path(rest, legacy, False).replace(".", "_"), part, naming
    if head in ("text_encoder", "clip_l"):
        return (_te_kohya("lora_te", _diffusers_path(rest, legacy, True)), part,
                "OneTrainer (OMI)" if head == "clip_l" else naming)
    if head in ("text_encoder_2", "clip_g"):
        return (_te_kohya("lora_te2", _diffusers_path(rest, legacy, True)), part,
                "OneTrainer (OMI)" if head == "clip_g" else naming)
    return None


def kind_part(key: str) -> tuple[str, str] | None:
    """(kohya module name, tensor suffix of some network kind) of a raw key, or None: kohya's
    `name.suffix`, or another naming (OneTrainer's dotted, diffusers') whose module the LoRA
    naming rules above name."""
    name, _, part = key.partition(".")
    if part in FILE_PARTS:
        return name, part
    part = next((p for p in FILE_PARTS if key.endswith("." + p)), "")
    known = normalise_key(key[:-len(part)] + "lora_down.weight") if part else None
    return (known[0], part) if known else None


# --- reading ----------------------------------------------------------------------------

# what `inspect` / `verify` / `--init-from` say for each kind of header problem
_HEADER_MESSAGES = {
    "folder": "{name} is a folder, not a .safetensors file",
    "missing": "{path} does not exist",
    "unreadable": "{name} cannot be read ({reason})",
    "special": "{reason}",
    "empty": "{name} is empty or truncated; it is not a .safetensors file",
    "too_big": "{name} is not a LoRA file: its header claims {n:,} bytes "
               "(more than the {max:,} allowed)",
    "short": "{name} is truncated or not a .safetensors file",
    "not_json": "{name} is not a .safetensors file (its header is not JSON)",
    "not_object": "{name} is not a .safetensors file (its header is not an object)",
    "bad_entry": "{name} is damaged (bad header entry for {key!r})",
    "dtype": "{name} stores {key!r} as {dtype}, which LoRA Studio cannot read",
    "wrong_size": "{name} is damaged (tensor {key!r} has the wrong size)",
    "truncated": "{name} is truncated (it ends before tensor {key!r})",
}


def read_header(path: Path) -> tuple[int, dict[str, TensorEntry], dict[str, str], list[str]]:
    """(N, tensor entries, metadata, warnings) with every safety check done; no tensor data read.

    The header itself is checked by the shared parser (trainer.families.safetensors_header); on top
    of it a LoRA's metadata values must be strings, and long ones are cut with a warning."""
    path = Path(path)
    try:
        header = parse_header(path, SAFETENSORS_DTYPES)
    except SafetensorsError as error:
        raise LoraFileError(error.message(_HEADER_MESSAGES)) from None
    name = path.name
    if not isinstance(header.metadata, dict):
        raise LoraFileError(f"{name}: its __metadata__ is not a string-to-string map")
    warnings: list[str] = []
    metadata: dict[str, str] = {}
    for key, value in header.metadata.items():
        if not isinstance(value, str):
            raise LoraFileError(
                f"{name}: metadata {key!r} is {type(value).__name__} {json.dumps(value)[:40]}, "
                "not a string; every loader expects string metadata")
        if len(value) > MAX_METADATA_CHARS:
            warnings.append(f"metadata {key!r} is {len(value):,} characters long; "
                            f"only the first {MAX_METADATA_CHARS:,} were read")
            value = value[:MAX_METADATA_CHARS]
        metadata[key] = value
    return header.header_bytes, header.tensors, metadata, warnings


def _hashes(path: Path, header_end: int) -> tuple[str, str]:
    whole, data = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as handle:
        head = handle.read(header_end)
        whole.update(head)
        while block := handle.read(8 << 20):
            whole.update(block)
            data.update(block)
    return whole.hexdigest(), data.hexdigest()


def _adapter_alphas(metadata: dict[str, str]) -> dict[str, float]:
    """diffusers' `lora_adapter_metadata` (`unet.lora_alpha`, ...): component -> alpha."""
    text = metadata.get("lora_adapter_metadata")
    if not text:
        return {}
    try:
        packed = json.loads(text)
    except ValueError:
        return {}
    out = {}
    for key, value in packed.items() if isinstance(packed, dict) else ():
        component, _, field_name = key.rpartition(".")
        if field_name == "lora_alpha" and isinstance(value, (int, float)):
            out[component or "unet"] = float(value)
    return out


def read_lora_file(path: Path | str) -> LoraFile:
    """Read and normalise a LoRA file. Raises LoraFileError (one line) when it is unreadable;
    a readable file with odd keys is returned with `unknown_keys` / `incomplete` filled in."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    n, entries, metadata, warnings = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise LoraFileError(f"{path.name} cannot be read as .safetensors "
                            f"({str(error).splitlines()[0] if str(error) else error})") from None
    file_sha, data_sha = _hashes(path, 8 + n)
    modules: dict[str, LoraModule] = {}
    namings: Counter = Counter()
    unknown: list[str] = []
    for key in sorted(tensors):
        found = normalise_key(key)
        if found is None:
            unknown.append(key)
            continue
        name, part, naming = found
        module = modules.setdefault(name, LoraModule(name))
        if part in module.keys:
            warnings.append(f"{key} and {module.keys[part]} both give {name}'s {part}; "
                            "the first is used")
            continue
        module.keys[part] = key
        tensor = tensors[key]
        if part == "alpha":
            if tensor.numel() != 1 or entries[key].dtype not in FLOAT_DTYPES | {"I64", "I32"}:
                warnings.append(f"{key} is not a single number (shape {list(tensor.shape)})")
                module.alpha = float(tensor.float().flatten()[0]) if tensor.numel() else None
            else:
                module.alpha = float(tensor.float().item())
        else:
            if entries[key].dtype not in FLOAT_DTYPES:
                raise LoraFileError(f"{path.name}: {key} is stored as {entries[key].dtype}, "
                                    "not a floating-point type")
            setattr(module, part, tensor)
            namings[naming] += 1
    # an alpha-only "module" with no weights is not a module
    for name in [n for n, m in modules.items() if m.down is None and m.up is None]:
        unknown.extend(modules.pop(name).keys.values())
    for module in modules.values():
        _check_weights(path, module)
    component_alphas = _adapter_alphas(metadata)
    if component_alphas:
        for module in modules.values():
            if module.alpha is None:
                component = "unet" if module.name.startswith("lora_unet_") else (
                    "text_encoder_2" if module.name.startswith("lora_te2_") else "text_encoder")
                module.alpha = component_alphas.get(component)
    # DoRA / LoHa / LoKr tensors are understood by kind (LoraFile.kind_modules), not as LoRA
    parts: dict[str, set[str]] = {}
    for key in entries:
        if (place := kind_part(key)) is not None:
            parts.setdefault(place[0], set()).add(place[1])
    unknown = [key for key in unknown
               if (place := kind_part(key)) is None or kind_of_suffixes(parts[place[0]]) is None]
    for key in unknown:
        kind = next((label for tail, label in _UNSUPPORTED.items() if key.endswith(tail)), None)
        if kind:
            warnings.append(f"{key}: {kind} tensors are not plain LoRA and are ignored")
    return LoraFile(path=path, size=path.stat().st_size, header_bytes=n, metadata=metadata,
                    entries=entries, tensors=tensors, modules=modules, namings=namings,
                    unknown_keys=unknown, warnings=warnings, file_sha256=file_sha,
                    data_sha256=data_sha)


def _check_weights(path: Path, module: LoraModule) -> None:
    """A damaged file is refused before it is used (`--init-from`, `inspect`, `verify`): each
    weight a matrix (2-D) or a conv kernel (4-D), up and down agreeing on the rank, and every
    value finite."""
    import torch

    for part in ("down", "up"):
        tensor = getattr(module, part)
        if tensor is not None and tensor.ndim not in (2, 4):
            raise LoraFileError(f"{path.name}: {module.keys[part]} has shape "
                                f"{list(tensor.shape)}; a LoRA weight is a matrix (2-D) or a "
                                "conv kernel (4-D): the file is damaged")
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise LoraFileError(f"{path.name}: {module.keys[part]} holds {bad:,} non-finite "
                                "values (NaN or infinity): the file is damaged (a training that "
                                "diverged?); pick another file")
    if module.down is not None and module.up is not None and (
            module.up.shape[1] != module.down.shape[0] or module.up.ndim != module.down.ndim):
        raise LoraFileError(f"{path.name}: {module.keys['up']} {list(module.up.shape)} and "
                            f"{module.keys['down']} {list(module.down.shape)} disagree on the "
                            "rank: the file is damaged")


# --- metadata helpers -------------------------------------------------------------------

def top_tags(metadata: dict[str, str], top: int = 10) -> list[tuple[str, int]]:
    text = metadata.get("ss_tag_frequency")
    if not text:
        return []
    try:
        folders = json.loads(text)
    except ValueError:
        return []
    counts: Counter = Counter()
    for tags in folders.values() if isinstance(folders, dict) else ():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if isinstance(count, (int, float)):
                    counts[str(tag).strip()] += int(count)
    return counts.most_common(top)


def _timestamp_text(value: str) -> str:
    try:
        return datetime.fromtimestamp(float(value), timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return value


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def format_inspect(lora: LoraFile) -> str:
    """What `lora-train inspect` prints."""
    from trainer.families import get_family

    family = get_family(lora.family).label if lora.family else "unknown"
    lines = [f"file:          {lora.path.name} ({lora.size:,} bytes)",
             f"naming:        {lora.naming}",
             f"family:        {family}",
             f"kind:          {lora.kind}",
             f"base model:    {lora.base_version}"]
    if "ss_v2" in lora.metadata:
        lines.append(f"ss_v2:         {lora.metadata['ss_v2']}")
    if "modelspec.architecture" in lora.metadata:
        lines.append(f"architecture:  {lora.metadata['modelspec.architecture']}")
    ranks = ", ".join(f"{r} ({c} modules)" for r, c in sorted(lora.ranks.items()))
    alphas = ", ".join(f"{_number(a)} ({c} modules)" for a, c in sorted(lora.alphas.items()))
    modules = {"all": len(lora.modules), "unet": len(lora.unet_modules),
               "text": len(lora.text_encoder_modules)}
    kind = lora.network_kind
    if kind.required != LORA.required:  # LoHa / LoKr: counted by their own tensors
        shapes = {name: {part: tuple(lora.entries[key].shape) for part, key in parts.items()}
                  for name, parts in lora.kind_modules.items()}
        found = Counter(kind.file_rank(s) for s in shapes.values() if kind_of_suffixes(set(s)) is kind)
        ranks = ", ".join(f"{r if r else 'none (full factors)'} ({c} modules)"
                          for r, c in sorted(found.items(), key=lambda rc: rc[0] or 0))
        alphas = ", ".join(f"{_number(a)} ({c} modules)" for a, c in sorted(Counter(
            float(lora.tensors[p["alpha"]].float()) for p in lora.kind_modules.values()
            if "alpha" in p).items()))
        unet = sum(1 for name in shapes if name.startswith("lora_unet_"))
        modules = {"all": len(shapes), "unet": unet, "text": len(shapes) - unet}
    lines += [f"modules:       {modules['all']} ({modules['unet']} U-Net, "
              f"{modules['text']} text encoder)",
              f"rank:          {ranks or 'none'}",
              f"alpha:         {alphas or 'none'}"
              + (f"  [{len(lora.missing_alphas)} modules store no alpha: alpha = rank]"
                 if lora.missing_alphas else ""),
              f"dtype:         {lora.dtype}",
              "modules by block:"]
    for block, count in sorted(lora.block_counts().items(), key=lambda bc: _block_order(bc[0])):
        lines.append(f"  {block:<16} {count}")
    stored = lora.metadata.get("sshs_model_hash", "")
    autov3_note = "" if not stored else (" (= sshs_model_hash)" if stored == lora.autov3 else
                                         f" (file says sshs_model_hash {stored[:12]}...: MISMATCH)")
    lines += [f"AutoV2:        {lora.autov2.upper()}",
              f"AutoV3:        {lora.autov3[:12].upper()}  full {lora.autov3}{autov3_note}",
              f"sha256:        {lora.file_sha256}"]
    phrase, tags = lora.trigger_words()
    lines.append(f"trigger words: {', '.join(phrase) if phrase else 'none given'}")
    if tags:
        lines.append("top training tags: " + ", ".join(f"{t} ({c})" for t, c in tags))
    record = lora.training_record()
    if record:
        lines.append("training record:")
        for key, value in record.items():
            if len(value) > 120:
                value = value[:117] + "..."
            lines.append(f"  {key:<28} {value}")
    else:
        lines.append("training record: none in the file")
    if "modelspec.thumbnail" in lora.metadata:
        lines.append(f"cover image:   {len(lora.metadata['modelspec.thumbnail']):,} characters "
                     "(modelspec.thumbnail)")
    if lora.incomplete:
        lines.append(f"INCOMPLETE modules (no down or up tensor): {', '.join(lora.incomplete[:5])}"
                     + (f" and {len(lora.incomplete) - 5} more" if len(lora.incomplete) > 5 else ""))
    if lora.unknown_keys:
        lines.append(f"keys not understood ({len(lora.unknown_keys)}): "
                     + ", ".join(lora.unknown_keys[:5])
                     + (" ..." if len(lora.unknown_keys) > 5 else ""))
    for warning in lora.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _block_order(label: str) -> tuple:
    order = ["unet down", "unet input", "unet mid", "unet middle", "unet up", "unet output",
             "unet other", "text encoder", "other"]
    stem, _, index = label.rpartition(".") if "." in label else (label, "", "")
    rank = next((i for i, prefix in enumerate(order) if stem.startswith(prefix)), len(order))
    return rank, stem, int(index) if index.isdigit() else -1
