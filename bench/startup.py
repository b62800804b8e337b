"""Start-up costs: job start -> first Loss event (tiny model), GUI process start -> window shown,
and the peak RSS of the GUI process and of the trainer child.

    python bench/startup.py [--repeats 3]

Last line: `first_loss_s X` (median seconds from Job.start() to the first Loss event).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import ROOT

GUI_PROBE = """
import time, resource
t0 = time.perf_counter()
from PySide6.QtWidgets import QApplication
from app.main import MainWindow
app = QApplication([])
window = MainWindow()
window.show()
app.processEvents()
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def time_to_first_loss(model: Path, data: Path, run: Path) -> tuple[float, float, float]:
    """(seconds to Started, seconds to first Loss, child peak RSS in MiB up to that Loss: the
    kernel's VmHWM where /proc exists, else the largest RSS seen every 50 ms)."""
    import psutil

    from test_training import tiny_config
    from trainer.events import Loss, Started
    from trainer.jobs import Job, JobSpec

    config = tiny_config(model, data, run, schedule={"max_train_steps": 400})
    job = Job(JobSpec.from_config(config, run))
    start = time.perf_counter()
    job.start()
    started = first_loss = None
    peak = 0.0
    process = psutil.Process(job.pid)
    while first_loss is None:
        for event in job.poll(0.05):
            if isinstance(event, Started) and started is None:
                started = time.perf_counter() - start
            if isinstance(event, Loss):
                first_loss = time.perf_counter() - start
        peak = max(peak, process.memory_info().rss / 2**20,
                   common.proc_status_bytes("VmHWM", job.pid) / 2**20)
        if job.done:
            raise RuntimeError(f"the job ended early: {job.last_event}")
    job.send("stop")
    list(job.events())
    return started or 0.0, first_loss, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from synthetic import make_shapes_dataset
    from trainer.models import make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    make_tiny_model(root / "model")
    make_shapes_dataset(root / "data", 12)
    loss_times, started_times, peaks = [], [], []
    for index in range(args.repeats):
        started, first_loss, peak = time_to_first_loss(root / "model", root / "data",
                                                       root / f"run{index}")
        started_times.append(started)
        loss_times.append(first_loss)
        peaks.append(peak)
        print(f"run {index}: Started after {started:.2f} s, first Loss after {first_loss:.2f} s, "
              f"trainer child peak RSS {peak:.0f} MiB")
    gui = [subprocess.run([sys.executable, "-c", GUI_PROBE], capture_output=True, text=True,
                          cwd=ROOT, check=True,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}).stdout.split()
           for _ in range(args.repeats)]
    for seconds, rss in gui:
        print(f"GUI: window shown after {float(seconds):.2f} s, peak RSS {float(rss):.0f} MiB")
    print(f"median: Started {statistics.median(started_times):.2f} s, first Loss "
          f"{statistics.median(loss_times):.2f} s, GUI window {statistics.median(float(g[0]) for g in gui):.2f} s")
    print(f"first_loss_s {statistics.median(loss_times):.2f}")


if __name__ == "__main__":
    main()
