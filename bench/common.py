"""What the benchmarks share: paths, the cached SD 1.5 layout, the bench job config, the two
timed loops (the project's real run and the bare reference step), FLOP counting and the
machine's measured fp32 matmul rate. The timed loops run on the job's device: on CUDA they
synchronize before every clock read (bench/gpu.py); on the CPU that is a no-op.

Import it first (`import common`): it puts the repository and tests/ on sys.path and keeps
every hub offline. The SD 1.5 layout with random weights (~4 GB, a diffusers folder) and the
SDXL layout with random weights (one fp16 single file, ~6.9 GB) are built once and kept in
`$LORA_STUDIO_BENCH_CACHE` (default `~/.cache/lora-studio/bench`); delete the folder to free them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT / "tests"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every step and matmul (default: torch's, one a "
                             "core); runs inherit it as precision.threads")


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    return (f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads, {load_average()}")


def proc_status_bytes(field: str, pid: int | str = "self") -> int:
    """A memory line of /proc/PID/status (VmRSS, VmHWM = peak RSS) in bytes; 0 where there is
    none (the process is gone, or not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cache_root() -> Path:
    if os.environ.get("LORA_STUDIO_BENCH_CACHE"):
        return Path(os.environ["LORA_STUDIO_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lora-studio" / "bench"


def sd15_model() -> Path:
    """The real SD 1.5 layout with random weights (seed 0), built once (a few minutes, ~4 GB)
    into a temp folder and renamed into the cache, so a killed build never leaves half a model."""
    from trainer.models.tiny import make_random_model

    target = cache_root() / "sd15-random-seed0"
    if (target / "model_index.json").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    building = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(building, ignore_errors=True)
    print(f"building the SD 1.5 layout with random weights in {target} (once)", flush=True)
    make_random_model(building, "sd1")
    os.replace(building, target)
    return target


def peak_rss_line() -> str:
    """This process's peak resident memory so far (VmHWM), and its current RSS."""
    return (f"peak RSS (VmHWM) {proc_status_bytes('VmHWM') / 2**30:.2f} GiB, "
            f"RSS now {proc_status_bytes('VmRSS') / 2**30:.2f} GiB")


@torch.no_grad()
def write_random_single_file(path: Path, family_name: str, *, seed: int = 0,
                             dtype: torch.dtype = torch.float16, configs: tuple | None = None
                             ) -> None:
    """One single-file checkpoint of the family's real layout (bundled configs) with seeded
    random weights, stored as `dtype`, built component by component so that RAM holds the
    finished `dtype` tensors plus one component under construction: the U-Net is built
    directly in `dtype` (2.57 B parameters of SDXL: 5.1 GB in fp16 instead of 10.3 GB in fp32),
    the VAE and text encoders in fp32 (the VAE's latent calibration runs a forward) and then
    cast. Keys come from the same key table the loader reads; the extras real files carry
    (position_ids, logit_scale) are added as `make_tiny_model` adds them. No diffusers folder.
    `configs` = (unet, vae, {component: text}) replaces the bundled configs (a quick check with
    the tiny ones of trainer.models.tiny)."""
    import gc

    from safetensors.torch import save_file

    from trainer.families import get_family
    from trainer.families.checkpoint_keys import build_key_table
    from trainer.models.loading import (
        build_text_encoder,
        build_unet,
        build_vae,
        text_key_prefix,
    )
    from trainer.models.tiny import (
        _calibrate_vae,
        _perturb_constants,
        _single_file_extras,
    )

    family = get_family(family_name)
    unet_cfg, vae_cfg = family.config("unet"), family.config("vae")
    text_cfgs = {s.component: family.config(s.component) for s in family.text_encoders}
    if configs is not None:
        unet_cfg, vae_cfg, text_cfgs = configs
    prefixes = {s.component: text_key_prefix(build_text_encoder(
        text_cfgs[s.component], empty=True, with_projection=s.with_projection))
        for s in family.text_encoders}
    table = build_key_table(family, unet_cfg, vae_cfg, text_cfgs, prefixes)
    torch.manual_seed(seed)
    ldm: dict = {}

    def take(component: str, module) -> None:
        _perturb_constants(module)
        if component == "vae":
            module.eval()
            _calibrate_vae(module)
        module.to(dtype)  # parameter by parameter: the old copy is freed as it goes
        state = {k: v.detach() for k, v in module.state_dict().items()}
        for key, t in table.to_ldm({component: state}).items():
            ldm[key] = t.to(dtype).contiguous() if t.is_floating_point() else t.contiguous()
        print(f"  {component}: {sum(p.numel() for p in module.parameters()) / 1e6:,.1f} M "
              f"parameters; {peak_rss_line()}", flush=True)

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = build_unet(unet_cfg, empty=False)
    finally:
        torch.set_default_dtype(default)
    take("unet", unet)
    del unet
    gc.collect()
    take("vae", build_vae(vae_cfg, empty=False))
    gc.collect()
    for spec in family.text_encoders:
        take(spec.component, build_text_encoder(text_cfgs[spec.component], empty=False,
                                                with_projection=spec.with_projection))
        gc.collect()
    ldm.update(_single_file_extras(family, ldm, text_cfgs))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm, str(path), metadata={"format": "pt"})
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def sdxl_model() -> Path:
    """The real SDXL layout with random weights (seed 0) as one fp16 single file (~6.9 GB),
    built once (minutes) under a temp name and renamed into the cache."""
    target = cache_root() / "sdxl-random-seed0.safetensors"
    if target.is_file():
        return target
    building = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    building.unlink(missing_ok=True)
    print(f"building the SDXL layout with random weights in {target} (once)", flush=True)
    start = time.perf_counter()
    try:
        write_random_single_file(building, "sdxl")
    except BaseException:
        building.unlink(missing_ok=True)
        raise
    os.replace(building, target)
    print(f"built in {time.perf_counter() - start:.0f} s, {target.stat().st_size / 1e9:.2f} GB; "
          f"{peak_rss_line()}", flush=True)
    return target


def base_model(size: str, root: Path) -> Path:
    """`tiny`: a fresh tiny model under `root`; `sd15`: the cached SD 1.5 layout (a diffusers
    folder); `sdxl`: the cached SDXL layout (one fp16 single file)."""
    if size == "sd15":
        return sd15_model()
    if size == "sdxl":
        return sdxl_model()
    from trainer.models import make_tiny_model

    make_tiny_model(root / "model")
    return root / "model"


def dataset(root: Path, px: int, count: int = 8) -> Path:
    from synthetic import make_shapes_dataset

    make_shapes_dataset(root / "data", count, size=px)
    return root / "data"


def bench_config(model: Path, data: Path, px: int, *, steps: int, batch: int = 1,
                 rank: int = 16, **sections: dict):
    """The tiny-cpu preset at `px`, batch, rank (alpha = rank), `steps` steps, no verify;
    `sections` are deep-merged last (e.g. precision={"gradient_checkpointing": True})."""
    from trainer.config_io import build_config, load_config_data, merge, preset_path

    job = merge(load_config_data(preset_path("tiny-cpu")), {
        "model": {"path": str(model)},
        "dataset": {"folders": [{"path": str(data)}], "resolution": px, "max_bucket_reso": px,
                    "batch_size": batch},
        "network": {"rank": rank, "alpha": float(rank)},
        "schedule": {"max_train_steps": steps},
        "precision": {"threads": torch.get_num_threads()},
        "output": {"verify": False}})
    return build_config(merge(job, sections))


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`: CUDA runs kernels asynchronously, so a clock read
    without it would time their launches, not the work. Nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def project_steps(config, run_dir: Path,
                  emit: Callable = lambda event: None) -> list[float]:
    """Seconds per step of a real run (between Loss events; the first step is dropped). `emit`
    also gets every event of the run, as trainer.loop.train's does."""
    from trainer.events import Loss
    from trainer.loop import resolve_device, train

    device = resolve_device(config.precision.device)
    stamps: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, Loss):  # sent right after the optimizer and scheduler steps
            synchronize(device)
            stamps.append(time.perf_counter())
        emit(event)

    train(config, run_dir, emit=on_event)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def unet_extras(unet, batch: int, px: int, device="cpu") -> dict:
    """What the U-Net's forward needs beyond (sample, t, context): SDXL's pooled text embedding
    and six size ids (original h/w, crop top/left, target h/w = px, px, 0, 0, px, px) when
    `addition_embed_type` is "text_time"; nothing for SD 1.x / 2.x."""
    cfg = unet.config
    if cfg.get("addition_embed_type") != "text_time":
        return {}
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    time_ids = torch.tensor([px, px, 0, 0, px, px], dtype=torch.float32, device=device)
    return {"added_cond_kwargs": {"text_embeds": torch.randn(batch, pooled, device=device),
                                  "time_ids": time_ids.repeat(batch, 1)}}


class BareStep:
    """The reference: nothing but the maths of a LoRA step on a given U-Net (noise +
    timesteps, forward, MSE, backward, AdamW step over `params`). Calling it runs one step and
    returns its seconds.

    It runs where the U-Net is, in the precision the trainer would use there: on CUDA under
    the config's mixed-precision autocast (a GradScaler for fp16), synchronized at both ends;
    on the CPU in plain fp32 (the trainer ignores mixed precision there)."""

    def __init__(self, unet, noise_scheduler, params: list, config, latent_side: int) -> None:
        self.unet, self.scheduler, self.params = unet, noise_scheduler, params
        self.optimizer = torch.optim.AdamW(params, lr=config.optimizer.learning_rate)
        self.device = next(unet.parameters()).device
        # trainer.loop's rule, which it keeps inline: autocast on CUDA only
        self.amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            config.precision.mixed_precision) if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        batch = config.dataset.batch_size
        self.latents = torch.randn(batch, 4, latent_side, latent_side, device=self.device)
        self.context = torch.randn(batch, 77, unet.config.cross_attention_dim,
                                   device=self.device)
        self.extra = unet_extras(unet, batch, latent_side * 8, self.device)

    def __call__(self) -> float:
        for param in self.params:  # whatever the trainer's step left behind
            param.grad = None
        synchronize(self.device)
        start = time.perf_counter()
        noise = torch.randn_like(self.latents)
        t = torch.randint(0, 1000, (self.latents.shape[0],), device=self.device)
        with (torch.autocast(self.device.type, dtype=self.amp) if self.amp
              else contextlib.nullcontext()):
            prediction = self.unet(self.scheduler.add_noise(self.latents, noise, t), t,
                                   self.context, **self.extra).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - start


def interleaved_steps(config, run_dir: Path, log=None, emit: Callable = lambda event: None
                      ) -> tuple[list[float], list[float]]:
    """A B A B ... A per step, in one real run: A = a step of `trainer.loop.train` (cached
    latents and text embeddings, optimizer, scheduler, clipping, events: everything a run does
    per step), B = a `BareStep` on the very same U-Net and LoRA tensors, run from the loop's
    `on_step` hook after every trainer step but the last. With N = schedule.max_train_steps,
    returns (A seconds of steps 2..N, B seconds of bare steps 2..N-1): step 1 of each is the
    warm-up, and every timed B sits between two timed A's (see `bracketed_ratios`). One model
    in memory serves both.

    A spans from the end of the previous bare step to the next `on_step` call: the loop's
    bookkeeping after the hook, the batch, forward, backward, clipping, optimizer and scheduler
    steps, and the Loss and Progress events. The bare steps move the LoRA weights too (the
    trainer's loss values mean nothing here; its timing does not depend on them). `emit` gets
    every event of the run, as trainer.loop.train's does."""
    import trainer.loop as loop

    loaded = {}

    def load_and_keep(*args, **kwargs):
        loaded["base"] = loop_load(*args, **kwargs)
        return loaded["base"]

    loop_load = loop.load_base_model
    device = loop.resolve_device(config.precision.device)
    total = config.schedule.max_train_steps
    trainer_times: list[float] = []
    bare_times: list[float] = []
    state: dict = {"since": None, "bare": None}

    def on_step(step: int) -> None:
        synchronize(device)  # the step's queued GPU work belongs to its time
        if state["since"] is not None:
            trainer_times.append(time.perf_counter() - state["since"])
            if log:
                log(f"  step {step}: trainer {trainer_times[-1]:.2f} s")
        elif log:
            log(f"  step {step}: trainer step done (warm-up, not timed)")
        if step == total:
            return
        if state["bare"] is None:
            unet = loaded["base"].unet
            state["bare"] = BareStep(unet, loaded["base"].noise_scheduler,
                                     [p for p in unet.parameters() if p.requires_grad], config,
                                     config.dataset.resolution // 8)
        bare_times.append(state["bare"]())
        if log:
            log(f"  step {step}: bare {bare_times[-1]:.2f} s"
                f"{' (warm-up, not timed)' if len(bare_times) == 1 else ''}; {peak_rss_line()}")
        state["since"] = time.perf_counter()

    loop.load_base_model = load_and_keep
    try:
        loop.train(config, run_dir, emit=emit, control=loop.TrainControl(on_step=on_step))
    finally:
        loop.load_base_model = loop_load
    return trainer_times, bare_times[1:]


def bracketed_ratios(trainer: list[float], bare: list[float]) -> list[float]:
    """Trainer / bare per bare step, against the mean of the trainer steps just before and just
    after it: a load that rises or falls steadily cancels out instead of favouring B."""
    return [(trainer[i] + trainer[i + 1]) / 2 / b for i, b in enumerate(bare)]


def matmul_rate(side: int = 4096, repeats: int = 5) -> float:
    """This machine's fp32 matmul FLOP/s: the best of `repeats` timed side x side products."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


def _cpu_attention_formulas() -> dict:
    """torch's flop counter has no formula for the CPU flash-attention kernels SDPA runs on
    real CPU tensors (on the meta device SDPA decomposes into counted bmm's instead)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def step_flops(model_path: Path, config, latent_side: int, device: str = "meta") -> int:
    """Matmul and convolution FLOPs of one LoRA training step (forward + backward, as autograd
    runs it: frozen weights get no weight gradient), counted with FlopCounterMode on `device`
    ("meta": shapes only, seconds; "cpu": a real step)."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.models.loading import build_unet
    from trainer.network import apply_lora

    if Path(model_path).is_file():  # a bench single file: built from the bundled configs
        from trainer.families import get_family
        from trainer.models import detect_architecture

        unet_config = get_family(detect_architecture(Path(model_path))).config("unet")
    else:
        unet_config = json.loads((Path(model_path) / "unet" / "config.json").read_text("utf-8"))
    unet = build_unet({k: v for k, v in unet_config.items() if not k.startswith("_")},
                      empty=device == "meta")
    apply_lora(unet, None, config.network)
    unet.to(device).train()
    batch = config.dataset.batch_size
    latents = torch.randn(batch, 4, latent_side, latent_side, device=device)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    extra = unet_extras(unet, batch, latent_side * 8, device)
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        prediction = unet(latents, t, context, **extra).sample
        torch.nn.functional.mse_loss(prediction, torch.randn_like(prediction)).backward()
    return counter.get_total_flops()
