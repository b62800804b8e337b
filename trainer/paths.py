"""Paths the user names, checked before they are opened.

Opening a FIFO (named pipe) waits for a writer that never comes, and a device or socket is no
settings file, model or image: every path a config field, a flag or a command names is checked
to be a regular file or a folder first (`os.stat` never blocks), so it is refused in words
instead of hanging the run while its heartbeat says it is alive.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def special_file_problem(path: Path | str) -> str:
    """'' for a regular file, a folder, or a path that does not exist (other checks name
    that); else what the path is, in words."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return (f"{path} is {kind}, not a regular file: reading it would wait forever; pick a "
            "regular file")
