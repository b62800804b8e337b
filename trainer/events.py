"""The message stream from the trainer to whoever watches it (CLI, GUI, tests).

Plain picklable dataclasses with `to_dict` / `from_dict`; no tensors (a preview is PNG bytes).
Every event is also appended to `events.jsonl` in the run folder, with preview images written
as files beside it and referenced by name, so a past run can be read back. No torch, no Qt.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from trainer.atomic import atomic_write_bytes

EVENTS_FILE = "events.jsonl"
SAMPLES_DIR = "samples"


@dataclass
class Event:
    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Event:
        kind = EVENT_TYPES.get(data.get("type", ""))
        if kind is None:
            raise ValueError(f"unknown event type {data.get('type')!r}")
        names = {f.name for f in fields(kind)}
        return kind(**{k: v for k, v in data.items() if k in names})


@dataclass
class Started(Event):
    type: ClassVar[str] = "started"
    run_dir: str
    total_steps: int
    resumed_from_step: int = 0


@dataclass
class Progress(Event):
    type: ClassVar[str] = "progress"
    step: int
    total: int
    epoch: int  # 0-based index of the epoch the next batch comes from
    it_per_s: float
    eta_s: float


@dataclass
class Loss(Event):
    type: ClassVar[str] = "loss"
    step: int
    loss: float
    lr: float


@dataclass
class Validation(Event):
    """The validation loss at `step`: the held-out images with fixed noise and timesteps
    (trainer.validation), so it moves only when the LoRA does. Step 0: the base model's."""

    type: ClassVar[str] = "validation"
    step: int
    loss: float
    images: int


@dataclass
class Sample(Event):
    type: ClassVar[str] = "sample"
    step: int
    prompt: str
    seed: int
    scale: float
    png_bytes: bytes | None = None
    file: str | None = None  # name under samples/ once written


# The Log level of what libraries print or warn: kept in the record, hidden by default.
LIBRARY = "library"


@dataclass
class Log(Event):
    type: ClassVar[str] = "log"
    level: str  # info | warning | error | LIBRARY
    text: str


@dataclass
class Saved(Event):
    type: ClassVar[str] = "saved"
    path: str
    kind: str  # "checkpoint" | "lora"
    step: int = 0


@dataclass
class Finished(Event):
    type: ClassVar[str] = "finished"
    path: str
    step: int = 0


@dataclass
class Failed(Event):
    type: ClassVar[str] = "failed"
    kind: str  # dataset | model | config | out_of_memory | nan | disk_full | crashed | internal
    message: str
    hint: str = ""


@dataclass
class Heartbeat(Event):
    type: ClassVar[str] = "heartbeat"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (Started, Progress, Loss, Validation, Sample, Log, Saved, Finished,
                              Failed, Heartbeat)
}


class EventLog:
    """Appends events to `run_dir/events.jsonl`; previews go to `run_dir/samples/*.png`.

    Each line is flushed as it is written, so a run killed at any moment leaves a readable log
    (at worst its last line is cut, and `read_events` skips it)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._handle = open(run_dir / EVENTS_FILE, "a", encoding="utf-8")

    def write(self, event: Event) -> None:
        if isinstance(event, Heartbeat):
            return
        data = event.to_dict()
        if isinstance(event, Sample) and event.png_bytes is not None:
            data["file"] = self._write_png(event)
            data.pop("png_bytes")
        self._handle.write(json.dumps(data) + "\n")
        self._handle.flush()

    def _write_png(self, event: Sample) -> str:
        folder = self.run_dir / SAMPLES_DIR
        folder.mkdir(exist_ok=True)
        index = len(list(folder.glob(f"step{event.step:06d}_*.png")))
        name = f"step{event.step:06d}_{index:02d}_m{event.scale:g}.png"
        atomic_write_bytes(folder / name, event.png_bytes or b"")
        return f"{SAMPLES_DIR}/{name}"

    def close(self) -> None:
        self._handle.close()


def read_events(run_dir: Path, *, load_images: bool = False) -> list[Event]:
    """The events of a past run, in order; a cut last line (a killed run) is skipped."""
    events: list[Event] = []
    path = run_dir / EVENTS_FILE
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = Event.from_dict(json.loads(line))
        except (ValueError, TypeError):
            continue
        if load_images and isinstance(event, Sample) and event.file:
            image = run_dir / event.file
            event.png_bytes = image.read_bytes() if image.exists() else None
        events.append(event)
    return events
