"""Reading and writing the config: TOML files, presets, `section.key=value` overrides.

Every failure is a `ConfigError` whose one-line message names the field, the value and what is
allowed, and for an unknown key the closest valid one.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from trainer.atomic import atomic_write_text
from trainer.config import SCHEMA_VERSION, TrainConfig
from trainer.paths import resolved, special_file_problem

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
PATH_FIELDS = (("dataset", "kohya_config"), ("model", "path"), ("network", "init_from"),
               ("output", "dir"), ("metadata", "cover_image"))


class ConfigError(ValueError):
    """A config problem, phrased for the person who wrote the config."""


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at `loc` (a pydantic error location), for "did you mean" hints."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        current = next((a for a in (annotation, *args)
                        if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return list(current.model_fields)


def _short(value: Any, limit: int = 60) -> str:
    """A value as the message shows it: a long text is cut, with its length (a 1 MB
    description must not become a 1 MB error line)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters as text"
    return f"{text[:limit - 3]}... ({size})"


def describe_validation_error(error: ValidationError, source: str = "") -> str:
    """One line per problem: `where: field = value: what is allowed`."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc) or "config"
        prefix = f"{source}: " if source else ""
        if item["type"] == "extra_forbidden":
            valid = _field_names(TrainConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (
                f"; valid keys here: {', '.join(valid)}" if valid else "")
            lines.append(f"{prefix}unknown key '{dotted}'{hint}")
            continue
        message = item["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" = {_short(value)}"
        lines.append(f"{prefix}{dotted}{shown}: {message}")
    return "\n".join(lines)


def build_config(data: dict[str, Any], source: str = "") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, source)) from None


def read_toml(path: Path) -> dict[str, Any]:
    if problem := special_file_problem(path):
        raise ConfigError(problem)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a settings file (.toml)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (settings files are UTF-8 TOML); "
                          "pick a .toml file saved by LoRA Studio or a text editor") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path}: can't be read ({error.strerror or error})") from None


def resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths in a TOML file are relative to that file's folder, as a user would expect."""
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            return str(resolved(base / value))
        return os.path.expanduser(value) if isinstance(value, str) else value

    for section, key in PATH_FIELDS:
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section][key] = fix(data[section][key])
    for folder in (data.get("dataset") or {}).get("folders") or []:
        for key in ("path", "mask_folder"):
            if isinstance(folder, dict) and folder.get(key) is not None:
                folder[key] = fix(folder[key])
    return data


def preset_path(name_or_path: str) -> Path:
    """A built-in preset name (`tiny-cpu`) or a path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or os.path.lexists(candidate):  # a broken link is a path too
        return candidate
    path = PRESETS_DIR / f"{name_or_path}.toml"
    if not path.exists():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"no preset named '{name_or_path}'; {hint}built-in presets: {', '.join(names)}")
    return path


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_config_data(path: Path) -> dict[str, Any]:
    """A config or preset file as a dict, validated, with its relative paths resolved."""
    data = read_toml(path)
    data = resolve_relative_paths(data, resolved(path).parent)
    build_config(data, source=str(path))  # fail here, naming the file
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value). Values are TOML (`32`, `true`,
    `["down","up"]`); anything that is not valid TOML is taken as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. network.rank=32")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: name the section too, e.g. network.{key.strip()}={raw}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: '{part}' is a value, not a section")
    target[parts[-1]] = value
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge, `extra` wins; lists are replaced, not appended."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _plain(data: Any) -> Any:
    """Make a dump TOML-writable: paths as strings, tuples as lists, None dropped."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items() if v is not None}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    if isinstance(data, Path):
        return str(data)
    return data


def config_to_toml(config: TrainConfig, *, only_changes: bool = False) -> str:
    """The whole config, or (for a preset) only what differs from the defaults."""
    dump = config.model_dump(mode="python", exclude_defaults=only_changes)
    dump["schema_version"] = SCHEMA_VERSION
    ordered = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in dump.items()
                                                    if k != "schema_version"}}
    return tomli_w.dumps(_plain(ordered))


def save_config(config: TrainConfig, path: Path, *, only_changes: bool = False) -> None:
    atomic_write_text(path, config_to_toml(config, only_changes=only_changes))
