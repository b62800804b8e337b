"""#15: for every subcommand, bad user input ends with exit 2 and one `error:` line (plus its
`hint:`), never a traceback and never "this is a bug in LoRA Studio". Each subcommand is run
on the same set of malformed inputs in every place that takes a path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthetic import make_shapes_dataset
from trainer.cli import main as cli

KINDS = ("missing", "folder", "random bytes", "empty", "not UTF-8", "truncated header")


def _malformed(root: Path, kind: str, suffix: str) -> Path:
    path = root / f"{kind.replace(' ', '_')}{suffix}"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "random bytes":
        path.write_bytes(os.urandom(3000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not UTF-8":
        path.write_bytes(b"rank = \xff\xfe\xfa\n" * 10)
    elif kind == "truncated header":
        path.write_bytes((400).to_bytes(8, "little") + b'{"a": {"dtype": "F16", "sha')
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad-input") / "images"
    make_shapes_dataset(folder, 2)
    return folder


def _commands(bad: Path, model: Path, images: Path, root: Path) -> dict[str, list[str]]:
    job = ["--preset", "tiny-cpu", "--data", str(images)]
    return {
        "train --model": ["train", *job, "--model", str(bad), "--out", str(root / "r1")],
        "train --config": ["train", *job, "--model", str(model), "--config", str(bad),
                           "--out", str(root / "r2")],
        "train --init-from": ["train", *job, "--model", str(model), "--init-from", str(bad),
                              "--out", str(root / "r3"), "--steps", "1"],
        "train --resume": ["train", "--resume", str(bad)],
        "validate --dataset-config": ["validate", "--preset", "tiny-cpu", "--model", str(model),
                                      "--dataset-config", str(bad)],
        "config show --config": ["config", "show", "--config", str(bad)],
        "runs show": ["runs", "show", str(bad)],
        "export": ["export", str(bad), "--out", str(root / "out.safetensors")],
        "inspect": ["inspect", str(bad)],
        "verify": ["verify", str(bad), "--base", str(model)],
        "verify --base": ["verify", str(bad), "--base", str(bad)],
        "demo-eval": ["demo-eval", str(bad)],
    }


COMMANDS = ["train --model", "train --config", "train --init-from", "train --resume",
            "validate --dataset-config", "config show --config", "runs show", "export",
            "inspect", "verify", "verify --base", "demo-eval"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_input_is_one_line_and_exit_2(tiny_model, images, tmp_path: Path, capsys,
                                          command: str, kind: str) -> None:
    suffix = ".toml" if "config" in command else ".safetensors"
    if kind == "empty" and suffix == ".toml":
        pytest.skip("an empty TOML file is a valid config that sets nothing")
    bad = _malformed(tmp_path, kind, suffix)
    args = _commands(bad, tiny_model[0], images, tmp_path)[command]
    code = cli(args)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (command, kind, out, err)
    assert len(errors) == 1, (command, kind, err)
    assert "Traceback" not in err and "bug in LoRA Studio" not in err, (command, kind, err)
    assert bad.name in errors[0] or str(bad) in errors[0], (command, kind, errors[0])


@pytest.mark.parametrize("kind", ["missing", "random bytes"])
def test_runs_list_of_a_file_or_nothing_says_so(tmp_path: Path, capsys, kind: str) -> None:
    """#15: `runs list passwd` said "no runs under passwd" and exit 0, as for an empty folder."""
    bad = _malformed(tmp_path, kind, ".txt")
    code = cli(["runs", "list", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[0] == (
        f"error: {bad} {'does not exist' if kind == 'missing' else 'is not a folder'}; "
        "pass the folder that holds the runs")


# -- damaged files of particular kinds -----------------------------------------------------
def _lora(path: Path, down, up, alpha=4.0) -> Path:
    import torch
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
               f"{name}.alpha": torch.tensor(alpha)}, str(path))
    return path


