"""bench/gpu.py's child processes, started with the builds so they overlap the measuring: the
SDXL builder (this file run as a script: the real layout into the model cache, or in the dry run
a tiny SDXL-shaped single file) and tests/test_cuda.py. Each is waited for before the first case
that must not share the machine with it, and stopped at the end if it is still running.

    python bench/gpu_children.py FOLDER --threads N [--dry-run]   # what SdxlBuild starts
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import common  # first: puts the repository on sys.path, keeps the hubs offline

import torch  # noqa: E402
from gpu_cases import figure, say  # noqa: E402

if TYPE_CHECKING:  # only annotations: gpu.py is the __main__ script, never imported here
    from gpu import Clock, Plan


def end(process: subprocess.Popen | None) -> bool:
    """Stop a child that is still running (SIGTERM, SIGKILL if it ignores that for 10 s);
    False when there was none to stop."""
    if process is None or process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    return True


def build_sdxl(folder: Path, threads: int, dry: bool) -> None:
    """The SDXL builder, in its own process: the real layout into the cache (GPU run), or a
    tiny SDXL-shaped single file plus the U-Net config that counts its FLOPs (dry run). Its
    last line is JSON: the model's path and the build's seconds."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    if not dry:
        path = common.sdxl_model()
    else:
        from trainer.families import get_family
        from trainer.models.tiny import tiny_text_config, tiny_unet_config, tiny_vae_config

        spec = get_family("sdxl")
        unet_cfg = tiny_unet_config(spec)
        configs = (unet_cfg, tiny_vae_config(spec),
                   {s.component: tiny_text_config(spec, s.component) for s in spec.text_encoders})
        path = folder / "sdxl-tiny.safetensors"
        common.write_random_single_file(path, "sdxl", configs=configs)
        flops_dir = folder / "sdxl-tiny-flops" / "unet"  # step_flops reads unet/config.json
        flops_dir.mkdir(parents=True, exist_ok=True)
        (flops_dir / "config.json").write_text(json.dumps(unet_cfg), encoding="utf-8")
    print(json.dumps({"path": str(path), "seconds": time.perf_counter() - start}), flush=True)


class SdxlBuild:
    """The background SDXL build: started first, waited for by the sdxl section."""

    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan, self.root = plan, root
        self.log = root / "sdxl-build.log"
        self.process: subprocess.Popen | None = None
        self.result: dict | None = None
        self.started = time.perf_counter()

    def start(self) -> None:
        cached = common.cache_root() / "sdxl-random-seed0.safetensors"
        if not self.plan.dry and cached.is_file():
            self.result = {"path": str(cached), "seconds": 0.0}
            say(f"SDXL layout: cached at {cached}")
            return
        threads = self.plan.builder_threads
        command = [sys.executable, __file__, str(self.root), "--threads", str(threads)] + (
            ["--dry-run"] if self.plan.dry else [])
        self.started = time.perf_counter()
        with open(self.log, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=common.ROOT)
        say(f"SDXL build started in the background (pid {self.process.pid}, {threads} threads, "
            f"log {self.log})")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> dict | None:
        if self.result is not None or self.process is None:
            return self.result
        try:
            self.process.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return None
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        if self.process.returncode != 0:
            tail = "\n".join(lines[-15:])
            raise RuntimeError(f"the SDXL build exited with {self.process.returncode}:\n{tail}")
        self.result = json.loads(lines[-1])
        say(f"SDXL build finished: {self.result['path']}, built in "
            f"{self.result['seconds']:.0f} s")
        return self.result

    def stop(self) -> None:
        if end(self.process):
            say("SDXL build stopped (not needed any more)")


class TestRun:
    """tests/test_cuda.py in a child, started with the builds (the tests use tiny models of
    their own), waited for before the first timed case so it never shares the GPU with one."""

    COMMAND = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
               "tests/test_cuda.py"]

    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan, self.log = plan, root / "test_cuda.log"
        self.process: subprocess.Popen | None = None
        self.started = time.perf_counter()
        self.present = (common.ROOT / "tests" / "test_cuda.py").is_file()

    def start(self) -> None:
        if not self.present:
            return
        self.started = time.perf_counter()
        with open(self.log, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(self.COMMAND, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=common.ROOT)
        say(f"tests started in the background (pid {self.process.pid}): "
            f"{' '.join(self.COMMAND[1:])}")

    def finish(self, clock: Clock) -> None:
        if not self.present:
            figure("test_cuda: tests/test_cuda.py not present: skipped")
            return
        if self.process is None:
            self.start()
        limit = max(0.0, min(self.plan.test_timeout - (time.perf_counter() - self.started),
                             clock.left()))
        try:
            self.process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.stop()
            figure(f"test_cuda: stopped after {time.perf_counter() - self.started:.0f} s "
                   f"(--test-timeout {self.plan.test_timeout:.0f} s or the budget); log "
                   f"{self.log}")
            return
        text = self.log.read_text(encoding="utf-8", errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        keys = ("passed", "failed", "skipped", "error", "no tests ran", "deselected")
        result = next((line for line in reversed(lines) if any(k in line for k in keys)),
                      lines[-1] if lines else "(no output)")
        for line in lines:
            if line.startswith(("FAILED", "ERROR")):
                say(f"  {line[:300]}")
        if self.process.returncode not in (0, 5):
            say("  (last lines of the log)\n" + "\n".join(f"  {x[:300]}" for x in lines[-15:]))
        figure(f"test_cuda: {result.strip('= ')} (exit {self.process.returncode}, "
               f"{time.perf_counter() - self.started:.0f} s from its start)")

    def stop(self) -> None:
        end(self.process)


if __name__ == "__main__":  # the builder child SdxlBuild.start runs
    parser = argparse.ArgumentParser(description="build bench/gpu.py's SDXL model")
    parser.add_argument("folder", type=Path, help="where the dry run's tiny model goes")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    build_sdxl(args.folder, args.threads, args.dry_run)
