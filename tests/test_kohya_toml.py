"""kohya dataset TOML -> subsets and settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from trainer.config import DatasetConfig, DatasetFolder, TrainConfig
from trainer.config_io import ConfigError
from trainer.data import DatasetError, load_kohya_dataset, scan_dataset


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def images(folder: Path, count: int, size=(96, 96)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (i, 0, 0)).save(folder / f"{i}.png")


def test_levels_override_each_other(tmp_path):
    toml = write(tmp_path / "cfg" / "dataset.toml", """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".caption"
flip_aug = true
num_repeats = 2

[[datasets]]
resolution = [768, 512]
batch_size = 4
enable_bucket = false
keep_tokens = 2
caption_dropout_rate = 0.1

  [[datasets.subsets]]
  image_dir = "imgs/a"
  num_repeats = 5
  class_tokens = "sks dog"
  keep_tokens = 3

  [[datasets.subsets]]
  image_dir = "imgs/b"
  is_reg = true
  caption_tag_dropout_rate = 0.25
  flip_aug = false
  keep_tokens_separator = "|||"
""")
    images(tmp_path / "cfg" / "imgs" / "a", 1)
    images(tmp_path / "cfg" / "imgs" / "b", 1)
    resolved = load_kohya_dataset(toml, DatasetConfig(caption_separator=";", trigger_word="sks"))
    a, b = resolved.subsets
    assert a.image_dir == tmp_path / "cfg" / "imgs" / "a"  # relative to the TOML file
    assert (a.num_repeats, a.keep_tokens, a.class_tokens, a.is_reg) == (5, 3, "sks dog", False)
    assert (b.num_repeats, b.keep_tokens, b.class_tokens, b.is_reg) == (2, 2, "", True)
    assert a.shuffle_caption and b.shuffle_caption  # from [general]
    assert a.caption_extension == b.caption_extension == ".caption"
    assert (a.flip_aug, b.flip_aug) == (True, False)
    assert a.caption_dropout_rate == b.caption_dropout_rate == 0.1  # from [[datasets]]
    assert (a.caption_tag_dropout_rate, b.caption_tag_dropout_rate) == (0.0, 0.25)
    assert (a.keep_tokens_separator, b.keep_tokens_separator) == ("", "|||")
    assert a.caption_separator == ";" and a.trigger_word == "sks"  # config defaults fill in
    s = resolved.settings
    assert (s.resolution, s.batch_size, s.enable_bucket) == ((768, 512), 4, False)
    assert (s.min_bucket_reso, s.max_bucket_reso) == (256, 1024)  # config defaults


def test_scan_reads_the_toml_instead_of_the_folders(tmp_path):
    images(tmp_path / "a", 3)
    toml = write(tmp_path / "d.toml", """
