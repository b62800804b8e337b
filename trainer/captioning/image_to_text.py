"""An image-to-text captioner from a transformers folder on disk (BLIP, GIT, Florence-2 style).

Loaded with `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained(folder,
local_files_only=True)`: every file must already be in the folder. Before loading, the folder
is checked for what would otherwise end in a download or a stack trace: a damaged
`config.json`, a model type transformers has no image-to-text class for, no weights, or a
model that needs its own Python code from the hub (`auto_map`, trust_remote_code) - refused
with the reason, since the app neither downloads nor runs code it did not ship. Captions are
greedy (deterministic), on one line; a prompt the model repeats is cut off the front.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from trainer.captioning import CaptionModelError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
# Florence-2 does nothing without a task token; this one asks for a caption of a few sentences.
DEFAULT_PROMPTS = {"florence2": "<MORE_DETAILED_CAPTION>"}


def check_folder(folder: Path) -> str:
    """The folder's model type, or CaptionModelError saying why it can't be used offline."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CaptionModelError(f"{config_file} could not be read as JSON ({error})") from None
    if not isinstance(config, dict):
        raise CaptionModelError(f"{config_file} is not a transformers model config")
    if config.get("auto_map"):
        raise CaptionModelError(
            f"{config_file} names its own model code (auto_map: trust_remote_code), which "
            "would be fetched from the hub and run; LoRA Studio works offline and runs only "
            "models transformers ships. Use a transformers-native copy of this model "
            "(for Florence-2: model_type 'florence2')")
    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise CaptionModelError(
            f"{config_file} is a {model_type or 'untyped'!r} model, not an image-to-text one "
            "(for example blip, git or florence2)")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise CaptionModelError(
            f"{folder} has no weights (model.safetensors or pytorch_model.bin): loading it "
            "would need a download, and LoRA Studio never downloads. Copy the whole model "
            "folder onto this computer")
    return model_type


class ImageToTextCaptioner:
    """`caption(image)` -> one line of text from the model in `folder`."""

    def __init__(self, folder: Path, *, prompt: str = "", max_new_tokens: int = 75) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # a file that is not on disk is an error, not a fetch
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.folder = Path(folder)
        model_type = check_folder(self.folder)
        if max_new_tokens < 1:
            raise CaptionModelError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.prompt = prompt or DEFAULT_PROMPTS.get(model_type, "")
        self.max_new_tokens = max_new_tokens
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # fp16 on a GPU; float32 on a CPU (bf16 would be emulated, and slowly, on most CPUs)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(self.folder, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.folder, local_files_only=True, dtype=self.dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CaptionModelError(
                f"{self.folder} could not be loaded from disk ({first_line[:300]}); every "
                "file of the model (config, weights, processor and tokenizer files) must be in "
                "that folder: LoRA Studio never downloads") from None

    def caption(self, image: Image.Image) -> str:
        import torch

        inputs = self.processor(images=image.convert("RGB"), text=self.prompt or None,
                                return_tensors="pt")
        inputs = {name: (value.to(self.device, self.dtype) if value.is_floating_point()
                         else value.to(self.device)) for name, value in inputs.items()}
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                         do_sample=False, num_beams=1)
        text = " ".join(self.processor.batch_decode(output, skip_special_tokens=True)[0].split())
        if self.prompt and text.lower().startswith(self.prompt.lower()):
            text = text[len(self.prompt):].strip()
        return text
