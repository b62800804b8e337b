"""Paths the user names, checked before they are opened.

Opening a FIFO (named pipe) waits for a writer that never comes, and a device or socket is no
settings file, model or image: every path a config field, a flag or a command names is checked
to be a regular file or a folder first (`os.stat` never blocks), so it is refused in words
instead of hanging the run while its heartbeat says it is alive. A symbolic link loop is named
the same way, and the helpers below never raise on one (Python's own calls do).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def special_file_problem(path: Path | str) -> str:
    """'' for a regular file, a folder, or a path that does not exist (other checks name
    that); else what the path is, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:  # open() would fail later with a less useful message
            return (f"{path} is a symbolic link loop (it leads back to itself); point it at a "
                    "real file or folder")
        return ""
    except ValueError:
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    why = "reading it would wait forever" if stat.S_ISFIFO(mode) else "it holds no file to read"
    return f"{path} is {kind}, not a regular file: {why}; pick a regular file"


def _loops(error: OSError | RuntimeError) -> bool:
    # Python 3.11's Path.resolve raises RuntimeError("Symlink loop ..."), os calls ELOOP
    return isinstance(error, RuntimeError) or error.errno == errno.ELOOP


def resolved(path: Path | str) -> Path:
    """`path` made absolute with its links followed; a link loop stays as written (lexically
    absolute) so the config's own check names it, instead of `Path.resolve` raising."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as error:
        if not _loops(error):
            raise
        return Path(os.path.abspath(path))


def link_problem(path: Path | str) -> str:
    """Why a symbolic link cannot be used ('' when it can, or when `path` is no link)."""
    try:
        os.stat(path)
        return ""
    except OSError as error:
        if not os.path.islink(path):
            return ""
        if _loops(error):
            return "symbolic link loop (it leads back to itself)"
        return "broken link (its target is missing)" if error.errno == errno.ENOENT else ""


def is_regular_file(entry: os.DirEntry) -> bool:
    """`entry.is_file()` that says False for a link loop instead of raising (Python only
    swallows a missing target)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def is_folder(entry: os.DirEntry, follow_symlinks: bool = True) -> bool:
    """`entry.is_dir()` that says False for a link loop instead of raising."""
    try:
        return entry.is_dir(follow_symlinks=follow_symlinks)
    except OSError:
        return False
