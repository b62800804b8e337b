"""The one config: presets, overrides, and errors that name the field, value and rule."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.config_io import (ConfigError, build_config, config_to_toml, list_presets,
                               load_config_data, parse_override, preset_path)


def test_builtin_presets_load_and_match_kohya_habits() -> None:
    assert {"tiny-cpu", "sd15-style", "sd15-character", "sd15-concept"} <= set(list_presets())
    for name in ("sd15-style", "sd15-character", "sd15-concept"):
        config = build_config(load_config_data(preset_path(name)))
        assert 16 <= config.network.rank <= 32
        assert config.network.alpha in (config.network.rank, config.network.rank / 2)
        assert config.optimizer.learning_rate == 1e-4
        assert config.optimizer.type == "AdamW"
        assert config.schedule.lr_scheduler in ("cosine", "constant_with_warmup")
        assert config.schedule.lr_warmup_steps > 0


def test_family_presets_pick_what_a_kohya_user_would() -> None:
    assert {"sdxl-style", "sdxl-character", "sd2-style"} <= set(list_presets())
    for name in ("sdxl-style", "sdxl-character"):
        config = build_config(load_config_data(preset_path(name)))
        assert config.dataset.resolution == 1024 and config.dataset.max_bucket_reso >= 1024
        assert 16 <= config.network.rank <= 32 and not config.network.train_text_encoder
        assert (config.optimizer.type, config.optimizer.learning_rate) == ("AdamW", 1e-4)
        assert config.precision.gradient_checkpointing
        assert config.precision.cache_text_encoder_outputs and config.precision.cache_latents
    assert not build_config(load_config_data(preset_path("sdxl-character"))).dataset.flip_aug
    sd2 = build_config(load_config_data(preset_path("sd2-style")))
    assert sd2.dataset.resolution == 768 and sd2.model.prediction_type == "auto"


def test_preset_files_hold_only_changes_with_schema_version() -> None:
    for name in list_presets():
        data = tomllib.loads(preset_path(name).read_text())
        assert data["schema_version"] == 1
        defaults = TrainConfig().model_dump(mode="json")
        for section, values in data.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    assert defaults[section][key] != value, f"{name}: {section}.{key} is a default"


def test_unknown_key_names_the_key_and_the_closest_valid_one(tmp_path: Path) -> None:
    preset = tmp_path / "bad.toml"
    preset.write_text("schema_version = 1\n[network]\nrnak = 8\n")
    with pytest.raises(ConfigError) as error:
        load_config_data(preset)
    message = str(error.value)
    assert "\n" not in message
    assert "bad.toml" in message and "network.rnak" in message and "'rank'" in message


def test_negative_rank_names_field_value_and_rule() -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"network": {"rank": -4}})
    assert str(error.value) == "network.rank = -4: must be greater than or equal to 1"


@pytest.mark.parametrize("data, needle", [
    ({"optimizer": {"learning_rate": float("nan")}}, "optimizer.learning_rate = nan"),
    ({"optimizer": {"learning_rate": 0}}, "optimizer.learning_rate = 0"),
    ({"network": {"alpha": 0}}, "network.alpha = 0"),
    ({"schedule": {"max_train_steps": 0}}, "schedule.max_train_steps = 0"),
    ({"output": {"name": "../escape"}}, "contains /"),
    ({"output": {"name": "CON"}}, "Windows"),
    ({"output": {"name": 'a:b'}}, "contains :"),
    ({"dataset": {"resolution": 500}}, "multiple of 64"),
    ({"network": {"blocks": ["side"]}}, "'side' is not a block"),
    ({"schema_version": 9}, "newer LoRA Studio"),
    ({"network": {"rank": "big"}}, "network.rank = 'big'"),
])
def test_bad_values_are_explained(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as error:
        build_config(data)
    assert needle in str(error.value)


def test_overrides_parse_as_toml_values_or_strings() -> None:
    assert parse_override("network.rank=32") == (["network", "rank"], 32)
    assert parse_override('network.blocks=["down","up"]') == (["network", "blocks"], ["down", "up"])
    assert parse_override("output.name=my style") == (["output", "name"], "my style")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("rank")


def test_toml_round_trip_keeps_every_value(tmp_path: Path) -> None:
    config = build_config({"network": {"rank": 8, "alpha": 4.0, "blocks": ["up.1", "mid"]},
                           "dataset": {"folders": [{"path": str(tmp_path), "repeats": 3}]},
                           "optimizer": {"betas": [0.8, 0.99]}})
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config))
    again = build_config(load_config_data(path))
    assert again == config
    only_changes = tomllib.loads(config_to_toml(config, only_changes=True))
    assert only_changes["network"] == {"rank": 8, "alpha": 4.0, "blocks": ["up.1", "mid"]}
    assert "schedule" not in only_changes


def test_relative_paths_in_a_file_are_relative_to_that_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "job.toml"
    path.write_text('[model]\npath = "../models/base.safetensors"\n'
                    '[dataset]\nfolders = [{path = "imgs", mask_folder = "masks"}]\n')
    config = build_config(load_config_data(path))
    assert config.model.path == (tmp_path / "models" / "base.safetensors").resolve()
    assert config.dataset.folders[0].path == (tmp_path / "sub" / "imgs").resolve()
    assert config.dataset.folders[0].mask_folder == (tmp_path / "sub" / "masks").resolve()


@pytest.mark.parametrize("flag", ["--model", "--data", "--out", "--dataset-config", "--init-from"])
def test_an_empty_path_flag_is_refused_not_read_as_the_current_folder(flag, capsys) -> None:
    from trainer.cli import main as cli

    assert cli(["config", "show", flag, ""]) == 2
    err = capsys.readouterr().err
    assert f"{flag} is empty; give a path" in err and "Traceback" not in err


def test_an_empty_name_is_refused_not_replaced_by_the_default(capsys) -> None:
    from trainer.cli import main as cli

    assert cli(["config", "show", "--name", ""]) == 2
    assert "output.name" in capsys.readouterr().err
    assert cli(["config", "show", "--name", "mine"]) == 0
    assert 'name = "mine"' in capsys.readouterr().out


# -- values that used to fail only late (when the optimizer is built, when the file is written)
@pytest.mark.parametrize("data, expected", [
    ({"optimizer": {"betas": [1.0, 0.999]}}, "optimizer.betas.0 = 1.0: must be less than 1"),
    ({"optimizer": {"betas": [0.9, -0.1]}}, "optimizer.betas.1 = -0.1: must be greater than or equal to 0"),
    ({"dataset": {"caption_separator": ""}}, "dataset.caption_separator = '': String should have at least 1 character"),
    ({"output": {"name": "x" * 201}}, "is 201 bytes long; file systems allow names of at most 200"),
    ({"output": {"name": "é" * 101}}, "is 202 bytes long"),
    ({"metadata": {"description": "d" * 1_000_001}},
     "metadata.description = 'ddd"),
    ({"metadata": {"tags": ["ok", "t" * 1_000_001]}},
     "... (1,000,001 characters): String should have at most 1000000 characters"),
])
def test_late_failures_are_refused_when_the_config_is_built(data, expected: str) -> None:
    """#15: these were accepted and failed at the optimizer, or after hours at export."""
    with pytest.raises(ConfigError) as refused:
        build_config(data)
    assert expected in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1 and len(str(refused.value)) < 400


def test_the_longest_allowed_name_fits_the_temporary_file(tmp_path: Path) -> None:
    from trainer.atomic import atomic_write_bytes

    name = build_config({"output": {"name": "n" * 200}}).output.name
    assert atomic_write_bytes(tmp_path / f"{name}.safetensors", b"x").exists()
