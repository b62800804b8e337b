"""Reading an exported LoRA back and proving it is what docs/lora-format.md says.

`verify_lora_file(path, base)` returns a VerifyReport: one Check (name, ok, detail) per rule.
File rules: the grammar of every key, complete modules of one network kind
(trainer.network_kinds), the kind's factor shapes, one dtype, metadata present and consistent
with the tensors (ss_network_module, ss_network_dim, ss_network_alpha with LoCon's conv_dim /
conv_alpha, base version / ss_v2 / modelspec.architecture), sshs_model_hash and sshs_legacy_hash
recomputed. Base-model rules: every module fits its base layer; for LoRA / LoCon diffusers' own
loader (`load_lora_weights`) reads the file into a pipeline of the base model, and for every
module the fused weight must equal W0 + (alpha / r) * up @ down, a fixed-seed U-Net (and
text-encoder) output must change at strength 1 and equal the base at strength 0; every kind is
also applied with the loaders' arithmetic (trainer.verify_applied), and at the end of a run
compared module by module with the trained model. A loader that "loads" a file without applying
it is caught by the weights and the outputs, not by the absence of an error.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from trainer.lora_reader import DTYPE_NAMES, LoraFile, read_lora_file
from trainer.network_kinds import FILE_PARTS, LORA, NetworkKind, kind_of_suffixes
from trainer.verify_report import VerifyReport, few

_INDEX = r"\d+"
_TRANSFORMER_TAIL = (rf"_(?:proj_in|proj_out|transformer_blocks_{_INDEX}_(?:attn[12]_(?:to_q|to_k|to_v|to_out_0)"
                     rf"|ff_net_0_proj|ff_net_2))")
# SD 1.x / 2.x: diffusers paths
_UNET_TRANSFORMER = (
    rf"(?:down_blocks_{_INDEX}_attentions_{_INDEX}|mid_block_attentions_0|"
    rf"up_blocks_{_INDEX}_attentions_{_INDEX}){_TRANSFORMER_TAIL}")
_UNET_CONV = (
    rf"(?:(?:down_blocks_{_INDEX}|mid_block|up_blocks_{_INDEX})_resnets_{_INDEX}"
    rf"_(?:conv1|conv2|conv_shortcut|time_emb_proj)"
    rf"|down_blocks_{_INDEX}_downsamplers_0_conv|up_blocks_{_INDEX}_upsamplers_0_conv)")
# SDXL: the original SGM paths (docs/lora-format.md, "Names, SDXL")
_SGM_TRANSFORMER = rf"(?:input_blocks_{_INDEX}_1|middle_block_1|output_blocks_{_INDEX}_1){_TRANSFORMER_TAIL}"
_SGM_CONV = (
    rf"(?:(?:input_blocks_{_INDEX}|output_blocks_{_INDEX})_0|middle_block_[02])"
    rf"_(?:in_layers_2|out_layers_3|emb_layers_1|skip_connection)"
    rf"|input_blocks_{_INDEX}_0_op|output_blocks_{_INDEX}_[12]_conv")
MODULE_NAME = re.compile(
    rf"^(?:lora_unet_(?:{_UNET_TRANSFORMER}|{_UNET_CONV}|{_SGM_TRANSFORMER}|{_SGM_CONV})"
    rf"|lora_te[12]?_text_model_encoder_layers_{_INDEX}_(?:self_attn_(?:q|k|v|out)_proj|mlp_fc[12]))$")
REQUIRED_METADATA = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_v2",
                     "ss_base_model_version", "modelspec.sai_model_spec",
                     "modelspec.architecture", "sshs_model_hash", "sshs_legacy_hash")
JSON_METADATA = ("ss_network_args", "ss_tag_frequency", "ss_dataset_dirs", "ss_bucket_info")
# alpha tensors are stored in the file dtype; ss_network_alpha is the exact decimal.
ALPHA_RTOL = {"F16": 1e-3, "BF16": 8e-3, "F32": 1e-6, "F64": 1e-12}


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=rtol)


# --- rules on the file alone ------------------------------------------------------------

def check_file(lora: LoraFile, report: VerifyReport) -> dict[str, dict[str, str]]:
    keys = sorted(lora.entries)
    bad = [k for k in keys if not (k.partition(".")[2] in FILE_PARTS
                                   and MODULE_NAME.match(k.partition(".")[0]))]
    report.add("key names", not bad and bool(keys),
               f"all {len(keys)} keys follow lora-format.md" if keys and not bad else
               "the file has no tensors" if not keys else
               f"{len(bad)} keys outside the kohya grammar: {few(bad)}")

    modules = lora.kind_modules
    kind = lora.network_kind
    incomplete, other_kind = [], []
    for name, parts in sorted(modules.items()):
        shown = kind_of_suffixes(set(parts))
        if shown is not None and shown is not kind:
            other_kind.append(f"{name} ({shown.label})")
        for part in (*kind.required, "alpha"):
            if part not in parts:
                incomplete.append(f"{name}.{part}")
    needs = ", ".join((*kind.required, "alpha")) if kind.required else "lokr_w1 / lokr_w2 and alpha"
    report.add("complete modules", not incomplete and not other_kind and bool(modules),
               f"{len(modules)} {kind.label} modules, each with {needs}"
               if not incomplete and not other_kind else
               f"modules of another kind than the file's {kind.label}: {few(other_kind)}"
               if other_kind else f"missing {few(incomplete)}"
               + (" (a missing alpha is read as scale 1 by every loader)"
                  if any(k.endswith(".alpha") for k in incomplete) else ""))

    dtypes = sorted({entry.dtype for entry in lora.entries.values()})
    allowed = {"F16", "BF16", "F32"}
    report.add("one dtype", len(dtypes) == 1 and dtypes[0] in allowed,
               f"all tensors {DTYPE_NAMES.get(dtypes[0], dtypes[0])}" if len(dtypes) == 1
               and dtypes[0] in allowed else
               f"tensors are stored as {', '.join(DTYPE_NAMES.get(d, d) for d in dtypes)}"
               + ("; the file must use one of fp16, bf16, fp32" if dtypes else ""))

    # tensor shapes that need no base model: the kind's factors fit, alpha is 0-dim
    shape_problems = []
    ranks: dict[str, int] = {}
    for name, parts in sorted(modules.items()):
        shapes = {part: tuple(lora.entries[key].shape) for part, key in parts.items()}
        alpha = lora.entries.get(parts.get("alpha", ""))
        if all(part in shapes for part in kind.required) and kind_of_suffixes(set(parts)) is kind:
            problem = kind.parts_problem(shapes)
            if problem:
                shape_problems.append(f"{name}: {problem}")
            elif kind.file_rank(shapes) is not None:
                ranks[name] = kind.file_rank(shapes)
        if alpha and alpha.shape != ():
            shape_problems.append(f"{name}.alpha has shape {list(alpha.shape)}, not []")
    report.add("factor shapes", not shape_problems,
               f"the {kind.label} factors fit together in {len(modules)} modules"
               if not shape_problems else few(shape_problems, 2))

    _check_metadata(lora, modules, ranks, report, kind)
    _check_hashes(lora, report)
    return modules


def _check_metadata(lora: LoraFile, modules: dict[str, dict[str, str]], ranks: dict[str, int],
                    report: VerifyReport, kind: NetworkKind = LORA) -> None:
    meta = lora.metadata
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    bad_json = []
    for key in JSON_METADATA:
        if key in meta:
            try:
                json.loads(meta[key])
            except ValueError:
                bad_json.append(key)
    wrong_module = meta.get("ss_network_module", kind.network_module) != kind.network_module
    thumbnail = meta.get("modelspec.thumbnail")
    bad_thumbnail = thumbnail is not None and not thumbnail.startswith("data:image/")
    report.add("metadata present", not (missing or bad_json or wrong_module or bad_thumbnail),
               f"{len(meta)} string values including every key the loaders read"
               if not (missing or bad_json or wrong_module or bad_thumbnail) else "; ".join(
                   ([f"missing {', '.join(missing)}"] if missing else [])
                   + ([f"{', '.join(bad_json)} not valid JSON"] if bad_json else [])
                   + ([f"ss_network_module = {meta['ss_network_module']!r}, expected "
                       f"{kind.network_module!r} for {kind.label}"] if wrong_module else [])
                   + (["modelspec.thumbnail is not a data:image/ URL"] if bad_thumbnail else [])))

    distinct = sorted(set(ranks.values()))
    conv_dim, conv_alpha = _conv_args(meta)
    convs = {name for name in modules if KXK_CONV.search(name)}
    if "ss_network_dim" in meta:
        try:
            dim = int(meta["ss_network_dim"])
        except ValueError:
            dim = None
        # kohya's LoCon: k x k convs have ss_network_args' conv_dim, every other module the dim
        wrong = [n for n, r in ranks.items()
                 if r != (conv_dim if n in convs and conv_dim is not None else dim)]
        also = f" (conv_dim {conv_dim} for the {len(convs)} k x k convs)" if convs else ""
        # LoKr: a module whose two factors are full matrices has no rank (it reads at scale 1)
        none_needed = kind.name == "lokr"
        report.add("ss_network_dim", dim is not None and not wrong and (bool(ranks) or none_needed),
                   f"ss_network_dim = {dim} = the rank of every module with one{also}"
                   if dim is not None and not wrong and (ranks or none_needed) else
                   f"ss_network_dim = {meta['ss_network_dim']!r} is not a whole number"
                   if dim is None else "no module to compare with" if not ranks else
                   f"ss_network_dim = {dim} but the tensors have rank "
                   f"{', '.join(map(str, distinct))} (e.g. {wrong[0]} has rank {ranks[wrong[0]]})")
    if "ss_network_alpha" in meta:
        try:
            alpha = float(meta["ss_network_alpha"])
        except ValueError:
            alpha = None
        wrong = []
        for name, parts in sorted(modules.items()):
            if "alpha" in parts and (kind.name != "lokr" or name in ranks):
                entry = lora.entries[parts["alpha"]]
                value = float(lora.tensors[parts["alpha"]].float().flatten()[0]) \
                    if lora.tensors[parts["alpha"]].numel() else float("nan")
                expected = conv_alpha if name in convs and conv_alpha is not None else alpha
                if expected is None or not _close(value, expected,
                                                  ALPHA_RTOL.get(entry.dtype, 1e-3)):
                    wrong.append(f"{parts['alpha']} = {value:g}")
        also = f" (conv_alpha {conv_alpha:g} for the k x k convs)" if convs and conv_alpha else ""
        report.add("ss_network_alpha", alpha is not None and not wrong,
                   f"ss_network_alpha = {alpha:g} = every alpha tensor{also}" if alpha is not None
                   and not wrong else
                   f"ss_network_alpha = {meta['ss_network_alpha']!r} is not a number"
                   if alpha is None else
                   f"ss_network_alpha = {alpha:g} but {few(wrong, 2)}")
    # the three base-version keys must agree with each other (and with the base, later)
    version, v2, arch = (meta.get("ss_base_model_version"), meta.get("ss_v2"),
                         meta.get("modelspec.architecture"))
    if version and v2 and arch:
        from trainer.metadata import base_versions

        table = {v: (a, str(is_v2)) for v, (a, is_v2) in base_versions().items()}
        expected = table.get(version)
        report.add("base version keys agree",
                   expected is not None and expected == (arch, v2),
                   f"ss_base_model_version {version}, ss_v2 {v2}, modelspec.architecture {arch}"
                   if expected == (arch, v2) else
                   f"ss_base_model_version = {version!r} is not one the loaders know"
                   if expected is None else
                   f"ss_base_model_version {version} needs ss_v2 {expected[1]} and "
                   f"modelspec.architecture {expected[0]}; the file says {v2} and {arch}")


# the modules that are 3 x 3 convolutions in every family (ResNet conv1 / conv2, the samplers),
# by name: a LoHa / LoKr file flattens their kernels, so the shapes do not tell
KXK_CONV = re.compile(r"(_resnets_\d+_conv[12]|_(?:down|up)samplers_0_conv|_in_layers_2|"
                      r"_out_layers_3|input_blocks_\d+_0_op|output_blocks_\d+_\d_conv)$")


def _conv_args(meta: dict[str, str]) -> tuple[int | None, float | None]:
    """kohya's LoCon `conv_dim` / `conv_alpha` from ss_network_args (None where absent)."""
    try:
        args = json.loads(meta.get("ss_network_args") or "{}")
        args = args if isinstance(args, dict) else {}
        dim = int(args["conv_dim"]) if "conv_dim" in args else None
        alpha = float(args["conv_alpha"]) if "conv_alpha" in args else None
    except (ValueError, TypeError):
        return None, None
    return dim, alpha


