"""The command line's view of the event stream: one progress bar, warnings above it."""

from __future__ import annotations

import sys

from tqdm import tqdm

from trainer.events import Event, Log, Loss, Progress, Sample, Saved, Started


class ProgressPrinter:
    """Renders events as `step/total [it/s, ETA] loss=…` plus one line per notable event."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None
        self.loss: float | None = None

    def note(self, text: str) -> None:
        (self.bar.write if self.bar else print)(text, file=self.stream)

    def handle(self, event: Event) -> None:
        if isinstance(event, Started):
            # tqdm's own rate and ETA are left out: the postfix has the trainer's (the window
            # shows the same figures), and two disagreeing speeds on one line mislead
            self.bar = tqdm(total=event.total_steps, initial=event.resumed_from_step,
                            file=self.stream, unit="step", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        elif isinstance(event, Loss):
            self.loss = event.loss
        elif isinstance(event, Progress) and self.bar is not None:
            self.bar.n = event.step
            self.bar.set_postfix_str(f"epoch {event.epoch + 1}, loss {self.loss:.4f}, "
                                     f"{event.it_per_s:.2f} it/s, ETA {event.eta_s:.0f}s",
                                     refresh=False)
            self.bar.refresh()
        elif isinstance(event, Log) and event.level in ("warning", "error"):
            self.note(f"{event.level}: {event.text}")
        elif isinstance(event, Log) and event.level != "library":  # libraries' chatter stays in
            self.note(event.text)                                   # events.jsonl only
        elif isinstance(event, Saved):
            self.note(f"saved {event.kind}: {event.path}")
        elif isinstance(event, Sample):
            self.note(f"preview at step {event.step}: {event.prompt!r} (strength {event.scale:g})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
