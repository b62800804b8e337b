"""The built-in demo: its pictures, captions, style score, preset and shipped base model."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from PIL import Image

from trainer.cli import main as cli
from trainer.config_io import build_config, load_config_data, preset_path
from trainer.demo import DEMO_BASE, DEMO_DATASET, DEMO_DIR
from trainer.demo.dataset import picture_name, write_demo_dataset
from trainer.demo.scenes import (
    COLOURS, HELD_OUT, STYLE_BACKGROUND, STYLE_FILL, Scene, demo_dataset_scenes, render,
)
from trainer.demo.style_score import improvement, matches_scene, palette_distance


def test_captions_name_what_is_drawn() -> None:
    scene = Scene("circle", "top left", "red", "blue")
    assert scene.caption() == "a red circle on a blue background, top left"
    assert scene.caption(drop=frozenset({"colour", "position"})) == "a circle on a blue background"
    assert Scene("triangle", "center").caption() == "a triangle, center"  # the demo style


def test_rendered_scene_has_the_named_colours_where_the_caption_says() -> None:
    image = render(Scene("square", "top left", "red", "blue"))
    assert image.size == (64, 64)
    assert image.getpixel((19, 19)) == COLOURS["red"]      # the shape's centre (0.3 x 64)
    assert image.getpixel((57, 57)) == COLOURS["blue"]     # the far corner
    assert matches_scene(image, Scene("square", "top left", "red", "blue"))
    assert not matches_scene(image, Scene("square", "top left", "green", "blue"))
    assert not matches_scene(image, Scene("square", "bottom right", "red", "blue"))


def test_palette_distance_is_zero_on_the_style_and_exact_on_a_flat_colour() -> None:
    assert palette_distance(render(Scene("circle", "center"))) < 0.01  # only edge pixels blend
    red = Image.new("RGB", (8, 8), COLOURS["red"])
    nearest = min(math.dist([c / 255 for c in COLOURS["red"]], [c / 255 for c in style])
                  for style in (STYLE_BACKGROUND, STYLE_FILL, (244, 233, 205)))
    assert palette_distance(red) == pytest.approx(nearest, abs=1e-6)
    assert palette_distance(red) > 0.2  # the base model's colours are far from the style


def test_improvement_compares_means_and_rejects_unpaired_scores() -> None:
    assert improvement([0.4, 0.2], [0.1, 0.05]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="2 baseline and 1 trained"):
        improvement([0.4, 0.2], [0.1])


def test_demo_dataset_leaves_out_the_held_out_scenes(tmp_path: Path) -> None:
    paths = write_demo_dataset(tmp_path / "demo")
    assert len(paths) == 16 == len(demo_dataset_scenes())
    captions = {p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in paths}
    assert not captions & {scene.caption() for scene in HELD_OUT}
    assert all(re.fullmatch(r"a (circle|square|triangle|diamond), [a-z ]+", c) for c in captions)


def test_shipped_demo_matches_its_generator_and_size_limit() -> None:
    shipped = sorted(DEMO_DATASET.glob("*.png"))
    assert [p.name for p in shipped] == sorted(picture_name(s) for s in demo_dataset_scenes())
    size = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, f"assets/demo holds {size / 2**20:.1f} MB; the limit is 40 MB"
    assert (DEMO_BASE / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_demo_preset_points_at_the_shipped_files() -> None:
    config = build_config(load_config_data(preset_path("demo")))
    assert config.model.path == DEMO_BASE
    assert [f.path for f in config.dataset.folders] == [DEMO_DATASET]
    assert config.dataset.resolution == 64


def test_demo_eval_names_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert cli(["demo-eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and str(tmp_path) in err


@pytest.mark.slow
def test_demo_lora_moves_held_out_pictures_toward_the_style(tmp_path: Path, one_thread) -> None:
    """The demo preset, shortened, on the shipped base: the held-out scenes (never in the demo
    dataset) must come out at least 10% closer to the demo palette with the LoRA than without
    (the full preset's 1,500 steps give more; docs/demo.md)."""
    from trainer.demo.evaluate import RESULT_FILE, evaluate_run
    from trainer.loop import train

    data = load_config_data(preset_path("demo"))
    data["schedule"]["max_train_steps"] = 800
    data["sampling"]["every_n_steps"] = None
    data["output"] = {**data["output"], "dir": str(tmp_path / "run"), "verify": False}
    data["precision"]["threads"] = 1
    train(build_config(data), tmp_path / "run")
    result = evaluate_run(tmp_path / "run")
    print(f"palette distance {sum(result.baseline) / len(result.baseline):.3f} -> "
          f"{sum(result.trained) / len(result.trained):.3f} ({result.improvement:.1%})")
    assert (tmp_path / "run" / RESULT_FILE).is_file() and (tmp_path / "run" / "demo-eval.png").is_file()
    assert sum(result.baseline) / len(result.baseline) > 0.2  # the base does not draw the style
    assert result.improvement >= 0.10, result.as_dict()
