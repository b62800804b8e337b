"""The trainer's command line run from the window: `python -m trainer.cli ...` in a QProcess
(the window never imports torch and never waits for it), and the JSON object such a command
prints as its last line (library notices may come before it)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QProcess

ROOT = Path(__file__).resolve().parent.parent


def start_python(parent: QObject, args: list[str], finished: Callable,
                 read: Callable | None = None) -> QProcess:
    """`python ARGS` from the checkout's root, stdout and stderr merged (an `error:` line
    reaches the reader too); `finished(code, status)` when it ends, `read()` as output comes."""
    process = QProcess(parent)
    process.setWorkingDirectory(str(ROOT))
    process.setProcessChannelMode(QProcess.MergedChannels)
    if read is not None:
        process.readyReadStandardOutput.connect(read)
    process.finished.connect(finished)
    process.start(sys.executable, args)
    return process


def temporary_config(config, name: str) -> Path:
    """The window's settings as a TOML file in a fresh temporary folder, for a child's
    `--config`; remove it with `discard(path)` when the child has ended."""
    from trainer.config_io import save_config

    path = Path(tempfile.mkdtemp(prefix="lora-studio-")) / name
    save_config(config, path)
    return path


def discard(config_file: Path) -> None:
    shutil.rmtree(config_file.parent, ignore_errors=True)


def last_json_object(output: str) -> dict | None:
    """The JSON object a `--json` command printed last, or None."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
