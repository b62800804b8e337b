"""The comparison grid (trainer/grid.py, trainer/grid_image.py, `lora-train grid`): prompts x
checkpoints x strengths with fixed seeds, cached by what decides each picture, and one PNG
with every label on it and in its text chunk."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import make_shapes_dataset
from test_training import tiny_config
from trainer.cli import main as cli
from trainer.config_io import ConfigError
from trainer.grid import cell_key, checkpoints_in, make_request
from trainer.grid_image import compose
from trainer.loop import train


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run that kept 3 checkpoints (steps 2, 4 and 6)."""
    root = tmp_path_factory.mktemp("grid")
    make_shapes_dataset(root / "shapes", 4)
    config = tiny_config(tiny_model[0], root / "shapes", root / "run",
                         schedule={"max_train_steps": 6}, optimizer={"learning_rate": 3e-2},
                         output={"save_every_n_steps": 2, "keep_last": 3})
    train(config, root / "run")
    return root / "run"


def test_a_picture_is_keyed_by_what_decides_it(run) -> None:
    checkpoints = checkpoints_in(run)
    assert [c.step for c in checkpoints] == [2, 4, 6]
    request = make_request(checkpoints, ["a red circle"], [0.0, 1.0], "ddim", steps=4,
                           guidance=7.0, seed=1)
    first, last = checkpoints[0], checkpoints[-1]
    prompt = request.prompts[0]
    assert cell_key(request, first, prompt, 1.0) != cell_key(request, last, prompt, 1.0)
    assert cell_key(request, first, prompt, 0.0) == cell_key(request, last, prompt, 0.0)
    for changed in (replace(prompt, seed=2), replace(prompt, steps=5), replace(prompt, width=128)):
        assert cell_key(request, first, changed, 1.0) != cell_key(request, first, prompt, 1.0)
    euler = make_request(checkpoints, ["a red circle"], [1.0], "euler", steps=4, guidance=7.0,
                         seed=1)
    assert cell_key(euler, first, prompt, 1.0) != cell_key(request, first, prompt, 1.0)


def test_folders_that_are_not_runs_and_mixed_bases_are_refused(run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        checkpoints_in(tmp_path)
    [one] = checkpoints_in(run / "checkpoints" / "step-000002")
    other = one.__class__(one.folder, one.step, one.config.model_copy(update={
        "model": one.config.model.model_copy(update={"path": tmp_path / "another"})}),
        one.lora_hash)
    with pytest.raises(ConfigError, match="runs of different base models"):
        make_request([one, other], ["a cat"], [1.0], "ddim", steps=4, guidance=7.0, seed=1)
    assert make_request([one, other], ["a cat"], [1.0], "ddim", steps=4, guidance=7.0, seed=1,
                        model=one.config.model.path).model == one.config.model.path


def test_the_sheet_has_a_label_for_every_row_and_column(tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    paths = []
    for row in range(2):
        paths.append([])
        for column, colour in enumerate(colours):
            paths[-1].append(tmp_path / f"{row}-{column}.png")
            Image.new("RGB", (64, 64), colour).save(paths[-1][-1])
    sheet = compose(paths, ["run step 2: a cat", "run step 4: a cat"],
                    ["strength 0", "strength 0.5", "strength 1"], "DDIM, 4 steps")
    pixels = np.asarray(sheet)
    assert sheet.width >= 160 + 3 * 64 and sheet.height > 2 * 64
    assert (pixels[:20, 160:] < 100).any()  # the column labels are drawn above the pictures
    assert (pixels[24:60, :150] < 100).any()  # and a row label at the left of row 1
    assert (pixels[-20:, :150] < 100).any()  # the settings at the foot


@pytest.mark.slow
def test_three_checkpoints_two_prompts_three_strengths_then_the_cache(run, tmp_path: Path,
                                                                       capsys, monkeypatch) -> None:
    out, cache = tmp_path / "grid.png", tmp_path / "cache"
    args = ["grid", str(run), "--prompt", "a red circle", "--prompt", "a blue square --d 7",
            "--strength", "0", "0.5", "1", "--steps", "3", "--out", str(out), "--cache",
            str(cache), "--json"]
    assert cli(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # strength 0 is the base model: one picture per prompt, whatever the checkpoint
    assert (result["rendered"], result["cached"]) == (2 * (1 + 3 * 2), 2 * 2)
    cells = result["cells"]
    assert [len(cells), len(cells[0]), len(cells[0][0])] == [2, 3, 3]
    base = [Image.open(row[0]).tobytes() for row in cells[0]]
    assert base[0] == base[1] == base[2]
    full = [Image.open(row[2]).tobytes() for row in cells[0]]
    assert len(set(full)) == 3  # three checkpoints, three LoRAs, three pictures
    labels = json.loads(Image.open(out).text["lora_studio_grid"])
    assert labels["columns"] == ["strength 0", "strength 0.5", "strength 1"]
    assert labels["rows"] == [f"run step {s}: {p}" for p in ("a red circle", "a blue square")
                              for s in (2, 4, 6)]
    assert "DDIM, 3 steps, guidance 7, seed 1234, 64x64" in labels["settings"]

    import trainer.models

    def no_model(*args, **kwargs):
        raise AssertionError("a cached grid must not load the model")

    monkeypatch.setattr(trainer.models, "load_base_model", no_model)
    again = tmp_path / "again.png"
    assert cli(args[:-4] + [str(again), "--cache", str(cache), "--json"]) == 0
    reopened = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (reopened["rendered"], reopened["cached"]) == (0, 18)
    assert Image.open(again).tobytes() == Image.open(out).tobytes()
