"""The trainer as a child process: event stream, commands, crashes, and a queue of jobs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthetic import make_shapes_dataset
from test_training import tiny_config
from trainer.events import Failed, Finished, Loss, Progress, Sample, Saved, Started, read_events
from trainer.jobs import Job, JobQueue, JobSpec


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jobs") / "img"
    make_shapes_dataset(folder, 6)
    return folder


def spec(tiny_model, data: Path, run: Path, steps: int, **sections) -> JobSpec:
    config = tiny_config(tiny_model[0], data, run, schedule={"max_train_steps": steps},
                         **sections)
    return JobSpec.from_config(config, run)


def test_event_order_and_schema_of_a_short_run(tiny_model, shapes, tmp_path: Path) -> None:
    job = Job(spec(tiny_model, shapes, tmp_path / "run", 3))
    job.start()
    events = list(job.events())
    kinds = [type(e) for e in events]
    assert kinds[0] is not Failed and Started in kinds
    assert kinds.index(Started) < kinds.index(Loss)
    steps = [e for e in events if isinstance(e, (Loss, Progress))]
    assert [(type(e).__name__, e.step) for e in steps] == [
        ("Loss", 1), ("Progress", 1), ("Loss", 2), ("Progress", 2), ("Loss", 3), ("Progress", 3)]
    assert all(e.total == 3 and e.it_per_s > 0 for e in steps if isinstance(e, Progress))
    saved = [(e.kind, e.step) for e in events if isinstance(e, Saved)]
    assert saved == [("checkpoint", 3), ("lora", 3)]
    assert isinstance(events[-1], Finished) and Path(events[-1].path).exists()
    on_disk = [e.type for e in read_events(tmp_path / "run")]
    assert on_disk == [e.type for e in events]  # the log and the stream tell the same story


def _wait_for(job: Job, predicate, timeout: float = 120.0) -> list:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and not job.done:
        for event in job.poll(0.1):
            seen.append(event)
            if predicate(event):
                return seen
    raise AssertionError(f"condition not met; last events: {seen[-5:]}")


def test_stop_saves_and_resume_finishes_to_the_same_weights(tiny_model, shapes,
                                                             tmp_path: Path) -> None:
    whole = Job(spec(tiny_model, shapes, tmp_path / "whole", 12, output={"save_precision": "fp32"}))
    whole.start()
    list(whole.events())
    part = Job(spec(tiny_model, shapes, tmp_path / "part", 12, output={"save_precision": "fp32"}))
    part.start()
    _wait_for(part, lambda e: isinstance(e, Loss) and e.step >= 2)
    part.send("stop")
    rest = list(part.events())
    assert isinstance(rest[-1], Finished) and rest[-1].step < 12
    resumed = Job(JobSpec(part.spec.config, part.spec.run_dir, resume=part.spec.run_dir))
    resumed.start()
    events = list(resumed.events())
    assert isinstance(events[-1], Finished) and events[-1].step == 12
    a, b = load_file(whole.last_event.path), load_file(events[-1].path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pause_holds_and_resume_continues(tiny_model, shapes, tmp_path: Path) -> None:
    job = Job(spec(tiny_model, shapes, tmp_path / "run", 400))
    job.start()
    _wait_for(job, lambda e: isinstance(e, Loss))
    job.send("pause")
    _wait_for(job, lambda e: getattr(e, "text", "").startswith("paused after step"))
    time.sleep(1.0)
    assert not [e for e in job.poll(0.5) if isinstance(e, Loss)]
    job.send("resume")
    _wait_for(job, lambda e: isinstance(e, Loss))
    job.send("stop")
    assert isinstance(list(job.events())[-1], Finished)


def test_sample_now_while_paused_renders_and_stays_paused(tiny_model, shapes,
                                                          tmp_path: Path) -> None:
    """Sample now on a paused run was dropped (#14 item 6): the previews come, no step runs."""
    job = Job(spec(tiny_model, shapes, tmp_path / "run", 400,
                   sampling={"prompts": ["a red circle --d 3"], "at_end": False}))
    job.start()
    _wait_for(job, lambda e: isinstance(e, Loss))
    job.send("pause")
    paused_at = int(_wait_for(job, lambda e: getattr(e, "text", "").startswith(
        "paused after step"))[-1].text.rsplit(" ", 1)[-1])
    job.send("sample_now")
    seen = _wait_for(job, lambda e: isinstance(e, Sample))
    assert {e.step for e in seen if isinstance(e, Sample)} == {paused_at}
    assert not [e for e in seen + job.poll(0.5) if isinstance(e, Loss)]
    job.send("resume")
    assert _wait_for(job, lambda e: isinstance(e, Loss))[-1].step == paused_at + 1
    job.send("stop")
    assert isinstance(list(job.events())[-1], Finished)


def test_sample_now_arrives_within_one_step(tiny_model, shapes, tmp_path: Path) -> None:
    job = Job(spec(tiny_model, shapes, tmp_path / "run", 400,
                   sampling={"prompts": ["a red circle --d 3"], "at_end": False}))
    job.start()
    asked_at = _wait_for(job, lambda e: isinstance(e, Loss))[-1].step
    job.send("sample_now")
    sample = _wait_for(job, lambda e: isinstance(e, Sample))[-1]
    assert sample.step <= asked_at + 2  # the step running when the command arrived, or the next
    job.send("stop")
    list(job.events())


def test_a_run_folder_that_cannot_be_made_fails_the_job_in_words(tiny_model, shapes,
                                                                 tmp_path: Path) -> None:
    """A runs folder under a file wedged the window: the child died before saying why and
    the parent's crash handler raised NotADirectoryError on every poll (#14 item 1)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    job = Job(spec(tiny_model, shapes, blocker / "run", 4))
    job.start()
    events = list(job.events())  # ends: every poll returned instead of raising
    assert job.state == "failed" and events[-1].kind == "run_folder"
    assert str(blocker / "run") in events[-1].message and "a-file" in events[-1].message
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_start_leaves_no_empty_run_folder(tiny_model, tmp_path: Path,
                                                   existed: bool) -> None:
    """A run that fails before training (here: a folder without images) left a run folder
    holding only its log (#14 item 7); a folder that was there before is left alone."""
    empty = tmp_path / "no-images"
    empty.mkdir()
    run = tmp_path / "run"
    if existed:
        run.mkdir()
    job = Job(spec(tiny_model, empty, run, 4))
    job.start()
    events = list(job.events())
    job.wait()
    assert job.state == "failed" and events[-1].kind == "dataset"
    assert run.exists() == existed
    if existed:
        assert (run / "events.jsonl").exists()  # the record of why it failed stays


def test_a_killed_child_is_reported_within_two_seconds(tiny_model, shapes, tmp_path: Path) -> None:
    job = Job(spec(tiny_model, shapes, tmp_path / "run", 400))
    job.start()
    _wait_for(job, lambda e: isinstance(e, Loss))
    os.kill(job.pid, signal.SIGKILL)
    killed = time.monotonic()
    failure = _wait_for(job, lambda e: isinstance(e, Failed), timeout=10)[-1]
    assert time.monotonic() - killed < 2.0
    assert failure.kind == "crashed" and "SIGKILL" in failure.message
    assert read_events(tmp_path / "run")[-1].type == "failed"  # the run folder says so too


def test_an_empty_dataset_fails_before_any_model_loads(tiny_model, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    job = Job(spec(tiny_model, empty, tmp_path / "run", 5))
    job.start()
    events = list(job.events())
    assert isinstance(events[-1], Failed) and events[-1].kind == "dataset"
    assert str(empty) in events[-1].message
    assert not any("LoRA on" in getattr(e, "text", "") for e in events)  # no model was loaded


def test_a_queue_runs_its_jobs_one_after_another(tiny_model, shapes, tmp_path: Path) -> None:
    order = []
    jobs = JobQueue(on_event=lambda job, event: order.append((job.spec.run_dir, event.type)))
    first = jobs.add(spec(tiny_model, shapes, tmp_path / "a", 2))
    second = jobs.add(spec(tiny_model, shapes, tmp_path / "b", 2))
    jobs.run_all()
    assert first.state == second.state == "finished"
    runs = [run for run, kind in order if kind in ("started", "finished")]
    assert runs == [str(tmp_path / "a")] * 2 + [str(tmp_path / "b")] * 2


def _noisy_child(events) -> None:
    """Spawn target: what libraries do to a terminal, inside the silenced worker."""
    import logging
    import warnings

    from trainer.worker import _silence_the_terminal

    _silence_the_terminal(events.put)
    print("a stray print")
    warnings.warn("careful with that")
    logging.getLogger("diffusers.loaders").warning("no LoRA keys found")
    os.write(1, b"raw bytes from C\n")
    os.write(2, b"progress bar 50%\r")


def test_child_output_becomes_log_events_not_terminal_noise(capfd) -> None:
    import multiprocessing as mp

    context = mp.get_context("spawn")
    events = context.Queue()
    child = context.Process(target=_noisy_child, args=(events,))
    child.start()
    child.join(60)
    logs = []
    while not events.empty():
        logs.append(events.get(timeout=5))
    texts = [(e.level, e.text) for e in logs]
    assert ("library", "stdout: a stray print") in texts
    assert ("library", "UserWarning: careful with that") in texts
    assert ("library", "warning diffusers.loaders: no LoRA keys found") in texts
    out, err = capfd.readouterr()
    assert "raw bytes" not in out and "progress bar" not in err and "stray" not in out


def test_runs_list_and_show_summarise_past_runs(tmp_path: Path, capsys) -> None:
    from trainer.cli import main as cli
    from trainer.events import EventLog, Log

    run = tmp_path / "runs" / "a"
    log = EventLog(run)
    log.write(Started(str(run), 10))
    for step in (1, 2, 3):
        log.write(Loss(step, 1.0 / step, 1e-4))
    log.write(Saved(str(run / "a.safetensors"), "lora", 3))
    log.write(Finished(str(run / "a.safetensors"), 3))
    log.close()
    (run / "checkpoints" / "step-000003").mkdir(parents=True)
    (run / "checkpoints" / "step-000003" / "state.json").write_text("{}")  # a complete one
    (run / "checkpoints" / "step-000002").mkdir()  # cut short: not offered to resume from
    assert cli(["runs", "list", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.strip() == f"{run}: stopped early, step 3/10, last loss 0.3333"
    assert cli(["runs", "show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert f"LoRA file: {run / 'a.safetensors'}" in shown
    assert "checkpoints: step-000003\n" in shown
    assert f"lora-train train --resume {run}" in shown


def test_a_child_that_lives_but_makes_no_progress_is_reported(monkeypatch, tmp_path: Path) -> None:
    """#15: heartbeats kept a job stuck in one call (open() on a hanging share) "alive"
    forever. Heartbeats with no other event for STALL_WARNING_S give one warning per stretch;
    a paused run is quiet on purpose and gets none."""
    import queue as queues

    import trainer.jobs as jobs
    from trainer.events import Heartbeat, Log

    monkeypatch.setattr(jobs, "STALL_WARNING_S", 0.3)

    class Alive:  # a child process that never ends
        pid = 12345

        def is_alive(self) -> bool:
            return True

    job = Job(JobSpec({}, str(tmp_path / "run")))
    job._process, job._events, job._commands = Alive(), queues.Queue(), queues.Queue()
    job.state, job._last_seen, job._last_progress = "running", time.monotonic(), time.monotonic()
    job._note(Log("info", "caching latents of 10000 images"))

    def beating(seconds: float) -> list:
        seen, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            job._events.put(Heartbeat())
            seen += job.poll(0.05)
        return seen

    warnings = [e for e in beating(0.5) if isinstance(e, Log) and e.level == "warning"]
    assert len(warnings) == 1 and not job.done
    assert "no progress for 0 min" in warnings[0].text
    assert "its last message: 'caching latents of 10000 images'" in warnings[0].text
    job.send("pause")
    assert not [e for e in beating(0.5) if isinstance(e, Log)]
