"""bench/gpu.py's measured cases: the sweep, vram, sdxl, ratio and multi sections, one real run
of the project's trainer per case (bench/common.py's timed loops), and the record of the figures
they print (`figure`: printed now and again in gpu.py's summary; `case`: a failure is one line,
counted in FAILED, and the next case still runs).
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import common  # first: puts the repository on sys.path, keeps the hubs offline

import torch  # noqa: E402

if TYPE_CHECKING:  # only annotations: gpu.py is the __main__ script, never imported here
    from gpu import Clock, Plan
    from gpu_children import SdxlBuild

GIB = 2**30

# ---------------------------------------------------------------------------------- output

FIGURES: list[str] = []
FAILED: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)


def figure(line: str) -> None:
    """A line worth copying: printed now and again in the summary at the end."""
    FIGURES.append(line)
    say(line)


def gib(value: int | None) -> str:
    return "n/a (cpu)" if value is None else f"{value / GIB:.2f} GiB"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@contextmanager
def case(name: str):
    """One measurement: a failure is printed and counted, and the next case still runs."""
    try:
        yield
    except Exception as error:  # noqa: BLE001
        FAILED.append(name)
        figure(f"{name}: FAILED: {type(error).__name__}: {str(error)[:300]}")
        say("".join(traceback.format_exc().splitlines(keepends=True)[-8:]).rstrip())


# ------------------------------------------------------------------------------ measuring

def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(config, run_dir: Path, device: str, interleaved: bool) -> dict:
    """One real run: trainer (and bare) step seconds, peak VRAM, wall seconds. On CUDA the
    peak-memory counter restarts at the Started event, so `steps_peak` is the peak of the steps
    alone; `run_peak` adds the load and the caches before them."""
    from trainer.events import Started

    release(device)
    peaks: dict = {}
    resident = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()

    def on_event(event) -> None:
        if device == "cuda" and isinstance(event, Started):
            torch.cuda.synchronize()
            peaks["before_steps"] = torch.cuda.max_memory_allocated()
            peaks["at_loop_start"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    if interleaved:
        trainer, bare = common.interleaved_steps(config, run_dir, emit=on_event)
    else:
        trainer, bare = common.project_steps(config, run_dir, emit=on_event), []
    result = {"trainer": trainer, "bare": bare, "seconds": time.perf_counter() - start,
              "resident_before": resident, "steps_peak": None, "run_peak": None}
    if device == "cuda":
        result["steps_peak"] = torch.cuda.max_memory_allocated()
        result["run_peak"] = max(result["steps_peak"], peaks.get("before_steps", 0))
        result["at_loop_start"] = peaks.get("at_loop_start")
    release(device)
    return result


_FLOPS: dict = {}
_DATA: dict = {}


def dataset(root: Path, px: int, count: int) -> Path:
    """`count` synthetic images at `px` (bench/common.py), made once per size and count."""
    if (px, count) not in _DATA:
        _DATA[px, count] = common.dataset(root / f"data-{px}-{count}", px, count=count)
    return _DATA[px, count]


def flops_of(model: Path, config, px: int) -> int:
    key = (str(model), px, config.dataset.batch_size)
    if key not in _FLOPS:
        _FLOPS[key] = common.step_flops(model, config, px // 8, "meta")
    return _FLOPS[key]


def mfu_text(flops: int, seconds: float, peak: float | None) -> str:
    return "n/a" if not peak else f"{100 * flops / seconds / peak:.1f} %"


def estimate_line(label: str, config, measured: int | None) -> None:
    """'estimate X GiB vs measured Y GiB' where trainer.vram has estimate_for_config."""
    try:
        from trainer.vram import estimate_for_config
    except ImportError:
        return
    try:
        total = estimate_for_config(config).total
    except Exception as error:  # noqa: BLE001 - the estimate is someone else's work in progress
        figure(f"{label}: estimate failed ({type(error).__name__}: {error}) vs measured "
               f"{gib(measured)}")
        return
    quotient = f" (estimate / measured {total / measured:.2f})" if measured else ""
    figure(f"{label}: estimate {total / GIB:.2f} GiB vs measured {gib(measured)}{quotient}")


# ------------------------------------------------------------------------------ sections

def sweep(plan: Plan, clock: Clock, root: Path, model: Path, peak: float | None,
          build: SdxlBuild, pairs: list) -> None:
    data = dataset(root, plan.px, max(8, *plan.batches))
    durations: list[float] = []
    for precision in plan.precisions:
        for batch in plan.batches:
            name = f"sd15 {plan.px}px {precision} batch {batch}" if not plan.dry else \
                f"tiny {plan.px}px {precision} batch {batch}"
            if not clock.fits(name, durations[-1] if durations else plan.cost["case"]):
                continue
            with case(name):
                sweep_case(plan, root, model, data, peak, build, pairs, durations, name,
                           precision, batch)


def sweep_case(plan: Plan, root: Path, model: Path, data: Path, peak: float | None,
               build: SdxlBuild, pairs: list, durations: list, name: str, precision: str,
               batch: int) -> None:
    overlapped = build.running()
    config = common.bench_config(
        model, data, plan.px, steps=plan.steps + 2, batch=batch,
        precision={"device": plan.device, "mixed_precision": precision})
    start = time.perf_counter()
    try:
        r = measure(config, root / f"sweep-{precision}-{batch}", plan.device, True)
    finally:
        durations.append(time.perf_counter() - start)
    flops = flops_of(model, config, plan.px)
    a, b = r["trainer"], r["bare"]
    ratios = common.bracketed_ratios(a, b)
    pairs.extend(ratios)
    trainer_s, bare_s = statistics.median(a), statistics.median(b)
    figure(f"{name.replace(precision, plan.label(precision))}: trainer "
           f"{ms(trainer_s)}/step, bare {ms(bare_s)}/step, {flops / 1e9:,.1f} GFLOP/step, "
           f"MFU {mfu_text(flops, trainer_s, peak)} (bare {mfu_text(flops, bare_s, peak)}),"
           f" trainer/bare time {statistics.median(ratios):.3f} ({len(ratios)} pairs), "
           f"{batch / trainer_s:.1f} img/s, peak VRAM {gib(r['steps_peak'])} in steps")
    say(f"  steps (s): trainer {' '.join(f'{x:.4f}' for x in a)}; bare "
        f"{' '.join(f'{x:.4f}' for x in b)}; run {r['seconds']:.1f} s; VRAM whole run "
        f"{gib(r['run_peak'])}, resident before {gib(r['resident_before'])}"
        f"{'; overlapped the SDXL build (CPU busy)' if overlapped else ''}")
    if batch == 1:
        estimate_line(f"  {name} VRAM", config, r["steps_peak"])


def vram(plan: Plan, clock: Clock, root: Path, model: Path, peak: float | None) -> None:
    data = dataset(root, plan.px, 8)
    precision = plan.vram_precision
    for checkpointing in (False, True):
        name = (f"{'sd15' if not plan.dry else 'tiny'} {plan.px}px {plan.label(precision)} "
                f"batch 1 checkpointing {'on' if checkpointing else 'off'}")
        if not clock.fits(f"vram {name}", plan.cost["case"]):
            continue
        with case(f"vram {name}"):
            config = common.bench_config(
                model, data, plan.px, steps=plan.steps + 1, batch=1,
                precision={"device": plan.device, "mixed_precision": precision,
                           "gradient_checkpointing": checkpointing})
            r = measure(config, root / f"vram-{int(checkpointing)}", plan.device, False)
            flops = flops_of(model, config, plan.px)
            step = statistics.median(r["trainer"])
            figure(f"vram {name}: peak {gib(r['steps_peak'])} in steps, {gib(r['run_peak'])} "
                   f"whole run (load + caches + steps), {gib(r.get('at_loop_start'))} resident "
                   f"at loop start; trainer {ms(step)}/step, MFU {mfu_text(flops, step, peak)}"
                   f"{' (model FLOPs, recompute not counted)' if checkpointing else ''}")
            estimate_line(f"  vram {name}", config, r["steps_peak"])


def sdxl(plan: Plan, clock: Clock, root: Path, build: SdxlBuild, peak: float | None) -> None:
    need = plan.cost["sdxl"]
    if not clock.fits("sdxl", need):
        build.stop()
        return
    if build.result is None and build.process is None:
        build.start()
    if build.running():
        say(f"waiting for the SDXL build (running {time.perf_counter() - build.started:.0f} s)")
    result = build.wait(clock.left() - need)
    if result is None:
        say(f"skipped sdxl: its build did not finish in time ({clock.left():.0f} s of the budget "
            f"left)")
        build.stop()
        return
    model = Path(result["path"])
    flops_model = model.parent / "sdxl-tiny-flops" if plan.dry else model
    precision = plan.sdxl_precision
    name = f"{'sdxl' if not plan.dry else 'tiny sdxl'} {plan.sdxl_px}px {plan.label(precision)} " \
           f"batch 1 checkpointing on"
    with case(name):
        data = dataset(root, plan.sdxl_px, 4)
        config = common.bench_config(
            model, data, plan.sdxl_px, steps=plan.steps + 1, batch=1,
            precision={"device": plan.device, "mixed_precision": precision,
                       "gradient_checkpointing": True})
        r = measure(config, root / "sdxl-run", plan.device, False)
        flops = flops_of(flops_model, config, plan.sdxl_px)
        step = statistics.median(r["trainer"])
        figure(f"{name}: trainer {ms(step)}/step, {flops / 1e9:,.1f} GFLOP/step (model FLOPs, "
               f"recompute not counted), MFU {mfu_text(flops, step, peak)}, peak VRAM "
               f"{gib(r['steps_peak'])} in steps, {gib(r['run_peak'])} whole run")
        say(f"  steps (s): {' '.join(f'{x:.4f}' for x in r['trainer'])}; run "
            f"{r['seconds']:.1f} s")
        estimate_line(f"  {name} VRAM", config, r["steps_peak"])


def ratio(pairs: list) -> None:
    if not pairs:
        say("ratio: no sweep pairs measured: skipped")
        return
    middle = statistics.median(pairs)
    figure(f"trainer/bare on the device: step-time ratio {middle:.3f} (median of {len(pairs)} "
           f"bracketed pairs over the sweep, min {min(pairs):.3f}, max {max(pairs):.3f}); "
           f"efficiency trainer/bare {1 / middle:.3f}")


def cli_run(plan: Plan, clock: Clock, root: Path, model: Path, data: Path, processes: int,
            batch: int, precision: str) -> dict | None:
    from trainer.config_io import config_to_toml
    from trainer.events import Loss, read_events

    extra = {"threads": 1} if plan.dry else {}
    config = common.bench_config(model, data, plan.px, steps=plan.cli_steps, batch=batch,
                                 precision={"device": plan.device, "mixed_precision": precision,
                                            **extra})
    name = f"cli-{processes}p-b{batch}"
    toml = root / f"{name}.toml"
    toml.write_text(config_to_toml(config), encoding="utf-8")
    run_dir = root / name
    command = [sys.executable, "-m", "trainer.cli", "train", "--config", str(toml),
               "--out", str(run_dir), "--processes", str(processes)]
    start = time.perf_counter()
    limit = max(clock.left(), 30)
    try:
        done = subprocess.run(command, cwd=common.ROOT, capture_output=True, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        say(f"{name}: timed out after {limit:.0f} s")
        return None
    wall = time.perf_counter() - start
    (root / f"{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-2500:]}")
    stamps = [e.time for e in read_events(run_dir) if isinstance(e, Loss)]
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    intervals = intervals[1:] or intervals  # the first is the warm-up, where there are more
    return {"step": statistics.median(intervals), "wall": wall, "steps": len(stamps),
            "intervals": intervals}


def multi(plan: Plan, clock: Clock, root: Path, model: Path) -> None:
    count = torch.cuda.device_count() if plan.device == "cuda" else 0
    if plan.device == "cuda" and count < 2:
        figure(f"2 processes: skipped: {count} GPU visible (needs 2)")
        return
    data = dataset(root, plan.px, 8)
    precision = "bf16"
    results = {}
    for processes, batch in ((2, 4), (1, 8)):
        if not clock.fits(f"cli --processes {processes}", plan.cost["cli"]):
            return
        results[processes] = cli_run(plan, clock, root, model, data, processes, batch, precision)
        if results[processes] is None:
            return
        r = results[processes]
        say(f"  --processes {processes} x batch {batch}: {r['steps']} steps, intervals (s) "
            f"{' '.join(f'{x:.3f}' for x in r['intervals'])}; wall {r['wall']:.1f} s")
    two, one = results[2], results[1]
    where = "gloo on the CPU" if plan.dry else f"NCCL, {count} GPUs"
    figure(f"2 processes x batch 4 ({plan.px}px {plan.label(precision)}, {where}): "
           f"{1 / two['step']:.2f} it/s = {8 / two['step']:.1f} img/s; 1 process x batch 8: "
           f"{1 / one['step']:.2f} it/s = {8 / one['step']:.1f} img/s; 2 / 1 speed "
           f"{one['step'] / two['step']:.2f}x; wall {two['wall']:.0f} s vs {one['wall']:.0f} s "
           f"(start-up included)")
