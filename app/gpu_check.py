"""The GPUs and the run's GPU memory, as the trainer sees them (`lora-train preflight --json`).

Run as a child process through QProcess with the window's current settings, like the dataset
check, because the window never imports torch. It reports the CUDA GPUs (so the Training
section offers several processes when there are two or more) and the run's estimated peak GPU
memory, in the palette's error colour when it exceeds the free memory of the GPUs it would use.
"""

from __future__ import annotations


from PySide6.QtCore import QObject, QProcess, QTimer, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from app.binding import Binder
from app.colours import ERROR, set_tone
from app.forms import plain_label
from app.trainer_process import discard, last_json_object, start_python, temporary_config

# The settings the estimate or the device choice depends on: a change checks again.
WATCHED = ("*", "model.path", "dataset.resolution", "dataset.batch_size", "network.",
           "precision.mixed_precision", "precision.gradient_checkpointing",
           "precision.processes", "precision.device", "optimizer.type")


def describe(report: dict | None, wanted_device: str) -> tuple[str, bool]:
    """(the text to show, whether it is a problem) for one preflight report."""
    if report is None:
        return "The GPU check could not run; training still can.", False
    devices = report.get("devices") or []
    found = (f"{len(devices)} NVIDIA GPU{'s' if len(devices) > 1 else ''}: " +
             ", ".join(f"{d['name']} ({d['free_bytes'] / 2**30:.1f} GB free)" for d in devices)
             if devices else "No NVIDIA GPU found: training runs on the processor (CPU).")
    if wanted_device == "cuda" and not devices:
        return found + " Device is set to NVIDIA GPU: choose automatic or processor.", True
    estimate = report.get("estimate")
    if report.get("problem"):
        return f"{found}\n{report['problem'][0].upper()}{report['problem'][1:]}.", True
    if estimate and devices:
        return f"{found}\nThis run needs {estimate['text']}.", False
    return found, False


class DeviceProbe(QObject):
    """The session's one look for GPUs (they don't come and go): a child `preflight
    --devices-only --json`, shared by every window, never owned by one (a window closed while
    it runs must not make the next window look again)."""

    found = Signal(object)  # the devices, a list (empty: none, or the probe failed)
    _shared: DeviceProbe | None = None

    def __init__(self) -> None:
        super().__init__()
        self.devices: list | None = None  # None: not known yet
        self.process: QProcess | None = None

    @classmethod
    def shared(cls) -> DeviceProbe:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def start(self) -> None:
        if self.devices is None and self.process is None:
            self.process = start_python(self, ["-m", "trainer.cli", "preflight", "--json",
                                               "--devices-only"], self._done)

    def _done(self, code: int, status) -> None:
        output = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self.process = None
        report = last_json_object(output)
        self.devices = (report or {}).get("devices") or []  # a failed probe: no GPU offered
        self.found.emit(self.devices)


class GpuCheck(QWidget):
    """One line about the GPUs and one about the run's memory; `devices` after every check.

    The GPUs are looked up once per session (DeviceProbe); the memory estimate is made only
    where there is a GPU and a model: a CPU-only machine pays one short child process (torch's
    import), nothing per edit or window."""

    devices = Signal(int)  # how many CUDA GPUs the trainer sees

    def __init__(self, binder: Binder) -> None:
        super().__init__()
        self.binder = binder
        self.process: QProcess | None = None
        self.report: dict | None = None
        self.label: QLabel = plain_label("Looking for GPUs...")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        self._later = QTimer(self)
        self._later.setSingleShot(True)
        self._later.setInterval(800)
        self._later.timeout.connect(self.check)
        binder.changed.connect(self._maybe_recheck)
        # a method, not a lambda: Qt drops the connection when this widget is deleted
        DeviceProbe.shared().found.connect(self._devices_found)
        self._later.start()

    def _maybe_recheck(self, key: str) -> None:
        if any(key == watched or (watched.endswith(".") and key.startswith(watched))
               for watched in WATCHED):
            self._later.start()

    def _devices_found(self, devices: list) -> None:
        self.check()

    @property
    def pending(self) -> bool:
        return self._later.isActive() or self.process is not None

    def check(self) -> bool:
        if self.process is not None:
            self._later.start()  # one check at a time; again when this one ends
            return False
        probe = DeviceProbe.shared()
        if probe.devices is None:
            probe.start()  # its answer calls check again
            return False
        if not (probe.devices and self.binder.config.model.path):
            self._present({"devices": probe.devices, "estimate": None, "problem": None})
            return False
        # a GPU machine and a model: the estimate, made by the trainer for these settings
        self._config_file = temporary_config(self.binder.config, "preflight.toml")
        self.process = start_python(self, ["-m", "trainer.cli", "preflight", "--json",
                                           "--config", str(self._config_file)], self._show)
        return True

    def _show(self, code: int, status) -> None:
        output = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self.process = None
        discard(self._config_file)
        self._present(last_json_object(output))

    def _present(self, report: dict | None) -> None:
        self.report = report
        text, problem = describe(self.report, self.binder.config.precision.device)
        self.label.setText(text)
        set_tone(self.label, ERROR if problem else None)
        self.devices.emit(len((self.report or {}).get("devices") or []))

    def stop(self) -> None:
        self._later.stop()
        if self.process is not None:
            self.process.finished.disconnect()
            self.process.kill()
            self.process.waitForFinished(1000)
            self.process = None
