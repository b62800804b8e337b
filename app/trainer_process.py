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


class JsonLinesChild(QObject):
    """One `python -m trainer.cli ...` child at a time whose `--json` lines arrive as they are
    printed: `on_line(object)` for each JSON object, `on_end(code, error)` when it ends
    (`error`: its `error: ...` line; else, when it failed, its last other line; else ''). `stop()` asks it to stop (SIGTERM: the
    trainer's commands finish the file in hand); `kill()` ends it now, with no `on_end`."""

    def __init__(self, parent: QObject, on_line: Callable[[dict], None],
                 on_end: Callable[[int, str], None]) -> None:
        super().__init__(parent)
        self.on_line, self.on_end = on_line, on_end
        self.process: QProcess | None = None
        self._buffer, self._errors, self._other = "", [], ""

    @property
    def running(self) -> bool:
        return self.process is not None

    def start(self, args: list[str]) -> bool:
        if self.process is not None:
            return False
        self._buffer, self._errors, self._other = "", [], ""
        self.process = start_python(self, ["-m", "trainer.cli", *args], self._ended, self._read)
        return True

    def _read(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            self.on_line(value)
        elif line.startswith("error:"):
            self._errors.append(line[len("error:"):].strip())
        elif line.strip():
            self._other = line.strip()  # a crash's last words, when there is no error line

    def _ended(self, code: int, _status) -> None:
        self._read()
        if self._buffer.strip():
            self._line(self._buffer)
        self._buffer = ""
        self.process = None
        self.on_end(code, self._errors[-1] if self._errors else self._other if code else "")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()

    def kill(self) -> None:
        if self.process is not None:
            self.process.finished.disconnect()
            self.process.kill()
            self.process.waitForFinished(2000)
            self.process = None
