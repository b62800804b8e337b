"""The Training section's GPU line and "GPUs to use" (app/gpu_check.py): what the trainer's
`preflight --json` child reports, replayed as recorded on GPU machines, and the real child on
this CPU-only one."""

from __future__ import annotations

import pytest

from app.gpu_check import DeviceProbe, describe
from app.main import MainWindow

GIB = 2 ** 30
H200 = {"index": 0, "name": "NVIDIA H200", "free_bytes": 140 * GIB, "total_bytes": 141 * GIB}
TWO_GPUS = {"devices": [H200, {**H200, "index": 1, "free_bytes": 3 * GIB}],
            "estimate": {"total_bytes": 8 * GIB, "text": "about 8.0 GB of GPU memory (model "
                                                          "6.6, LoRA and optimizer 0.3, "
                                                          "activations 1.1)"},
            "estimate_error": None,
            "problem": "this run needs about 8.0 GB of GPU memory (...), but the GPU has 3.0 GB "
                       "free: turn on gradient checkpointing, use fp16 or bf16, or lower the "
                       "batch size or resolution"}


@pytest.fixture(autouse=True)
def fresh_session():
    DeviceProbe.shared().devices = None  # each test a new session: its GPUs looked up anew
    yield


def test_an_estimate_that_fits_is_said_and_one_that_does_not_is_a_problem() -> None:
    fits = {**TWO_GPUS, "devices": [H200], "problem": None}
    text, problem = describe(fits, "auto")
    assert not problem
    assert text == ("1 NVIDIA GPU: NVIDIA H200 (140.0 GB free)\nThis run needs about 8.0 GB of "
                    "GPU memory (model 6.6, LoRA and optimizer 0.3, activations 1.1).")
    text, problem = describe(TWO_GPUS, "auto")
    assert problem and text.startswith("2 NVIDIA GPUs: NVIDIA H200 (140.0 GB free), NVIDIA H200 "
                                       "(3.0 GB free)\nThis run needs about 8.0 GB")
    assert "turn on gradient checkpointing" in text


def test_no_gpu_is_a_problem_only_when_the_device_says_cuda() -> None:
    none = {"devices": [], "estimate": None, "problem": None}
    assert describe(none, "auto") == ("No NVIDIA GPU found: training runs on the processor "
                                      "(CPU).", False)
    text, problem = describe(none, "cuda")
    assert problem and "choose automatic or processor" in text
    assert describe(None, "auto") == ("The GPU check could not run; training still can.", False)


def test_gpus_to_use_is_offered_only_where_there_are_two_or_more(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    section = window.training
    with qtbot.waitSignal(section.gpus.devices, timeout=60_000) as found:
        pass  # the real child, on this CPU-only machine
    assert found.args == [0] and DeviceProbe.shared().devices == []
    assert section.gpus.label.text().startswith("No NVIDIA GPU found")
    assert not section.form.isRowVisible(section.processes)
    section.gpus._present(TWO_GPUS)  # what a two-GPU machine's check reports
    assert section.form.isRowVisible(section.processes)
    assert section.gpus.label.property("tone") == "error"  # 8 GB do not fit in 3
    window.binder.widget("precision.processes").setValue(2)  # as the user would
    assert window.binder.config.precision.processes == 2
    section.gpus._present({"devices": [H200], "estimate": None, "problem": None})
    # a project set to 2 stays visible (and editable) on a machine with fewer GPUs
    assert section.form.isRowVisible(section.processes)
    assert section.gpus.label.property("tone") == ""


def test_a_cpu_only_session_looks_for_gpus_once(qtbot) -> None:
    first = MainWindow()
    qtbot.addWidget(first)
    probe = DeviceProbe.shared()
    qtbot.waitUntil(lambda: probe.process is not None, timeout=5_000)
    first.close()  # closed while its look for GPUs runs: the look goes on for the session
    with qtbot.waitSignal(probe.found, timeout=60_000):
        pass
    assert probe.devices == [] and probe.process is None
    second = MainWindow()
    qtbot.addWidget(second)
    second.training.gpus.check()  # an edit's recheck: answered from what the session knows
    assert second.training.gpus.process is None and probe.process is None
    assert second.training.gpus.label.text().startswith("No NVIDIA GPU found")
