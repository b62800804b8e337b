"""The GPU bench: the project's real trainer on an NVIDIA GPU, every figure on one labelled line.

Run it through bench/gpu.sh (which installs carried wheels, points the model cache at a local
temp folder and caps the wall time), or directly:

    bash bench/gpu.sh                    # a GPU machine: at most ~8 minutes (--budget 420)
    bash bench/gpu.sh --dry-run          # a CPU machine: same code paths, tiny model, 1-2 min
    bash bench/gpu.sh --sections sweep,sdxl --budget 300
    bash bench/gpu.sh --fetch-wheels     # here: download the cp312 wheels into .whl/ (once)

On the device tool: `run` with carry [".whl"], command `bash bench/gpu.sh`, timeout_s 570.

Sections, in order (`--sections` picks some; each prints its elapsed seconds, and one that
would overrun the `--budget` is skipped with a line saying so):
- builds: the SD 1.5 layout with random weights (a ~4 GB diffusers folder) in this process while
  a child builds the SDXL layout (one ~6.9 GB fp16 single file), both under
  $LORA_STUDIO_BENCH_CACHE (bench/common.py); the child keeps building during the next sections
  (sweep lines say if a case overlapped it).
- tests: `python -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda.py`, if it exists,
  started in the background with the builds (its tiny models are its own) and waited for
  (`--test-timeout`, default 150 s from its start) before the first timed case.
- sweep: SD 1.5 at 512 px, batch 1 / 4 / 8, mixed_precision fp16 and bf16, device cuda: each
  case is one real run (`common.interleaved_steps`: trainer step A, bare step B, A B ... A, one
  warm-up of each, then `--steps` timed bare steps between `--steps`+1 timed trainer steps).
  Printed: trainer and bare ms/step (medians), GFLOP/step, MFU, trainer/bare time ratio, peak
  VRAM of the steps (torch.cuda.max_memory_allocated, reset when the loop starts).
- vram: SD 1.5 at 512 px, batch 1, fp16 (`--vram-precision`), gradient checkpointing off and
  on, trainer only (`common.project_steps`): peak VRAM of the steps and of the whole run.
- sdxl: the SDXL layout at 1024 px, batch 1, bf16 (`--sdxl-precision`), checkpointing on,
  trainer only: step time, MFU, peak VRAM.
- ratio: trainer/bare over every sweep pair (as bench/step_overhead.py and step_efficiency.py).
- multi: with 2 or more GPUs, `python -m trainer.cli train --config ... --processes 2` at batch 4
  per process against `--processes 1` at batch 8 (same global batch): it/s from events.jsonl.
Where `trainer.vram.estimate_for_config` exists, each batch-1 SD 1.5 case and the SDXL case
also print `estimate X GiB vs measured Y GiB`.

Threads: the measuring process runs torch on half the cores (`--threads`; 1 in the dry run) and
the SDXL builder on the rest, so a case that overlaps the build still has its CPU threads.
Timing: on CUDA, bench/common.py's timed loops call torch.cuda.synchronize() before they read
the clock at a trainer step's end (the Loss event, sent right after the optimizer and scheduler
steps, or the `on_step` hook), and the bare step synchronizes at both ends, so a step's time is
its GPU work, not its kernel launches; nothing in the trainer's loop changes.
MFU = the step's matmul and convolution FLOPs (`common.step_flops` on the meta device: forward
+ backward as autograd runs it, frozen weights get no weight gradient; a checkpointed run's
recompute is not counted: model FLOPs) / step time / the GPU's dense fp16/bf16 peak from
PEAKS below (by torch.cuda.get_device_name(); `--peak-tflops` for another GPU). The dry run uses
this CPU's measured fp32 matmul rate as the peak, so its MFU figures are CPU efficiencies.

Modules: this file (options, the plan, the budget, the sections in order and the summary),
bench/gpu_cases.py (the measured cases and the figures they print), bench/gpu_children.py (the
SDXL builder and the test run in the background).

--dry-run: device cpu, fp32 (the trainer ignores mixed precision on a CPU), the tiny model at
64 px (an SDXL-shaped tiny single file for the sdxl section), 1 timed step, VRAM 'n/a (cpu)',
the 2-process run with gloo on the CPU. Exit status: 0 when no section failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import common  # first: puts the repository on sys.path, keeps the hubs offline

import torch  # noqa: E402
from gpu_cases import (FAILED, FIGURES, GIB, figure, multi, ratio, say, sdxl,  # noqa: E402
                       sweep, vram)
from gpu_children import SdxlBuild, TestRun  # noqa: E402

SECTIONS = ("tests", "sweep", "vram", "sdxl", "ratio", "multi")  # after the builds, always

# Dense fp16/bf16 tensor-core peaks (no sparsity). Matched against torch.cuda.get_device_name()
# in upper case: every string of `needs` present, none of `excludes`. GeForce cards: the rate
# with fp32 accumulation (what torch's fp16/bf16 matmuls use).
PEAKS = (
    (("H200",), ("NVL",), "H200 (SXM)", 989e12),
    (("H100",), ("PCIE", "NVL"), "H100 SXM", 989e12),
    (("A100",), (), "A100", 312e12),
    (("L40S",), (), "L40S", 362e12),
    (("RTX 4090",), ("LAPTOP", "4090 D"), "RTX 4090 (fp32 accumulate)", 165e12),
    (("RTX 3090",), ("LAPTOP", " TI"), "RTX 3090 (fp32 accumulate)", 71e12),
)


def peak_for(name: str) -> tuple[str, float] | None:
    upper = name.upper()
    for needs, excludes, label, flops in PEAKS:
        if all(n in upper for n in needs) and not any(x in upper for x in excludes):
            return label, flops
    return None


# ---------------------------------------------------------------------------- the budget

class Clock:
    """The run's time budget: a section that would end past it is skipped."""

    def __init__(self, budget: float) -> None:
        self.budget, self.start = budget, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def fits(self, what: str, need: float) -> bool:
        if self.elapsed() + need <= self.budget:
            return True
        say(f"skipped {what}: needs ~{need:.0f} s, {max(self.left(), 0):.0f} s of the "
            f"{self.budget:.0f} s budget left")
        return False


