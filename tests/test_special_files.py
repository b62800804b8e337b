"""#15: a FIFO (or other special file) given as any path blocked forever in open(), and a
symbolic link loop ended in "this is a bug" (Python's Path.resolve raises RuntimeError on one).
Every path-taking flag and every config field that names a file is tried with a FIFO and with a
link loop: each run ends within seconds, exit 2, one `error:` line naming the path and what it
is, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import make_shapes_dataset

ROOT = Path(__file__).resolve().parent.parent


def test_every_path_field_of_the_config_is_checked() -> None:
    """Every config field holding a path has the check (UserPath), so a new field inherits
    the rule; the CLI cases below try each of them with a FIFO."""
    import trainer.config as config_module

    sections = [value for value in vars(config_module).values()
                if isinstance(value, type) and issubclass(value, config_module.Section)]
    path_fields = {(section.__name__, name): repr(field.annotation) + repr(field.metadata)
                   for section in sections for name, field in section.model_fields.items()
                   if "pathlib.Path" in repr(field.annotation)}
    assert set(path_fields) == {("DatasetFolder", "path"), ("DatasetFolder", "mask_folder"),
                                ("DatasetConfig", "kohya_config"),
                                ("ModelConfig", "path"), ("NetworkConfig", "init_from"),
                                ("OutputConfig", "dir"), ("MetadataConfig", "cover_image")}
    unchecked = [key for key, text in path_fields.items() if "_not_special" not in text]
    assert not unchecked


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, tiny_model):
    root = tmp_path_factory.mktemp("fifo")
    fifo = root / "pipe.safetensors"
    os.mkfifo(fifo)
    loop = root / "loop.safetensors"
    loop.symlink_to(loop)  # a link to itself: every open() fails with ELOOP
    images = root / "images"
    make_shapes_dataset(images, 2)
    return {"fifo": fifo, "loop": loop, "images": images, "model": tiny_model[0], "root": root}


# what each kind of bad path is called in the one error line
NAMED = {"fifo": ("FIFO", "pipe.safetensors"), "loop": ("symbolic link loop", "loop.safetensors")}


def _cases(s: dict, bad: Path) -> dict[str, list[str]]:
    train = ["train", "--preset", "tiny-cpu", "--steps", "1", "--data", str(s["images"]),
             "--out", str(s["root"] / "run")]
    with_model = train + ["--model", str(s["model"])]
    s = {**s, "fifo": bad}
    return {
        "--data": ["train", "--preset", "tiny-cpu", "--model", str(s["model"]), "--data",
                   str(s["fifo"]), "--out", str(s["root"] / "r3")],
        "--model": train + ["--model", str(s["fifo"])],
        "--config": with_model + ["--config", str(s["fifo"])],
        "--preset": ["train", "--preset", str(s["fifo"]), "--model", str(s["model"])],
        "--dataset-config": ["train", "--preset", "tiny-cpu", "--model", str(s["model"]),
                             "--dataset-config", str(s["fifo"]), "--out", str(s["root"] / "r2")],
        "--init-from": with_model + ["--init-from", str(s["fifo"])],
        "metadata.cover_image": with_model + ["--set", f"metadata.cover_image={s['fifo']}"],
        "output.dir": with_model[:-4] + ["--model", str(s["model"]), "--out", str(s["fifo"])],
        "inspect FILE": ["inspect", str(s["fifo"])],
        "verify FILE": ["verify", str(s["fifo"]), "--base", str(s["model"])],
        "verify --base": ["verify", str(s["fifo"]), "--base", str(s["fifo"])],
        "validate --model": ["validate", "--preset", "tiny-cpu", "--data", str(s["images"]),
                             "--model", str(s["fifo"])],
    }


CASES = ["--data", "--model", "--config", "--preset", "--dataset-config", "--init-from",
         "metadata.cover_image", "output.dir", "inspect FILE", "verify FILE", "verify --base",
         "validate --model"]


@pytest.mark.parametrize("kind", sorted(NAMED))
@pytest.mark.parametrize("case", CASES)
def test_a_fifo_or_link_loop_anywhere_is_refused_in_words(setting, case: str, kind: str,
                                                          capsys) -> None:
    args = _cases(setting, setting[kind])[case]
    if kind == "loop":  # nothing can block on a loop: in-process is enough, and 5 s faster
        from trainer.cli import main

        returncode = main(args)
        err = capsys.readouterr().err
    else:  # a FIFO could block forever: a child with a timeout
        try:
            done = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=ROOT,
                                  capture_output=True, text=True, timeout=90,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
        except subprocess.TimeoutExpired:
            pytest.fail(f"{case}: still waiting after 90 s (blocked on the FIFO)")
        returncode, err = done.returncode, done.stderr
    assert returncode == 2, (case, err)
    what, name = NAMED[kind]
    assert what in err and name in err, (case, err)
    assert "Traceback" not in err and "bug" not in err, (case, err)
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
