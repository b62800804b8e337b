"""The validation loss: which images are held out (trainer/data/holdout.py), that they never
train, that the number is fixed for a fixed model, that it does not disturb the training (resume
stays bit-identical) and that an over-long run shows over-fitting on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain import make_pretrained_tiny_model
from synthetic import make_shapes_dataset
from test_training import losses, tiny_config, train_whole_and_resumed
from trainer.data import scan_dataset
from trainer.data.holdout import held_out_count, split_items
from trainer.events import read_events
from trainer.loop import train
from trainer.validation import spread_timesteps


def validations(run: Path) -> list[tuple[int, float]]:
    return [(e.step, e.loss) for e in read_events(run) if e.type == "validation"]


@pytest.mark.parametrize("images, split, held", [(10, 0.0, 0), (10, 0.1, 1), (10, 0.25, 2),
                                                 (5, 0.01, 1), (2, 0.5, 1), (1, 0.5, 0),
                                                 (40, 0.5, 20)])
def test_held_out_counts(images: int, split: float, held: int) -> None:
    assert held_out_count(images, split) == held  # >= 1 when asked, never a whole folder


class _Item:
    def __init__(self, folder: str, name: str, is_reg: bool = False) -> None:
        self.subset, self.path, self.is_reg = folder, Path(folder) / name, is_reg


def test_the_split_is_per_folder_fixed_by_its_seed_and_never_takes_regularisation() -> None:
    items = ([_Item("a", f"{i:02d}.png") for i in range(10)] +
             [_Item("b", f"{i:02d}.png") for i in range(4)] +
             [_Item("reg", f"{i:02d}.png", is_reg=True) for i in range(6)])
    split = split_items(items, 0.25, seed=7)
    held = [items[i] for i in split.held_out]
    assert [item.subset for item in held].count("a") == 2
    assert [item.subset for item in held].count("b") == 1
    assert not any(item.is_reg for item in held)
    assert sorted(split.train + split.held_out) == list(range(len(items)))
    # order-free: the same images are held out when the items come in reverse
    again = split_items(list(reversed(items)), 0.25, seed=7)
    assert sorted(str(items[::-1][i].path) for i in again.held_out) == sorted(
        str(item.path) for item in held)
    others = {str(items[i].path) for i in split_items(items, 0.25, seed=8).held_out}
    assert others != {str(item.path) for item in held}  # another seed, other images
    with pytest.raises(ValueError, match="0.6"):
        split_items(items, 0.6, seed=7)


def test_timesteps_are_spread_over_the_whole_schedule() -> None:
    steps = spread_timesteps(4, 1000, seed=3)
    assert sorted(steps) == [125, 375, 625, 875]
    assert steps == spread_timesteps(4, 1000, seed=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("validation") / "shapes"
    make_shapes_dataset(folder, 9)
    return folder


def test_held_out_images_never_reach_a_training_batch(tiny_model, shapes, tmp_path: Path,
                                                      monkeypatch) -> None:
    import trainer.loop as loop

    config = tiny_config(tiny_model[0], shapes, tmp_path / "run", schedule={"max_train_steps": 12},
                         dataset={"validation_split": 0.34, "batch_size": 2})
    held = {item.path for item in scan_dataset(config).validation}
    assert len(held) == 3
    trained: set[Path] = set()
    real_plan = loop.sample_plan

    def recording_plan(item, *args):
        trained.add(item.path)
        return real_plan(item, *args)

    monkeypatch.setattr(loop, "sample_plan", recording_plan)
    train(config, tmp_path / "run")
    assert trained and not trained & held  # 12 steps x 2: every training image, none held out
    assert len(trained) == 6
    scored = validations(tmp_path / "run")
    assert [step for step, _ in scored] == [0, 12]  # the start and the last checkpoint
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-000012" / "metadata.json")
                      .read_text())
    assert float(meta["lora_studio_validation_loss"]) == pytest.approx(scored[-1][1], rel=1e-5)


def test_the_same_checkpoint_scores_the_same_and_resume_stays_bit_identical(
        tiny_model, shapes, tmp_path: Path) -> None:
    settings = dict(schedule={"max_train_steps": 10, "seed": 5}, network={"dropout": 0.1},
                    dataset={"validation_split": 0.34, "validation_every_n_steps": 3,
                             "flip_aug": True},
                    output={"save_precision": "fp32", "save_every_n_steps": 5})
    whole, resumed = train_whole_and_resumed(tiny_model[0], shapes, tmp_path, 5, **settings)
    a, b = load_file(whole), load_file(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "part")[5:] == losses(tmp_path / "whole")[5:]
    whole_scores, part_scores = dict(validations(tmp_path / "whole")), validations(tmp_path / "part")
    # step 5 was scored before the stop and again on resuming: the same number, twice
    assert [loss for step, loss in part_scores if step == 5] == [whole_scores[5]] * 2
    assert dict(part_scores) == whole_scores
    assert sorted(whole_scores) == [0, 3, 5, 6, 9, 10]
    assert len(set(whole_scores.values())) == len(whole_scores)  # it moves with the LoRA


@pytest.mark.slow
def test_an_over_long_run_shows_over_fitting_on_the_validation_loss(tmp_path: Path,
                                                                     one_thread) -> None:
    """A (briefly pretrained) tiny denoiser, 6 images with 2 held out, rank 16 at 6e-3 for 400
    steps: the held-out loss falls below the start, then climbs well above it as the LoRA
    learns the training images themselves. One thread for the pretraining and the run: the same numbers whatever
    ran before in this process (another thread count pretrains another model)."""
    model = tmp_path / "pretrained"
    make_pretrained_tiny_model(model, steps=200)
    data = tmp_path / "shapes"
    make_shapes_dataset(data, 6)
    config = tiny_config(model, data, tmp_path / "run", schedule={"max_train_steps": 400},
                         optimizer={"learning_rate": 6e-3}, network={"rank": 16, "alpha": 16.0},
                         dataset={"validation_split": 0.34, "validation_every_n_steps": 25},
                         precision={"threads": 1})
    train(config, tmp_path / "run")
    scores = validations(tmp_path / "run")
    start, best = scores[0][1], min(loss for _, loss in scores)
    best_step = next(step for step, loss in scores if loss == best)
    late = [loss for step, loss in scores if step >= 325]
    assert best < start and 25 <= best_step <= 200  # it learns what generalises first
    assert sum(late) / len(late) > start  # then the later checkpoints are worse than none
    assert max(late) > best * 1.1  # by far more than the scores move between neighbours


def test_a_validation_folder_is_held_out_whole(tmp_path: Path) -> None:
    from trainer.config import DatasetConfig, DatasetFolder, TrainConfig
    from trainer.data import format_report

    make_shapes_dataset(tmp_path / "train", 4)
    make_shapes_dataset(tmp_path / "check", 3)
    config = TrainConfig(dataset=DatasetConfig(folders=[
        DatasetFolder(path=tmp_path / "train"),
        DatasetFolder(path=tmp_path / "check", validation=True)], resolution=64,
        min_bucket_reso=64, max_bucket_reso=128))
    report = scan_dataset(config)
    assert sorted(i.path.name for i in report.validation) == ["img00.png", "img01.png",
                                                             "img02.png"]
    assert all(i.path.parent.name == "check" for i in report.validation)
    assert len(report.items) == 4 and all(i.path.parent.name == "train" for i in report.items)
    assert "Held out for the validation loss: 3 images (all of check)" in format_report(report)
    with pytest.raises(ValueError, match="either regularisation images .* or validation"):
        DatasetFolder(path=tmp_path / "check", validation=True, is_reg=True)
