"""The exported file's metadata: kohya's `ss_*` training record and the modelspec keys.

Names and value formats follow docs/lora-format.md (every value a string; JSON where the value
is structured; booleans as "True"/"False"). Civitai reads `ss_tag_frequency` for its training-tags
view; A1111 groups LoRAs by `ss_base_model_version` / `ss_v2`.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

from trainer.config import TrainConfig
from trainer.data import DatasetReport, bucket_info, dataset_dirs, tag_frequency
from trainer.families import FAMILIES, get_family
from trainer.network_groups import TARGET_PATTERN, group_of
from trainer.network_kinds import get_kind


def json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def base_versions() -> dict[str, tuple[str, bool]]:
    """ss_base_model_version -> (modelspec.architecture, ss_v2) over every family."""
    return {version: (architecture, family.ss_v2) for family in FAMILIES.values()
            for version, architecture, _ in family.versions.values()}


def base_model_metadata(family: str, prediction_type: str) -> dict[str, str]:
    """The keys A1111 groups LoRAs by (ss_base_model_version, ss_v2) and modelspec's
    architecture, implementation, default resolution and prediction type, for a family or
    detection name ("sd1", "sd2", "sd2_v", "sdxl")."""
    try:
        spec = get_family(family)
    except KeyError as error:
        raise ValueError(f"cannot export a LoRA for base family {family!r}") from error
    if family == "sd2_v":
        prediction_type = "v_prediction"
    return spec.base_metadata(prediction_type)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def network_args(net) -> dict[str, object]:
    """`ss_network_args`: the layers as picked (one list when chosen one by one, else the lists
    whose product they are); when k x k convolutions are trained, kohya's LoCon `conv_dim` /
    `conv_alpha` as strings, the way kohya writes them; and the kind's own (LyCORIS' `algo`,
    DoRA's `dora_wd`, LoKr's `factor`, ...)."""
    args: dict[str, object] = {"targets": net.targets if net.targets is not None else {
        "blocks": net.blocks, "modules": net.modules, "attention": net.attention,
        "projections": net.projections}}
    if any(group_of(TARGET_PATTERN.match(entry)["leaf"]) == "conv" for entry in net.target_layers):
        args["conv_dim"] = str(net.rank_for((3, 3)))
        args["conv_alpha"] = f"{net.alpha_for((3, 3)):g}"
    return {**args, **get_kind(net.kind).network_args(net)}


def _anonymise(mapping: dict[str, object]) -> dict[str, object]:
    """Folder names replaced by neutral ones, for the privacy switch."""
    return {f"dataset_{index}": value for index, value in enumerate(mapping.values())}


def training_metadata(config: TrainConfig, report: DatasetReport, base, position,
                      started_at: float, total_steps: int) -> dict[str, str]:
    """Everything kohya writes that applies to this run, as strings."""
    data, net, opt, sched = report.settings, config.network, config.optimizer, config.schedule
    width, height = data.resolution
    first = report.subsets[0]  # kohya records one subset's caption options; so do we
    private = config.metadata.hide_folder_names
    dirs, tags = dataset_dirs(report), tag_frequency(report)
    if private:
        dirs, tags = _anonymise(dirs), _anonymise(tags)
    # several processes (trainer.distributed): a batch is a global one, each process a part
    batches = report.steps_per_epoch(data.batch_size * position.processes)
    meta: dict[str, str] = {
        "ss_network_module": get_kind(net.kind).network_module,
        "ss_network_dim": str(net.rank),
        "ss_network_alpha": f"{net.alpha:g}",
        "ss_network_dropout": f"{net.dropout:g}",
        # The layers as picked: one list when chosen one by one (network.targets), else the
        # three lists whose product they are.
        "ss_network_args": json_text(network_args(net)),
        "ss_output_name": config.output.name,
        "ss_training_started_at": str(int(started_at)),
        "ss_training_finished_at": str(int(time.time())),
        "ss_session_id": str(uuid.uuid4().int % 2**31),
        "ss_steps": str(position.step),
        "ss_epoch": str(position.epoch + (1 if position.batch_in_epoch else 0)),
        "ss_num_epochs": str(max(1, -(-total_steps * sched.gradient_accumulation_steps
                                      // max(batches, 1)))),
        "ss_max_train_steps": str(total_steps),
        "ss_num_train_images": str(report.total_with_repeats),
        "ss_num_reg_images": str(report.num_reg_images),
        "ss_num_batches_per_epoch": str(batches),
        "ss_batch_size_per_device": str(data.batch_size),
        "ss_total_batch_size": str(data.batch_size * position.processes
                                   * sched.gradient_accumulation_steps),
        "ss_gradient_accumulation_steps": str(sched.gradient_accumulation_steps),
        "ss_gradient_checkpointing": str(config.precision.gradient_checkpointing),
        "ss_learning_rate": f"{opt.learning_rate:g}",
        "ss_unet_lr": f"{opt.learning_rate:g}",
        "ss_text_encoder_lr": f"{config.text_encoder_lr:g}" if net.train_text_encoder else "0",
        "ss_lr_scheduler": sched.lr_scheduler,
        "ss_lr_warmup_steps": str(sched.lr_warmup_steps),
        "ss_optimizer": opt.type,
        "ss_max_grad_norm": f"{opt.max_grad_norm:g}",
        "ss_mixed_precision": config.precision.mixed_precision,
        "ss_seed": str(sched.seed),
        "ss_clip_skip": str(config.model.clip_skip),
        "ss_resolution": f"({width}, {height})",
        "ss_enable_bucket": str(data.enable_bucket),
        "ss_min_bucket_reso": str(data.min_bucket_reso),
        "ss_max_bucket_reso": str(data.max_bucket_reso),
        "ss_bucket_no_upscale": str(data.bucket_no_upscale),
        "ss_bucket_info": json_text(bucket_info(report)),
        "ss_cache_latents": str(config.precision.cache_latents),
        "ss_shuffle_caption": str(first.shuffle_caption),
        "ss_keep_tokens": str(first.keep_tokens),
        "ss_flip_aug": str(first.flip_aug),
        "ss_masked_loss": str(report.masked_loss),  # kohya's key: --masked_loss (or alpha_mask)
        "ss_noise_offset": f"{config.loss.noise_offset:g}" if config.loss.noise_offset else "None",
        "ss_min_snr_gamma": f"{config.loss.min_snr_gamma:g}" if config.loss.min_snr_gamma else "None",
        "ss_caption_dropout_rate": f"{first.caption_dropout_rate:g}",
        "ss_caption_tag_dropout_rate": f"{first.caption_tag_dropout_rate:g}",
        "ss_dataset_dirs": json_text(dirs),
        "ss_tag_frequency": json_text(tags),
        "ss_sd_model_name": "base_model" if private else base.source.name,
        "ss_new_sd_model_hash": base.source_sha256 or "",
        "ss_training_comment": config.metadata.description,
        "modelspec.title": config.metadata.title or config.output.name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": _iso(time.time()),
    }
    meta.update(base_model_metadata(base.family, base.noise_scheduler.config.prediction_type))
    meta["modelspec.resolution"] = f"{width}x{height}"  # what it was trained at, not the default
    for key in ("author", "description", "license", "trigger_phrase"):
        value = getattr(config.metadata, key)
        if value:
            meta[f"modelspec.{key}"] = value
    if config.metadata.tags:
        meta["modelspec.tags"] = ", ".join(config.metadata.tags)
    if first.trigger_word and "modelspec.trigger_phrase" not in meta:
        meta["modelspec.trigger_phrase"] = first.trigger_word
    return meta


USER_FIELDS = ("title", "author", "description", "trigger_phrase", "tags", "license")
MAX_USER_TEXT = 20_000  # characters per field; Civitai shows far less


def anonymise_folder_names(meta: dict[str, str]) -> dict[str, str]:
    """The privacy switch applied to a finished record: folder names in ss_dataset_dirs and
    ss_tag_frequency become dataset_0, dataset_1, ...; the base model's file name goes."""
    out = dict(meta)
    for key in ("ss_dataset_dirs", "ss_tag_frequency"):
        if key in out:
            try:
                value = json.loads(out[key])
            except ValueError:
                value = None
            out[key] = json_text(_anonymise(value)) if isinstance(value, dict) else "{}"
    if "ss_sd_model_name" in out:
        out["ss_sd_model_name"] = "base_model"
    return out


def apply_user_metadata(meta: dict[str, str], user: dict[str, object], *,
                        thumbnail: str | None = None,
                        hide_folder_names: bool = False) -> dict[str, str]:
    """Set the artist-facing modelspec fields (MetadataConfig names: title, author,
    description, trigger_phrase, tags, license) and the cover; empty values are left alone."""
    out = dict(meta)
    for key, value in user.items():
        if key not in USER_FIELDS:
            raise ValueError(f"unknown metadata field {key!r}; use one of {', '.join(USER_FIELDS)}")
        if value in (None, "", [], ()):
            continue
        if key == "tags":
            items = [value] if isinstance(value, str) else list(value)  # type: ignore[arg-type]
            text = ", ".join(str(t).strip() for t in items if str(t).strip())
        else:
            text = str(value).strip()
        if len(text) > MAX_USER_TEXT:
            raise ValueError(f"metadata {key} is {len(text):,} characters; keep it under "
                             f"{MAX_USER_TEXT:,}")
        if not text:
            continue
        out[f"modelspec.{key}"] = text
        if key == "description":
            out["ss_training_comment"] = text
    if thumbnail:
        out["modelspec.thumbnail"] = thumbnail
    if hide_folder_names:
        out = anonymise_folder_names(out)
    return out
