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

    @property
    def processes(self) -> int:
        """Data-parallel processes to start on this machine (precision.processes)."""
        return int(self.config.get("precision", {}).get("processes", 1) or 1)

    @classmethod
    def from_config(cls, config: TrainConfig, run_dir: Path, resume: Path | None = None,
                    force: bool = False) -> JobSpec:
        return cls(config.model_dump(mode="json"), str(run_dir),
                   str(resume) if resume else None, force)