@pytest.mark.parametrize("damage, expected", [
    ("scalar", "has shape []; a LoRA weight is a matrix (2-D) or a conv kernel (4-D)"),
    ("vector", "has shape [4]; a LoRA weight is a matrix"),
    ("nan", "holds 128 non-finite values (NaN or infinity)"),
    ("inf", "holds 1 non-finite values"),
    ("ranks", "disagree on the rank"),
])
def test_a_damaged_lora_is_refused_by_inspect_and_init_from(tiny_model, images, tmp_path: Path,
                                                            capsys, damage: str,
                                                            expected: str) -> None:
    """#15: a scalar or vector weight, NaN weights, up and down of different ranks were read
    as a LoRA and used."""
    import torch

    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    if damage == "scalar":
        down = torch.tensor(1.0)
    elif damage == "vector":
        down = torch.zeros(4)
    elif damage == "nan":
        down = torch.full((4, 32), float("nan"))
    elif damage == "inf":
        up[0, 0] = float("inf")
    elif damage == "ranks":
        up = torch.zeros(32, 8)
    lora = _lora(tmp_path / f"{damage}.safetensors", down, up)
    assert cli(["inspect", str(lora)]) == 2
    err = capsys.readouterr().err
    assert expected in err and lora.name in err
    code = cli(["train", "--preset", "tiny-cpu", "--model", str(tiny_model[0]), "--data",
                str(images), "--out", str(tmp_path / "run"), "--init-from", str(lora)])
    err = capsys.readouterr().err
    assert code == 2 and f"network.init_from: {lora.name}" in err and expected in err
    assert not (tmp_path / "run").exists()  # refused before the trainer started


def test_a_damaged_checkpoint_names_the_earlier_one_to_resume_from(tiny_model, images,
                                                                   tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert cli(["train", "--preset", "tiny-cpu", "--model", str(tiny_model[0]), "--data",
                str(images), "--out", str(run), "--steps", "4", "--set",
                "output.save_every_n_steps=2", "--set", "output.verify=false"]) == 0
    capsys.readouterr()
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    weights = newest / "lora.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short (a disk that filled up)
    assert cli(["train", "--resume", str(run), "--steps", "6"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged" in err
    assert f"--resume {run / 'checkpoints' / 'step-000002'}" in err
    assert "bug in LoRA Studio" not in err and "config show" not in err  # not a setting's fault
    assert "hint: the run's checkpoints are untouched" in err


def test_a_shard_index_that_is_not_a_map_is_named(tiny_model, images, tmp_path: Path,
                                                  capsys) -> None:
    import shutil

    model = tmp_path / "sharded"
    shutil.copytree(tiny_model[0], model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(model / "unet" / "diffusion_pytorch_model-00001-of-00001.safetensors")
    (model / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        '{"weight_map": ["not", "a", "map"]}')
    code = cli(["train", "--preset", "tiny-cpu", "--model", str(model), "--data", str(images),
                "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "diffusion_pytorch_model.safetensors.index.json is damaged (its weight_map is not a map" in err


@pytest.mark.parametrize("key, value, expected", [
    ("cross_attention_dim", "big", "cross_attention_dim = 'big' should be a number (like 768)"),
    ("down_block_types", [1, 2, 3, 4], "down_block_types = [1, 2, 3, 4] should be a list of words"),
    ("act_fn", 3, "act_fn = 3 should be a word (like 'silu')"),
])
def test_a_diffusers_config_with_wrong_types_is_named_in_words(tiny_model, images, tmp_path: Path,
                                                               capsys, key, value,
                                                               expected: str) -> None:
    """#15: a wrong type reached torch, whose message ("empty(): argument 'size' failed to
    unpack ...") was all the user saw."""
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model[0], model)
    config_file = model / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config[key] = value
    config_file.write_text(json.dumps(config))
    code = cli(["train", "--preset", "tiny-cpu", "--model", str(model), "--data", str(images),
                "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"model/unet/config.json is damaged: {expected}" in err
