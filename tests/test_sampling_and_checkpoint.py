"""Prompt lines, checkpoint bookkeeping and the event log: small parts with pinned behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.events import EventLog, Failed, Loss, Sample, Started, read_events
from trainer.sampling import PromptError, PromptSpec, parse_prompt_line

DEFAULTS = PromptSpec(prompt="", width=64, height=64, steps=4, scale=7.0, seed=5)


def test_kohya_prompt_line_options() -> None:
    spec = parse_prompt_line("a red fox, forest --n blurry, lowres --w 128 --h 96 --s 12 "
                             "--l 5.5 --d 99 --m 0.75", DEFAULTS)
    assert spec == PromptSpec("a red fox, forest", "blurry, lowres", 128, 96, 12, 5.5, 99, 0.75)


def test_prompt_line_defaults_and_dashes_inside_words() -> None:
    spec = parse_prompt_line("a well--lit room", DEFAULTS)
    assert spec.prompt == "a well--lit room" and spec.width == 64 and spec.seed == 5


@pytest.mark.parametrize("line, needle", [("a cat --w big", "--w needs a number"),
                                          ("--d 4", "no text"), ("a cat --w 100", "multiples of 8")])
def test_bad_prompt_lines_are_named(line: str, needle: str) -> None:
    with pytest.raises(PromptError, match=needle):
        parse_prompt_line(line, DEFAULTS)


def _position(step: int, **config) -> ckpt.TrainingPosition:
    return ckpt.TrainingPosition(step=step, epoch=0, batch_in_epoch=step, total_steps=20,
                                 dataset=ckpt.dataset_fingerprint([("a.png", 10, "a cat"),
                                                                   ("b.png", 12, "a dog")]),
                                 config={"network.rank": 4, "sampling.every_n_steps": 5,
                                         **config})


def test_checkpoints_are_atomic_folders_pruned_to_keep_last(tmp_path: Path) -> None:
    lora = {"x.lora_down.weight": torch.ones(2, 3)}
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, _position(step), lora, {"rng": torch.get_rng_state()},
                             "x = 1\n", keep_last=2)
    (tmp_path / "checkpoints" / ".step-000008.tmp").mkdir()  # an interrupted save
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step-000004", "step-000006"]
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.position.step == 6
    assert torch.equal(loaded.lora["x.lora_down.weight"], torch.ones(2, 3))


def test_resume_differences_name_what_changed() -> None:
    saved = _position(4)
    assert ckpt.resume_differences(saved, _position(4, **{"sampling.every_n_steps": 9})) == []
    changed = _position(4, **{"network.rank": 8})
    changed.dataset = ckpt.dataset_fingerprint([("a.png", 10, "a cat, red"), ("c.png", 3, "x")])
    problems = ckpt.resume_differences(saved, changed)
    assert "network.rank was 4, now 8" in problems
    assert "dataset: 1 image(s) added (c.png)" in problems
    assert "dataset: 1 image(s) removed (b.png)" in problems
    assert "dataset: 1 image(s) changed (a.png)" in problems


def test_event_log_round_trip_with_images_and_a_cut_last_line(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.write(Started(str(tmp_path), 10))
    log.write(Loss(1, 0.5, 1e-4))
    log.write(Sample(step=1, prompt="a cat", seed=3, scale=0.0, png_bytes=b"\x89PNG fake"))
    log.write(Failed("nan", "loss became nan at step 2", "lower the rate"))
    log.close()
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('{"type": "loss", "step": 3, "lo')  # killed mid-write
    events = read_events(tmp_path, load_images=True)
    assert [e.type for e in events] == ["started", "loss", "sample", "failed"]
    assert events[1] == Loss(1, 0.5, 1e-4, time=events[1].time)
    assert events[2].png_bytes == b"\x89PNG fake" and events[2].file.startswith("samples/")
