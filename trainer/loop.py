"""The training loop, top to bottom: dataset -> model -> LoRA -> caches -> steps -> file.

`train()` raises the typed errors of the modules it calls; `trainer.failures` turns them into a
`Failed` event. Everything the loop reports goes through `emit` and into `events.jsonl`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from trainer import checkpoint as ckpt
from trainer import distributed
from trainer.caching import (LatentCache, TextEmbeddingCache, default_cache_dir,
                             weights_fingerprint)
from trainer.conditioning import Conditioning, encode_prompts
from trainer.config import TrainConfig
from trainer.config_io import ConfigError, config_to_toml
from trainer.data import (DatasetError, DatasetReport, base_caption, captions_are_static, epoch_batches,
                          sample_plan, scan_dataset)
from trainer.data.batches import derive_seed
from trainer.events import (Event, EventLog, Failed, Finished, Log, Loss, Progress, Saved,
                            Started, Validation)
from trainer.metadata import training_metadata
from trainer.model_setup import prepare_for_training
from trainer.models import load_base_model
from trainer.network import apply_lora_to
from trainer.objective import diffusion_loss, draw_noise
from trainer.optim import build_optimizer, build_scheduler
from trainer.export import cover_thumbnail
from trainer.resume import restore, training_state
from trainer.run_folder import claim_run_folder, release_run_folder
from trainer.sampling import PreviewRenderer, prompt_specs

PAUSE_POLL_S = 0.2  # how often a paused run looks for Continue, Stop, Sample now, Save now


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, files: list[str], value: float) -> None:
        self.step, self.files = step, files
        super().__init__(f"the loss became {value} at step {step} (batch: {', '.join(files)})")


@dataclass
class TrainControl:
    """Requests from outside the loop, acted on at the next step boundary."""

    stop: threading.Event = field(default_factory=threading.Event)
    sample_now: threading.Event = field(default_factory=threading.Event)
    save_now: threading.Event = field(default_factory=threading.Event)
    pause: threading.Event = field(default_factory=threading.Event)
    # Called after every optimizer step, and while paused (the job process polls its
    # command queue here).
    on_step: Callable[[int], None] = lambda step: None


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():  # bad input, not a bug: exit 2
        raise ConfigError("precision.device = 'cuda' but no CUDA GPU is visible; use 'auto' "
                          "(or 'cpu')")
    return torch.device("cuda" if choice == "cuda" or (
        choice == "auto" and torch.cuda.is_available()) else "cpu")


def total_steps_for(config: TrainConfig, report: DatasetReport, processes: int = 1) -> int:
    """Optimizer steps: epochs win when set (as in kohya), else max_train_steps. An epoch's
    batches are global ones: `processes` x the batch size."""
    if config.schedule.max_train_epochs:
        batches = report.steps_per_epoch(report.settings.batch_size * processes)
        per_epoch = math.ceil(batches / config.schedule.gradient_accumulation_steps)
        return config.schedule.max_train_epochs * per_epoch
    return int(config.schedule.max_train_steps or 0)


def train(config: TrainConfig, run_dir: Path, *, emit: Callable[[Event], None] = lambda e: None,
          control: TrainControl | None = None, resume: Path | None = None,
          force: bool = False) -> Path:
    """Run one job; returns the exported LoRA file. Resumable from any checkpoint it saves.

    Started as one of several processes (trainer.distributed: RANK and WORLD_SIZE set), rank 0
    writes and reports; the others train their rows of each batch and say only why they failed."""
    control = control or TrainControl()
    ranks = distributed.ranks_from_env()
    # the job's child claimed it already; only rank 0 writes into the run folder
    claimed = ranks.writer and claim_run_folder(run_dir, new_run=resume is None)
    log = EventLog(run_dir) if ranks.writer else None

    def send(event: Event) -> None:
        if log is not None:
            log.write(event)
            emit(event)
        elif isinstance(event, (Failed, Finished)):  # how this rank ended, for its job
            emit(event)

    try:
        return _train(config, run_dir, send, control, resume, force, ranks)
    except Exception as error:
        from trainer.failures import classify
        send(classify(error))  # the run folder records why it ended
        raise
    finally:
        distributed.leave(ranks)
        if log is not None:
            log.close()
        if claimed:
            release_run_folder(run_dir)


def _train(config: TrainConfig, run_dir: Path, send: Callable[[Event], None],
           control: TrainControl, resume: Path | None, force: bool,
           ranks: distributed.Ranks) -> Path:
    started_at = time.time()
    cfg_toml = config_to_toml(config)
    if ranks.writer:
        (run_dir / "config.toml").write_text(cfg_toml, encoding="utf-8")
    if config.precision.threads:
        torch.set_num_threads(config.precision.threads)
    device = distributed.join(ranks, resolve_device(config.precision.device))
    # The cover is only needed by the export at the end: read it now, so a missing, broken or
    # enormous image fails in a second, not after hours of training.
    cover = cover_thumbnail(config.metadata.cover_image) if config.metadata.cover_image else None

    # 1. Dataset first: a bad folder fails in a second, before any model is loaded.
    report = scan_dataset(config)
    for skipped in report.skipped:
        send(Log("warning", f"{'note' if skipped.warning else 'skipped'} {skipped.path}: "
                            f"{skipped.reason}"))
    if not report.usable:
        where = [str(s.image_dir) for s in report.subsets] or [
            str(f.path) for f in config.dataset.folders] or [str(config.dataset.kohya_config)]
        raise DatasetError(f"no usable images in {', '.join(where)} ({len(report.errors)} "
                           "file(s) skipped); run `lora-train validate` to see why")
    total_steps = total_steps_for(config, report, ranks.world)
    # A kohya dataset TOML may set these, so the report (not config.dataset) is the truth.
    batch_size, resolution = report.settings.batch_size, report.settings.resolution[0]
    global_batch = batch_size * ranks.world  # each rank trains batch_size rows of it
    if ranks.several:
        send(Log("info", f"{ranks.world} processes on {device.type}, {batch_size} image(s) "
                         f"each: {global_batch} per step"))
    accumulation = config.schedule.gradient_accumulation_steps
    specs = prompt_specs(config.sampling, resolution)  # a bad prompt line fails now, not later

    if device.type == "cuda":  # before the model takes its share: will the run fit?
        from trainer.vram import preflight_note
        send(Log(*preflight_note(config, torch.cuda.mem_get_info(device)[0])))

    # 2. Base model, frozen; LoRA adapters on the chosen modules. Seeding first makes the
    # adapters' initial weights (and later peft dropout) reproducible.
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        config.precision.mixed_precision) if device.type == "cuda" else None
    if device.type == "cpu" and config.precision.mixed_precision != "no":
        send(Log("info", "mixed precision is for CUDA GPUs; this CPU run trains in fp32"))
    base = load_base_model(config.model.path, dtype=amp_dtype or torch.float32, device=device)
    base_id = weights_fingerprint(base.unet)  # before LoRA layers wrap it; a resume checks it
    family = base.spec
    if report.settings.bucket_reso_steps not in family.bucket_steps:
        raise ConfigError(f"dataset.bucket_reso_steps = {report.settings.bucket_reso_steps} is for "
                          f"SDXL models; {base.source.name} is {family.label}: use "
                          f"{' or '.join(map(str, family.bucket_steps))}")
    if base.vae.dtype != torch.float32:
        base.vae.to(torch.float32)  # SD's VAE overflows in fp16 (kohya's --no_half_vae, always)
    # The file's own signal (a v_pred key, a folder's scheduler) unless the user says otherwise.
    prediction_type = (base.prediction_type if config.model.prediction_type == "auto"
                       else config.model.prediction_type)
    base.noise_scheduler.register_to_config(prediction_type=prediction_type)
    if config.loss.zero_terminal_snr:
        from diffusers.schedulers import DDPMScheduler
        base.noise_scheduler = DDPMScheduler.from_config(base.noise_scheduler.config,
                                                         rescale_betas_zero_snr=True)
    send(Log("info", f"{family.display_label(prediction_type)} model {base.source.name}"))
    torch.manual_seed(config.schedule.seed)
    network = apply_lora_to(base, config.network)
    if config.network.init_from:
        from trainer.init_from import init_network_from
        init_network_from(network, config.network.init_from)
        send(Log("info", f"started from the LoRA {config.network.init_from}"))
    distributed.copy_from_writer(ranks, network.parameters())
    if ranks.several:  # each rank its own dropout draws (the data noise is shared: noise_rng)
        torch.manual_seed(derive_seed("rank", config.schedule.seed, ranks.rank))
    prepare_for_training(base, network, config.precision, device, send)
    send(Log("info", f"LoRA on {len(network.layers)} modules, "
                     f"{network.trainable_parameter_count():,} trainable parameters"))

    # 3. Caches: after them a step costs only the U-Net (and the text encoder if trained).
    latents = LatentCache(base.vae, background=report.settings.background_color,
                          disk_dir=default_cache_dir() if config.precision.cache_latents_to_disk
                          else None, masks=report.masks)
    if config.precision.cache_latents:
        send(Log("info", f"caching latents of {len(report.items)} images"))
        variants = [(item.path, item.bucket, flip) for item in report.items
                    for flip in ((False, True) if item.flip_aug else (False,))]
        variants += [(item.path, item.bucket, False) for item in report.validation]
        for path, reason in latents.fill(variants).items():
            send(Log("warning", f"skipped {path}: {reason}"))
            report.items = [item for item in report.items if item.path != path]
            report.validation = [item for item in report.validation if item.path != path]
        if not report.usable:
            raise DatasetError("no image could be read while caching; run `lora-train validate`")
        total_steps = total_steps_for(config, report, ranks.world)

    def text_context(captions: list[str]) -> Conditioning:
        return encode_prompts(base, captions, config.model.clip_skip)

    text_cache = None
    if (not network.text_encoder_layers and config.precision.cache_text_encoder_outputs
            and captions_are_static(report.subsets)):
        text_cache = TextEmbeddingCache(text_context)
        text_cache.fill(base_caption(item) for item in report.items + report.validation)
    validator = None
    if report.validation and ranks.writer:  # the held-out images; rank 0 scores them alone
        from trainer.validation import ValidationLoss
        validator = ValidationLoss(
            base, report.validation, latents,
            text_cache.get if text_cache is not None else text_context,
            report.settings.validation_seed or 0, prediction_type, device, amp_dtype,
            [base.unet, *base.text_encoders.values()])
        send(Log("info", f"validation loss on {len(report.validation)} held-out image(s): "
                         f"{len(report.validation)} U-Net forward passes each time"))
    validated: dict[int, float] = {}  # step -> validation loss

    # 4. Optimizer and schedule; a resume then overwrites their state with the checkpoint's.
    optimizer = build_optimizer(config, network, device)
    scheduler = build_scheduler(config, optimizer, total_steps)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    noise_rng = torch.Generator("cpu").manual_seed(config.schedule.seed)
    position = ckpt.TrainingPosition(
        step=0, epoch=0, batch_in_epoch=0, total_steps=total_steps,
        dataset=ckpt.dataset_fingerprint([(f"{item.path.parent.name}/{item.path.name}",
                                           item.path.stat().st_size, item.caption)
                                          for item in report.items]),
        config=ckpt.flatten(config.model_dump(mode="json")),
        base_model=base_id, processes=ranks.world)
    if resume is not None:
        position = restore(resume, position, ranks, device, network, optimizer, scheduler,
                           scaler, noise_rng, force, send)
    renderer = PreviewRenderer(base, network, baseline=config.sampling.baseline,
                               sampler=config.sampling.sampler) if specs and ranks.writer else None

    def validate() -> None:
        if validator is not None and position.step not in validated:
            validated[position.step] = validator()
            send(Validation(position.step, validated[position.step], len(report.validation)))

    def with_validation(meta: dict[str, str]) -> dict[str, str]:
        if position.step in validated:  # the checkpoint picker and Export read it
            meta["lora_studio_validation_loss"] = f"{validated[position.step]:.6g}"
        return meta

    def save() -> Path | None:
        state = training_state(ranks, device, optimizer, scheduler, scaler, noise_rng)
        if not ranks.writer:
            return None
        validate()  # every checkpoint has its validation loss
        meta = with_validation(training_metadata(config, report, base, position, started_at,
                                                 total_steps))
        path = ckpt.save_checkpoint(run_dir, position, network.state_dict(), state, cfg_toml,
                                    config.output.keep_last, meta)
        send(Saved(str(path), "checkpoint", position.step))
        return path

    def export() -> Path:
        from trainer.export import write_lora_file
        from trainer.metadata import apply_user_metadata
        user = config.metadata
        meta = apply_user_metadata(
            with_validation(training_metadata(config, report, base, position, started_at,
                                              total_steps)),
            user.model_dump(include={"title", "author", "description", "trigger_phrase",
                                     "tags", "license"}),
            thumbnail=cover,
            hide_folder_names=user.hide_folder_names)
        path = write_lora_file(Path(config.output.dir or run_dir) /
                               f"{config.output.name}.safetensors",
                               network.state_dict(), meta, config.output.save_precision)
        send(Saved(str(path), "lora", position.step))
        if config.output.verify:
            _verify(path, config.model.path, run_dir, send, network)
        return path

    def preview() -> None:
        if renderer is not None:
            for sample in renderer.render_all(specs, position.step):
                send(sample)

    # 5. The loop. A step = one optimizer update over `accumulation` batches.
    send(Started(str(run_dir), total_steps, resumed_from_step=position.step))
    validate()  # where the curve starts: the base model's (or the resumed checkpoint's)
    every_validation = config.dataset.validation_every_n_steps
    batches = epoch_batches(report.items, global_batch, config.schedule.seed, position.epoch)
    every_sample, every_save = config.sampling.every_n_steps, config.output.save_every_n_steps
    every_epochs = config.output.save_every_n_epochs
    tick, speed = time.perf_counter(), None

    def epochs_done() -> int:
        return position.epoch + (1 if position.batch_in_epoch >= len(batches) else 0)

    saved_epochs = epochs_done()
    while position.step < total_steps:
        optimizer.zero_grad(set_to_none=True)
        step_loss, files = 0.0, []
        for _ in range(accumulation):
            if position.batch_in_epoch >= len(batches):
                position.epoch += 1
                position.batch_in_epoch = 0
                batches = epoch_batches(report.items, global_batch, config.schedule.seed,
                                        position.epoch)
            batch = batches[position.batch_in_epoch]
            rows = ranks.rows(len(batch), batch_size)
            files += [report.items[index].path.name for index in batch]
            batch_latents, captions, sizes, masks = [], [], [], []
            for slot in range(rows.start, rows.stop):
                item = report.items[batch[slot]]
                caption, flip = sample_plan(item, config.schedule.seed, position.epoch,
                                            position.batch_in_epoch, slot)
                captions.append(caption)
                batch_latents.append(latents.get(item.path, item.bucket, flip)
                                     if config.precision.cache_latents
                                     else latents.encode(item.path, item.bucket, flip))
                masks.append(latents.mask(item.path, item.bucket, flip))
                if family.micro_conditioning:
                    sizes.append(latents.size_ids(item.path, item.bucket, flip))
            position.batch_in_epoch += 1
            if not batch_latents:  # a short last batch left this rank no rows: draw its noise
                first = report.items[batch[0]]  # (the shape is the bucket's) and add nothing
                draw_noise(noise_rng, len(batch), tuple(latents.get(
                    first.path, first.bucket, False).shape), config.loss,
                    base.noise_scheduler.config.num_train_timesteps)
                continue
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                cond = (text_cache.get(captions) if text_cache else text_context(captions)).to(device)
                loss = diffusion_loss(base.unet, torch.stack(batch_latents).to(device),
                                      cond.context, base.noise_scheduler, noise_rng,
                                      config.loss, prediction_type,
                                      cond.unet_kwargs(torch.stack(sizes) if sizes else None),
                                      masks=masks, **({"rows": rows, "global_count": len(batch)}
                                         if ranks.several else {}))
            if not torch.isfinite(loss) and not ranks.several:
                raise NonFiniteLoss(position.step + 1, files, loss.item())
            step_loss += loss.item() / accumulation
            (scaler.scale(loss / accumulation) if scaler else loss / accumulation).backward()
        # Several processes: gradients (and the step's loss) summed over the ranks, which makes
        # them the global batch's; a non-finite loss anywhere stops every rank at this step.
        step_loss = distributed.sum_gradients(ranks, network.parameters(), [step_loss])[0]
        if not math.isfinite(step_loss):
            raise NonFiniteLoss(position.step + 1, files, step_loss)
        if scaler:
            scaler.unscale_(optimizer)
        if config.optimizer.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.optimizer.max_grad_norm)
        if scaler:
            scale = scaler.get_scale()
            scaler.step(optimizer)  # skipped when the fp16 gradients overflowed
            scaler.update()
            if scaler.get_scale() < scale:
                send(Log("info", f"step {position.step + 1}: the fp16 gradients overflowed, so "
                                 "this update was skipped and the loss scale lowered to "
                                 f"{scaler.get_scale():g} (normal in the first steps)"))
        else:
            optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        scheduler.step()
        position.step += 1

        now = time.perf_counter()
        speed = 1.0 / max(now - tick, 1e-9) if speed is None else 0.9 * speed + 0.1 / max(
            now - tick, 1e-9)
        tick = now
        send(Loss(position.step, step_loss, lr))
        send(Progress(position.step, total_steps, position.epoch, speed,
                      (total_steps - position.step) / speed))
        control.on_step(position.step)
        distributed.follow_control(ranks, control, device)
        while control.pause.is_set() and not control.stop.is_set():
            # Paused between steps: Sample now and Save now still work, so the user can
            # look at (or keep) the LoRA as it is before deciding to go on.
            if control.sample_now.is_set():
                control.sample_now.clear()
                preview()
            if control.save_now.is_set():
                control.save_now.clear()
                save()
            time.sleep(PAUSE_POLL_S)
            control.on_step(position.step)
            distributed.follow_control(ranks, control, device)
            tick = time.perf_counter()  # the pause is not training time (it/s, ETA)
        if every_validation and position.step % every_validation == 0:
            validate()
        if control.sample_now.is_set() or (every_sample and position.step % every_sample == 0):
            control.sample_now.clear()
            preview()
        stopping = control.stop.is_set()
        # Epoch saves happen here, at a step boundary, so they resume exactly (an epoch can end
        # in the middle of an accumulated step).
        epoch_due = (every_epochs and epochs_done() > saved_epochs
                     and epochs_done() % every_epochs == 0)
        if control.save_now.is_set() or stopping or epoch_due or (
                every_save and position.step % every_save == 0 and position.step < total_steps):
            control.save_now.clear()
            saved_epochs = epochs_done()
            save()
        if stopping:
            # neutral words: the window offers Resume, the CLI prints its own `--resume` line
            send(Log("info", f"stopped at step {position.step} of {total_steps}; a checkpoint "
                             "was saved here, so the run can be resumed"))
            break

    # 6. The end (or a stop): a last checkpoint, previews, and the LoRA file.
    if position.step >= total_steps:
        save()
        if config.sampling.at_end and not (every_sample and position.step % every_sample == 0):
            preview()
    if ranks.writer:
        lora_file = export()
    else:  # rank 0 writes the file; this rank's work is done
        lora_file = Path(config.output.dir or run_dir) / f"{config.output.name}.safetensors"
    send(Finished(str(lora_file), position.step))
    return lora_file


def _verify(path: Path, base_path: Path, run_dir: Path, send: Callable[[Event], None],
            network=None) -> None:
    """Read the file back the way other tools will; the report lands in `verify.txt`. A failed
    check is an error in the log, not a failed run: the file is written and stays inspectable."""
    from trainer.verify import verify_lora_file

    report = verify_lora_file(path, base_path, network)
    (run_dir / "verify.txt").write_text(report.format() + "\n", encoding="utf-8")
    send(Log("info" if report.ok else "error", report.summary()))