[general]
resolution = 256
class_tokens = "toy"
[[datasets]]
batch_size = 2
[[datasets.subsets]]
image_dir = "a"
num_repeats = 2
""")
    config = TrainConfig(dataset=DatasetConfig(kohya_config=toml,
                                               folders=[DatasetFolder(path=tmp_path)]))
    report = scan_dataset(config)
    assert len(report.items) == 3 and report.settings.batch_size == 2
    assert report.items[0].bucket == (256, 256)
    assert report.steps_per_epoch() == 3
    assert any("dataset.folders ignored" in w.reason for w in report.warnings)


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    toml = write(tmp_path / "d.toml", """
[[datasets]]
[[datasets.subsets]]
image_dir = "."
num_repeat = 3
""")
    with pytest.raises(ConfigError) as error:
        load_kohya_dataset(toml, DatasetConfig())
    message = str(error.value)
    assert "'num_repeat'" in message and "did you mean 'num_repeats'" in message
    assert str(toml) in message and "datasets[0].subsets[0]" in message

    write(toml, "[general]\nshufle_caption = true\n[[datasets]]\n")
    with pytest.raises(ConfigError, match="did you mean 'shuffle_caption'"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[generall]\n")
    with pytest.raises(ConfigError, match="did you mean 'general'"):
        load_kohya_dataset(toml, DatasetConfig())


def test_keys_in_the_wrong_place_and_bad_values(tmp_path):
    toml = tmp_path / "d.toml"
    write(toml, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '.'\nresolution = 512\n")
    with pytest.raises(ConfigError, match="dataset setting; put it in"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[general]\nimage_dir = '.'\n[[datasets]]\n")
    with pytest.raises(ConfigError, match="belongs in"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '.'\nnum_repeats = 'ten'\n")
    with pytest.raises(ConfigError, match="num_repeats = 'ten': must be a whole number"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[[datasets]]\nresolution = [512, 500]\n")
    with pytest.raises(ConfigError, match="resolution"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '.'\nmetadata_file = 'm.json'\n")
    with pytest.raises(ConfigError, match="fine-tuning"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 1\n")
    with pytest.raises(ConfigError, match="no image_dir"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'nowhere'\n")
    with pytest.raises(DatasetError, match="nowhere"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "[general]\n")
    with pytest.raises(DatasetError, match="no \\[\\[datasets\\]\\]"):
        load_kohya_dataset(toml, DatasetConfig())
    write(toml, "this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_kohya_dataset(toml, DatasetConfig())


def test_datasets_with_different_resolution_or_batch_size_are_refused(tmp_path):
    images(tmp_path / "a", 1)
    toml = write(tmp_path / "d.toml", """
[general]
batch_size = 2
[[datasets]]
resolution = 512
[[datasets.subsets]]
image_dir = "a"
[[datasets]]
resolution = 768
[[datasets.subsets]]
image_dir = "a"
""")
    with pytest.raises(ConfigError) as error:
        load_kohya_dataset(toml, DatasetConfig())
    assert "different resolution" in str(error.value) and "768" in str(error.value)
    write(toml, """
[[datasets]]
resolution = 512
batch_size = 1
[[datasets.subsets]]
image_dir = "a"
[[datasets]]
resolution = 512
batch_size = 2
""")
    with pytest.raises(ConfigError, match="different batch_size"):
        load_kohya_dataset(toml, DatasetConfig())


def test_ignored_kohya_keys_become_notes_and_names_stay_unique(tmp_path):
    images(tmp_path / "x" / "img", 1)
    images(tmp_path / "y" / "img", 1)
    toml = write(tmp_path / "d.toml", """
[general]
color_aug = true
[[datasets]]
[[datasets.subsets]]
image_dir = "x/img"
[[datasets.subsets]]
image_dir = "y/img"
caption_extension = "txt"
""")
    resolved = load_kohya_dataset(toml, DatasetConfig())
    assert [s.name for s in resolved.subsets] == ["img", "img (2)"]
    assert resolved.subsets[1].caption_extension == ".txt"
    assert any("color_aug" in text for _, text in resolved.notes)


def test_validation_split_and_seed_are_read_and_hold_images_out(tmp_path):
    images(tmp_path / "a", 8)
    toml = write(tmp_path / "d.toml", """
[general]
resolution = 256
class_tokens = "toy"
validation_split = 0.25
[[datasets]]
validation_seed = 3
[[datasets.subsets]]
image_dir = "a"
""")
    config = TrainConfig(dataset=DatasetConfig(kohya_config=toml))
    report = scan_dataset(config)
    assert (report.settings.validation_split, report.settings.validation_seed) == (0.25, 3)
    assert len(report.validation) == 2 and len(report.items) == 6
    assert not {i.path for i in report.validation} & {i.path for i in report.items}
    other = write(tmp_path / "e.toml", toml.read_text().replace("validation_seed = 3",
                                                                "validation_seed = 4"))
    moved = scan_dataset(TrainConfig(dataset=DatasetConfig(kohya_config=other)))
    assert {i.path for i in moved.validation} != {i.path for i in report.validation}
    bad = write(tmp_path / "f.toml", toml.read_text().replace("0.25", "0.9"))
    with pytest.raises(ConfigError, match=r"validation_split = 0.9: must be a share from 0 to 0.5"):
        load_kohya_dataset(bad, DatasetConfig())