def _check_hashes(lora: LoraFile, report: VerifyReport) -> None:
    from trainer.export import tensor_data_hashes

    stored = lora.metadata.get("sshs_model_hash")
    report.add("sshs_model_hash", stored == lora.data_sha256,
               f"{lora.data_sha256[:12]}... = sha256 of the {lora.size - 8 - lora.header_bytes:,} "
               "bytes after the header" if stored == lora.data_sha256 else
               "missing" if stored is None else
               f"sshs_model_hash = {stored[:16]}... but the tensor data hashes to "
               f"{lora.data_sha256[:16]}...")
    _, legacy = tensor_data_hashes(lora.tensors)
    stored_legacy = lora.metadata.get("sshs_legacy_hash")
    report.add("sshs_legacy_hash", stored_legacy == legacy,
               f"{legacy} recomputed" if stored_legacy == legacy else
               "missing" if stored_legacy is None else
               f"sshs_legacy_hash = {stored_legacy} but the tensors give {legacy}")


def verify_lora_file(path: Path | str, base_model_path: Path | str | None = None,
                     trained_network=None) -> VerifyReport:
    """Every check lora-format.md implies. Raises LoraFileError when the file cannot be read at
    all and ModelError when the base model cannot be loaded; everything else is a Check.
    `trained_network` (the LoraNetwork a run trained) adds the module-by-module comparison of
    the file, applied as the loaders apply it, with the trained model's merged weights."""
    path = Path(path)
    lora = read_lora_file(path)
    report = VerifyReport(path, Path(base_model_path) if base_model_path else None)
    modules = check_file(lora, report)
    kind = lora.network_kind
    if base_model_path is None:
        report.skipped.append("base model checks (shapes, base version, diffusers loading, "
                              "weights, outputs): no base model given")
        return report
    from trainer.models import load_base_model
    from trainer.verify_applied import DIFFUSERS_CANNOT, check_applied
    from trainer.verify_base import check_base, check_diffusers

    base = load_base_model(Path(base_model_path))
    check_base(lora, modules, base, report, shapes=kind is LORA)
    if kind is not LORA or trained_network is not None:
        try:
            check_applied(lora, modules, kind, base, report, trained_network)
        except Exception as error:  # a crash is a failed check, never a failed run
            message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            report.add("applied as the loaders do", False,
                       f"stopped by {type(error).__name__}: {message}")
    if kind.name in DIFFUSERS_CANNOT:
        report.skipped.append(f"diffusers round trip: not applicable, {DIFFUSERS_CANNOT[kind.name]}")
        return report
    if Path(base_model_path).is_dir():
        # free them: the pipeline loads its own copy
        base.unet = base.text_encoder = base.text_encoder_2 = None
    try:
        check_diffusers(lora, modules, Path(base_model_path), base, report)
    except Exception as error:  # a loader crash is a failed check, not a crash of verify
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        report.add("diffusers checks", False, f"stopped by {type(error).__name__}: {message}")
    return report
