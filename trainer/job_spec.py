"""JobSpec: what a training job runs, as plain data that pickles into the spawned child."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.config import TrainConfig


@dataclass
class JobSpec:
    """What to run: a config (as plain data, so it pickles anywhere) and where."""

    config: dict
    run_dir: str
    resume: str | None = None
    force: bool = False

    @classmethod
    def from_config(cls, config: TrainConfig, run_dir: Path, resume: Path | None = None,
                    force: bool = False) -> JobSpec:
        return cls(config.model_dump(mode="json"), str(run_dir),
                   str(resume) if resume else None, force)
