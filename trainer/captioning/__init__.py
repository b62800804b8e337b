"""Captions from a model already on the user's disk; nothing is ever downloaded.

Two kinds of model, told apart by what is on disk:
- a WD14-style tagger: a `.onnx` file with `selected_tags.csv` beside it (or a folder holding
  both), run through onnxruntime (trainer/captioning/wd14_tagger.py);
- a transformers image-to-text folder (BLIP, GIT, Florence-2: a `config.json` and weights),
  loaded with `from_pretrained(local_files_only=True)` (trainer/captioning/image_to_text.py).

`open_captioner` picks one; each has `caption(image) -> str`. The run over a folder, its modes
and its undo are trainer/captioning/caption_run.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from PIL import Image

from trainer.config_io import ConfigError


class CaptionModelError(ConfigError):
    """A model that can't be used (missing, damaged, or it would need a download): exit 2."""

    hint = ("pass a WD14 tagger (its .onnx file with selected_tags.csv beside it) or a "
            "transformers image-to-text folder (BLIP, GIT, Florence-2), every file on this "
            "computer")


class Captioner(Protocol):
    def caption(self, image: Image.Image) -> str: ...


def open_captioner(path: Path, *, tagger=None, prompt: str = "",
                   max_new_tokens: int = 75) -> Captioner:
    """The captioner at `path`; `tagger` (TaggerSettings) applies to a WD14 tagger, `prompt`
    and `max_new_tokens` to an image-to-text model."""
    from trainer.captioning.wd14_tagger import TAGS_FILE, TaggerSettings, Wd14Tagger

    path = Path(path).expanduser()
    if not path.exists():
        raise CaptionModelError(f"{path} does not exist: pass a WD14 tagger (.onnx file with "
                                f"{TAGS_FILE}) or a transformers captioner folder")
    settings = tagger or TaggerSettings()
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise CaptionModelError(f"{path} is not an .onnx file: pass a WD14 tagger's "
                                    ".onnx file or a transformers captioner folder")
        return Wd14Tagger(path, settings=settings)
    onnx_files = sorted(path.glob("*.onnx"))
    if (path / "config.json").is_file():
        from trainer.captioning.image_to_text import ImageToTextCaptioner
        return ImageToTextCaptioner(path, prompt=prompt, max_new_tokens=max_new_tokens)
    if len(onnx_files) == 1:
        return Wd14Tagger(onnx_files[0], settings=settings)
    if len(onnx_files) > 1:
        raise CaptionModelError(f"{path} holds {len(onnx_files)} .onnx files "
                                f"({', '.join(f.name for f in onnx_files)}): pass the one to use")
    raise CaptionModelError(f"{path} is neither a WD14 tagger (model.onnx and {TAGS_FILE}) nor "
                            "a transformers captioner folder (config.json and its weights)")
