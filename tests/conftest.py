"""Shared test set-up: offline, offscreen, no sockets, tiny models built once per session."""

from __future__ import annotations

import os
import socket
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402

from trainer.offline import blocking  # noqa: E402


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open an internet connection fails the test (local socketpairs, which
    multiprocessing uses, stay allowed)."""
    connect, create_connection = blocking(socket.socket.connect, NetworkBlocked)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture(autouse=True)
def no_modal_dialogs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A modal dialog in a test waits for a click that never comes: CI hangs. Opening one
    fails the test instead, naming the dialog (tests replace the question, as with
    MainWindow.ask_close and Exporter.ask_replace)."""
    widgets = sys.modules.get("PySide6.QtWidgets")
    if widgets is None:  # a trainer-only test: Qt was never imported
        return

    def refuse(dialog, *args, **kwargs):
        text = dialog.text() if hasattr(dialog, "text") else ""
        raise AssertionError(f"a modal dialog opened in a test: {dialog.windowTitle()!r} "
                             f"{text!r}; replace the question the code asks")

    monkeypatch.setattr(widgets.QMessageBox, "exec", refuse)
    monkeypatch.setattr(widgets.QDialog, "exec", refuse)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot when other jobs share the CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """(diffusers folder, single ldm-layout file) of one tiny random SD 1.x model."""
    from trainer.models import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-model")
    folder, single = root / "tiny", root / "tiny.safetensors"
    make_tiny_model(folder, single_file=single, seed=0)
    return folder, single
