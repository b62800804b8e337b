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