@contextmanager
def section(name: str, clock: Clock):
    """One section: its start and seconds printed; a failure is counted and the next runs."""
    start = time.perf_counter()
    say(f"\n== section {name} (at {clock.elapsed():.0f} s)")
    try:
        yield
    except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
        FAILED.append(name)
        say(f"section {name} FAILED: {type(error).__name__}: {error}")
        say("".join(traceback.format_exc().splitlines(keepends=True)[-12:]).rstrip())
    finally:
        say(f"section {name}: {time.perf_counter() - start:.1f} s (elapsed {clock.elapsed():.0f} "
            f"of {clock.budget:.0f} s)")


# ------------------------------------------------------------------------------ the plan

class Plan:
    """What this run measures: the GPU figures, or the same code paths tiny on the CPU."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.px = args.px or (64 if self.dry else 512)
        self.sdxl_px = args.sdxl_px or (64 if self.dry else 1024)
        self.batches = args.batch
        self.precisions = ["fp16", "bf16"]
        self.steps = args.steps or (1 if self.dry else 3)
        self.cli_steps = args.cli_steps or (3 if self.dry else 5)
        self.vram_precision = args.vram_precision
        self.sdxl_precision = args.sdxl_precision
        self.test_timeout = args.test_timeout
        # torch threads of the measuring process (every case's precision.threads); the SDXL
        # builder gets the other cores, so the two never oversubscribe the machine
        cores = os.cpu_count() or 2
        self.threads = args.threads or (1 if self.dry else max(1, cores // 2))
        self.builder_threads = max(1, cores - self.threads)
        # rough seconds a piece costs, for the budget (refined from the cases already run)
        self.cost = ({"case": 15, "sdxl": 60, "cli": 60} if self.dry else
                     {"case": 25, "sdxl": 75, "cli": 75})

    def label(self, precision: str) -> str:
        return f"{precision} (cpu: trains fp32)" if self.dry else precision


# ------------------------------------------------------------------------------ sections

def preflight(plan: Plan, args: argparse.Namespace) -> float | None:
    """Versions, the GPU and its peak (None: MFU not computed)."""
    import importlib.metadata as md

    versions = []
    for name in ("diffusers", "transformers", "peft", "huggingface_hub", "accelerate",
                 "safetensors", "pydantic"):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            versions.append(f"{name} MISSING")
    say(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda "
        f"{torch.version.cuda or 'none'}), {', '.join(versions)}")
    say(f"machine: {common.machine_line()}")
    say(f"model cache: {common.cache_root()}")
    if plan.dry:
        names = ["NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB",
                 "NVIDIA L40S", "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090", "Tesla T4"]
        say("peak table check: " + "; ".join(
            f"{n} -> {(p[0] + f' {p[1] / 1e12:.0f} TFLOP/s') if (p := peak_for(n)) else 'unknown'}"
            for n in names))
        rate = common.matmul_rate(side=2048, repeats=3)
        say(f"GPU: none (dry run on the CPU); MFU below uses this CPU's fp32 matmul rate, "
            f"{rate / 1e9:.1f} GFLOP/s (2048^2, best of 3), as the peak")
        return rate
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible; on a CPU machine run `bash bench/gpu.sh "
                         "--dry-run`")
    count = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    free, total = torch.cuda.mem_get_info(0)
    figure(f"GPU: {name} x{count}, {total / GIB:.1f} GiB ({free / GIB:.1f} free), "
           f"capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}, "
           f"torch {torch.__version__}")
    if args.peak_tflops:
        figure(f"peak used: {args.peak_tflops:g} TFLOP/s (--peak-tflops)")
        return args.peak_tflops * 1e12
    found = peak_for(name)
    if found is None:
        figure(f"unknown GPU: MFU not computed ({name!r} is not in bench/gpu.py PEAKS; pass "
               f"--peak-tflops)")
        return None
    figure(f"peak used: {found[0]}, dense fp16/bf16 {found[1] / 1e12:.0f} TFLOP/s")
    return found[1]


# ---------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny model, 64 px, fp32: every section's code, in minutes")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for everything; a section that would overrun is skipped")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, from {','.join(SECTIONS)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per case after 1 warm-up (GPU 3, dry run 1)")
    parser.add_argument("--cli-steps", type=int, default=None,
                        help="steps of each CLI run in multi (GPU 5, dry run 3)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--px", type=int, default=None, help="SD 1.5 side (512; dry run 64)")
    parser.add_argument("--sdxl-px", type=int, default=None, help="SDXL side (1024; dry 64)")
    parser.add_argument("--vram-precision", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--sdxl-precision", choices=("fp16", "bf16"), default="bf16")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense fp16/bf16 peak of a GPU not in the table")
    parser.add_argument("--test-timeout", type=float, default=150.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the measuring process (GPU: half the cores, the "
                             "SDXL builder gets the rest; dry run: 1)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    def on_term(signum, frame):  # gpu.sh's hard time cap: end cleanly, print the summary
        raise SystemExit(f"stopped by signal {signum} (the time cap)")

    signal.signal(signal.SIGTERM, on_term)
    plan = Plan(args)
    clock = Clock(args.budget)
    root = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    say(f"gpu bench{' DRY RUN (cpu, tiny model)' if plan.dry else ''}: sections "
        f"{','.join(chosen)}; budget {args.budget:.0f} s; {plan.steps} timed step(s) per case; "
        f"work folder {root}")
    build = SdxlBuild(plan, root)
    tests = TestRun(plan, root)
    pairs: list[float] = []
    peak = None
    model = None
    needs_sd15 = bool({"sweep", "vram", "multi"} & set(chosen))
    try:
        with section("preflight", clock):
            peak = preflight(plan, args)
        with section("builds", clock):
            if "sdxl" in chosen:
                build.start()
            if "tests" in chosen:
                tests.start()
            if needs_sd15:
                start = time.perf_counter()
                model = common.base_model("tiny" if plan.dry else "sd15", root)
                say(f"{'tiny model' if plan.dry else 'SD 1.5 layout'}: {model} "
                    f"({time.perf_counter() - start:.0f} s)")
        torch.set_num_threads(plan.threads)  # bench_config passes it on as precision.threads
        say(f"measuring with {plan.threads} torch thread(s)")
        if model is None and needs_sd15:
            say("no SD 1.5 model: sweep, vram and multi skipped")
            chosen = [s for s in chosen if s not in ("sweep", "vram", "multi")]
        if "tests" in chosen:
            with section("tests", clock):
                tests.finish(clock)
        if "sweep" in chosen:
            with section("sweep", clock):
                sweep(plan, clock, root, model, peak, build, pairs)
        if "vram" in chosen:
            with section("vram", clock):
                vram(plan, clock, root, model, peak)
        if "sdxl" in chosen:
            with section("sdxl", clock):
                sdxl(plan, clock, root, build, peak)
        if "ratio" in chosen:
            with section("ratio", clock):
                ratio(pairs)
        if "multi" in chosen:
            with section("multi", clock):
                multi(plan, clock, root, model)
    finally:
        build.stop()
        tests.stop()
        say(f"\n== summary ({'dry run, cpu' if plan.dry else 'GPU'}; {clock.elapsed():.0f} s"
            f"{'; FAILED: ' + ', '.join(FAILED) if FAILED else ''})")
        for line in FIGURES:
            say(line)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    say(f"gpu_bench_seconds {clock.elapsed():.0f}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
