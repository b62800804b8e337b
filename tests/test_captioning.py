"""Captions from a model on disk (trainer/captioning, `lora-train caption`): the WD14 tagger's
tags worked out by hand from the tiny tagger's formula (tests/tiny_captioners.py), a random
BLIP checked against transformers' own generate, the four modes, undo byte for byte, a cancel
and a kill halfway, and the messages for models that can't be used."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tiny_captioners import make_blip, make_git, make_tagger
from trainer.captioning import CaptionModelError, open_captioner
from trainer.captioning.caption_run import combined
from trainer.captioning.wd14_tagger import TaggerSettings, Wd14Tagger
from trainer.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
# By hand from the tagger's logits (see tests/tiny_captioners.py): p = sigmoid(logit).
# red: red_hair 1.0, ^_^ 0.953, 1girl 0.5 (blue_sky and the character 0, the rating left out)
RED_TAGS = "red hair, ^_^, 1girl"
# green: hatsune_miku (character) 1.0, ^_^, then 1girl and blue_sky tied at 0.5 (by name)
GREEN_TAGS = "hatsune miku, ^_^, 1girl, blue sky"


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    return make_tagger(tmp_path_factory.mktemp("wd14"))


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 48)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tagger_keeps_tags_over_thresholds_most_confident_first(tagger: Path) -> None:
    tags = Wd14Tagger(tagger)
    assert tags.caption(Image.new("RGB", (40, 40), RED)) == RED_TAGS
    assert tags.caption(Image.new("RGB", (40, 40), GREEN)) == GREEN_TAGS
    strict = Wd14Tagger(tagger, settings=TaggerSettings(general_threshold=0.6,
                                                        exclude=("red_hair",)))
    assert strict.caption(Image.new("RGB", (40, 40), RED)) == "^_^"  # 1girl under 0.6
    # a wide image is centred on a white square: half its pixels are (255, 255, 255), so
    # red_hair's logit (R - G) / 8 is ((140 + 255) / 2 - (128 + 255) / 2) / 8 = 0.75, not 1.5
    wide = tags.scores(Image.new("RGB", (40, 20), (140, 128, 128)))
    assert wide[0] == pytest.approx(1 / (1 + math.exp(-0.75)), abs=0.01)
    with pytest.raises(CaptionModelError, match="general_threshold must be between 0 and 1"):
        TaggerSettings(general_threshold=1.5)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = tmp_path / "5_chars"
    data.mkdir()
    solid(data / "a_red.png", RED)
    (data / "a_red.txt").write_bytes(b"\xef\xbb\xbfold, red hair")  # a BOM, kept by undo
    solid(data / "b_green.png", GREEN)  # no caption file
    solid(data / "c_blue.png", BLUE)
    (data / "c_blue.txt").write_text("  \n")  # empty: counts as missing
    return data


@pytest.mark.parametrize("mode, red, green", [
    ("missing", "old, red hair", GREEN_TAGS),  # the captioned image is left alone
    ("append", "old, red hair, ^_^, 1girl", GREEN_TAGS),  # red hair is there already
    ("prepend", "^_^, 1girl, old, red hair", GREEN_TAGS),
    ("replace", RED_TAGS, GREEN_TAGS),
])
def test_each_mode_writes_then_undo_restores_every_byte(folder: Path, tagger: Path, mode: str,
                                                        red: str, green: str, capsys) -> None:
    before = snapshot(folder)
    assert cli(["caption", str(folder), "--model", str(tagger), "--mode", mode, "--dry-run"]) == 0
    assert snapshot(folder) == before  # a dry run is a preview
    capsys.readouterr()
    assert cli(["caption", str(folder), "--model", str(tagger), "--mode", mode, "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "loading" and events[-1]["event"] == "finished"
    assert (folder / "a_red.txt").read_text(encoding="utf-8-sig") == red
    assert (folder / "b_green.txt").read_text() == green
    assert (folder / "c_blue.txt").read_text() == "blue sky, ^_^, 1girl, red hair"
    captioned = [e for e in events if e["event"] == "caption"]
    assert len(captioned) == (2 if mode == "missing" else 3)  # the model skips kept captions
    assert events[-1]["changed"] == sum(e["changed"] for e in captioned)
    assert cli(["caption", str(folder), "--undo"]) == 0
    assert snapshot(folder) == before
    assert cli(["captions", str(folder), "--undo"]) == 2  # one undo: nothing left


def test_modes_combine_captions() -> None:
    assert combined("append", "a, b", "b, c") == "a, b, c"
    assert combined("prepend", "a, b", "b, c") == "c, a, b"
    assert combined("append", "a, b", "a") is None  # nothing new: untouched
    assert combined("missing", "a", "c") is None and combined("missing", None, "c") == "c"
    assert combined("append", "a|b", "c|a", "|") == "a|b| c"  # the old text kept as written
    with pytest.raises(CaptionModelError, match="mode must be one of missing, append"):
        combined("merge", "a", "b")


def test_a_bulk_edit_and_a_captioner_share_one_undo(folder: Path, tagger: Path) -> None:
    before = snapshot(folder)
    assert cli(["caption", str(folder), "--model", str(tagger)]) == 0
    after_model = snapshot(folder)
    assert cli(["captions", str(folder), "--add-tag", "zz"]) == 0
    assert cli(["caption", str(folder), "--undo"]) == 0  # undoes the bulk edit (the last)
    assert {k: v for k, v in snapshot(folder).items() if not k.startswith(".")} == \
        {k: v for k, v in after_model.items() if not k.startswith(".")}
    assert snapshot(folder) != before


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_an_image_to_text_folder_captions_as_transformers_generates(tmp_path: Path,
                                                                     kind: str) -> None:
    import torch
    import transformers

    build, processor_class, model_class = {
        "blip": (make_blip, transformers.BlipProcessor, transformers.BlipForConditionalGeneration),
        "git": (make_git, transformers.GitProcessor, transformers.GitForCausalLM)}[kind]
    model_dir = build(tmp_path / kind)
    data = tmp_path / "images"
    data.mkdir()
    solid(data / "one.png", RED, (40, 30))
    solid(data / "two.png", GREEN, (30, 40))
    assert cli(["caption", str(data), "--model", str(model_dir), "--max-new-tokens", "6"]) == 0
    # the reference: the model's own class and processor, as transformers' docs use them
    processor = processor_class.from_pretrained(model_dir, local_files_only=True)
    model = model_class.from_pretrained(model_dir, local_files_only=True).eval()
    for name in ("one", "two"):
        with Image.open(data / f"{name}.png") as image:
            inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=6,
                                 do_sample=False, num_beams=1)
        expected = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        assert expected  # a random model still says some of its 16 words
        assert (data / f"{name}.txt").read_text() == expected


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("setup, message", [
    (lambda p: (make_tagger(p), (p / "model.onnx").write_bytes(b"\x08\x07garbage" * 50)),
     r"model.onnx is not a usable ONNX model \(\w+: "),
    (lambda p: (make_tagger(p), (p / "selected_tags.csv").unlink()),
     r"selected_tags.csv is missing: a WD14 tagger needs its selected_tags.csv"),
    (lambda p: (make_tagger(p), (p / "selected_tags.csv").write_text("tag_id,name\n1,a\n")),
     r"selected_tags.csv is not a WD14 tag list"),
    (lambda p: (make_tagger(p), (p / "selected_tags.csv").write_text(
        "tag_id,name,category,count\n1,a,0,5\n")),
     r"model.onnx scores 6 tags but its tag list has 1: they are from different taggers"),
    (lambda p: write_json(p / "config.json", {"model_type": "blip"}),
     r"has no weights \(model.safetensors or pytorch_model.bin\): loading it would need a "
     r"download, and LoRA Studio never downloads"),
    (lambda p: write_json(p / "config.json", {"model_type": "florence2_remote",
                                              "auto_map": {"AutoModel": "x.Florence"}}),
     r"config.json names its own model code \(auto_map: trust_remote_code\), which would be "
     r"fetched from the hub"),
    (lambda p: write_json(p / "config.json", {"model_type": "bert"}),
     r"config.json is a 'bert' model, not an image-to-text one"),
    (lambda p: (p / "config.json").write_text("{broken"), r"config.json could not be read as JSON"),
    (lambda p: (p / "notes.txt").write_text("x"), r"is neither a WD14 tagger"),
])
def test_a_model_that_cant_be_used_is_named_with_the_reason(tmp_path: Path, folder: Path,
                                                             setup, message: str,
                                                             capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    setup(model)
    before = snapshot(folder)
    target = model / "model.onnx" if (model / "model.onnx").exists() else model
    assert cli(["caption", str(folder), "--model", str(target)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Traceback" not in error
    assert re.search(message, error), error
    assert snapshot(folder) == before


def test_a_transformers_folder_missing_its_processor_files_is_refused(tmp_path: Path) -> None:
    blip = make_blip(tmp_path / "blip")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "processor_config.json"):
        (blip / name).unlink(missing_ok=True)
    with pytest.raises(CaptionModelError, match=r"could not be loaded from disk .*never downloads"):
        open_captioner(blip)


def test_bad_paths_and_arguments(tmp_path: Path, folder: Path, tagger: Path, capsys) -> None:
    assert cli(["caption", str(folder), "--model", str(tmp_path / "nowhere.onnx")]) == 2
    assert "nowhere.onnx does not exist" in capsys.readouterr().err
    assert cli(["caption", str(folder / "a_red.png"), "--model", str(tagger)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli(["caption", str(folder)]) == 2
    assert "--model is needed" in capsys.readouterr().err
    assert cli(["caption", str(folder), "--model", str(folder / "a_red.png")]) == 2
    assert "is not an .onnx file" in capsys.readouterr().err


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_cancel_halfway_leaves_each_caption_old_or_new(tmp_path: Path, how: int) -> None:
    slow = make_tagger(tmp_path / "slow", side=256, slow_convs=64)  # ~0.2 s an image here
    data = tmp_path / "images"
    data.mkdir()
    for index in range(10):
        solid(data / f"img{index:02d}.png", RED if index % 2 else GREEN)
        (data / f"img{index:02d}.txt").write_text(f"old caption {index}")
    before = snapshot(data)
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "caption", str(data), "--model", str(slow),
         "--mode", "replace", "--json"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert child.stdout is not None
    for line in child.stdout:  # wait until the first caption is written, then stop it
        if json.loads(line)["event"] == "caption":
            child.send_signal(how)
            break
    rest = child.stdout.read()
    code = child.wait(timeout=60)
    new = {f"img{i:02d}.txt": (RED_TAGS if i % 2 else GREEN_TAGS).encode() for i in range(10)}
    now = snapshot(data)
    changed = [name for name in new if now[name] == new[name]]
    assert all(now[name] in (before[name], new[name]) for name in new)  # never half-written
    assert 1 <= len(changed) < 10
    if how == signal.SIGTERM:
        assert code == 130
        finished = json.loads(rest.splitlines()[-1])
        assert finished["stopped"] and finished["changed"] == len(changed) < finished["total"]
    assert cli(["caption", str(data), "--undo"]) == 0
    assert snapshot(data) == before  # a killed write's temp file is swept away too


class WritesWhileRunning:
    """A captioner during whose first image the user saves b_green.txt (the window's caption
    box, another editor): the run must work on what is on disk when it writes."""

    def __init__(self, tagger: Path, folder: Path) -> None:
        self.tags, self.folder, self.calls = Wd14Tagger(tagger), folder, 0

    def caption(self, image: Image.Image) -> str:
        self.calls += 1
        if self.calls == 1:
            (self.folder / "b_green.txt").write_text("my own words")
        return self.tags.caption(image)


@pytest.mark.parametrize("mode, kept", [("missing", "my own words"),
                                        ("append", f"my own words, {GREEN_TAGS}")])
def test_a_caption_written_during_the_run_is_worked_on_and_undo_brings_it_back(
        folder: Path, tagger: Path, mode: str, kept: str) -> None:
    from trainer.caption_journal import undo
    from trainer.captioning.caption_run import caption_folder

    caption_folder(folder, WritesWhileRunning(tagger, folder), mode)
    assert (folder / "b_green.txt").read_text() == kept
    undo(folder)
    assert (folder / "b_green.txt").read_text() == "my own words"  # not deleted: it existed


def test_a_killed_writes_temp_file_is_swept_by_the_next_run(folder: Path, tagger: Path) -> None:
    from trainer.captioning.caption_run import caption_folder

    left = folder / ".b_green.txt.a1b2c3d4.tmp"
    left.write_text("half")
    other = folder / ".notes.txt.a1b2c3d4.tmp"  # not a caption's: left alone
    other.write_text("x")
    caption_folder(folder, Wd14Tagger(tagger), "missing")
    assert not left.exists() and other.exists()
