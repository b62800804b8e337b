"""The GUI never loads torch; the trainer never loads Qt. Checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "peft")
QT = ("PySide6", "pyqtgraph")


def loaded_after_import(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"QT_QPA_PLATFORM": "offscreen", "PATH": ""})
    return {name.split(".")[0] for name in json.loads(out.stdout)}


@pytest.mark.parametrize("module", ["app.main", "trainer.config", "trainer.config_io",
                                    "trainer.events", "trainer.jobs", "trainer.worker"])
def test_gui_side_modules_do_not_load_torch(module: str) -> None:
    loaded = loaded_after_import(module)
    assert not loaded & set(HEAVY + QT if module.startswith("trainer") else HEAVY), sorted(loaded)


@pytest.mark.parametrize("module", ["trainer.loop", "trainer.cli", "trainer.models",
                                    "trainer.data", "trainer.export"])
def test_trainer_modules_do_not_load_qt(module: str) -> None:
    loaded = loaded_after_import(module)
    assert not loaded & set(QT), f"{module} pulled in {sorted(loaded & set(QT))}"
