"""The Training, Samples and Export sections."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QLineEdit, QPlainTextEdit

from app.binding import Binder, combo, dspin, list_edit, number_edit, spin
from app.compare_grid import CompareGrid
from app.exporter import Exporter
from app.forms import Folding, Page, plain_label
from app.gpu_check import GpuCheck
from trainer.samplers import SAMPLERS

PROMPT_HELP = ("One prompt per line. Options after the prompt: --n negative prompt, --w width, "
               "--h height, --s steps, --l guidance scale, --d seed, --m LoRA strength. "
               "Example: a cat in my style --n blurry --d 7")


def _optional(binder: Binder, section: str, name: str, kind: type, placeholder: str,
              tooltip: str):
    edit, access = number_edit(kind, placeholder)
    return binder.field(edit, section, name, tooltip, **access)


class TrainingSection(Page):
    def __init__(self, binder: Binder) -> None:
        super().__init__("Training", "How long and how fast the LoRA learns.")
        self.row("Steps", _optional(
            binder, "schedule", "max_train_steps", int, "none (use epochs)",
            "How many training steps. Each step learns from one batch of images."))
        self.row("Epochs", _optional(
            binder, "schedule", "max_train_epochs", int, "none (use steps)",
            "Train for this many passes over the dataset instead; wins over Steps when set."))
        self.row("Learning rate", _optional(
            binder, "optimizer", "learning_rate", float, "",
            "How big each learning step is. 1e-4 is a safe start; too high burns the images."))
        self.row("Optimizer", binder.field(
            combo([("AdamW (standard)", "AdamW"), ("AdamW 8-bit (NVIDIA only)", "AdamW8bit"),
                   ("Prodigy (finds its own rate)", "Prodigy"), ("Lion", "Lion")]),
            "optimizer", "type", "The method that updates the LoRA. AdamW is the safe choice."))
        self.row("Schedule", binder.field(
            combo([("constant", "constant"), ("constant after warm-up", "constant_with_warmup"),
                   ("cosine", "cosine"), ("cosine with restarts", "cosine_with_restarts"),
                   ("linear decay", "linear"), ("polynomial decay", "polynomial")]),
            "schedule", "lr_scheduler", "How the learning rate changes over the run."))
        self.row("Warm-up steps", binder.field(
            spin(0, 10**7), "schedule", "lr_warmup_steps",
            "Start gently: the learning rate rises from 0 over this many steps."))
        self.row("Seed", binder.field(
            spin(0, 2**31 - 1), "schedule", "seed",
            "Same seed + same settings = the same LoRA. Change it for a different result."))
        self.row("Device", binder.field(
            combo([("automatic", "auto"), ("processor (CPU)", "cpu"), ("NVIDIA GPU (CUDA)", "cuda")]),
            "precision", "device", "Where training runs; automatic picks the GPU if there is one."))
        self.gpus = GpuCheck(binder)
        self.row("GPUs", self.gpus)
        self.processes = binder.field(
            spin(1, 64), "precision", "processes",
            "Train on this many GPUs at once, one process each (data-parallel). The batch size "
            "is per GPU: 2 GPUs at batch 2 train what one GPU trains at batch 4.")
        self.row("GPUs to use", self.processes)
        self._binder, self._gpu_count = binder, 0
        self.gpus.devices.connect(self._offer_processes)
        binder.changed.connect(lambda key: self._offer_processes(self._gpu_count)
                               if key in ("*", "precision.processes") else None)
        self._offer_processes(0)
        self.row("Mixed precision", binder.field(
            combo([("off (fp32)", "no"), ("fp16", "fp16"), ("bf16", "bf16")]),
            "precision", "mixed_precision",
            "Faster training with less memory on an NVIDIA GPU. A CPU always uses fp32."))
        self.row("Gradient checkpointing", binder.field(
            QCheckBox("save memory (slower)"), "precision", "gradient_checkpointing",
            "Uses much less GPU memory at about 20% more time."))
        self.row("Cache images", binder.field(
            QCheckBox("encode each image once"), "precision", "cache_latents",
            "Prepare every image once before training; much faster steps."))
        self.row("Cache captions", binder.field(
            QCheckBox("encode each caption once"), "precision", "cache_text_encoder_outputs",
            "Read each caption once (when the text encoder is not trained)."))
        more = Folding("Advanced")
        more.row("Gradient accumulation", binder.field(
            spin(1, 10_000), "schedule", "gradient_accumulation_steps",
            "Add up this many batches before each update: a bigger batch without the memory."))
        more.row("Weight decay", binder.field(
            dspin(0.0, 10.0, 0.01, 4), "optimizer", "weight_decay",
            "Pulls the LoRA's weights gently towards zero."))
        more.row("Gradient clipping", binder.field(
            dspin(0.0, 1000.0, 0.1, 3), "optimizer", "max_grad_norm",
            "Caps how big one update can be (0 = off)."))
        more.row("Noise offset", binder.field(
            dspin(0.0, 1.0, 0.01, 3), "loss", "noise_offset",
            "Helps the LoRA learn very dark and very bright images (0.05-0.1)."))
        more.row("Min-SNR gamma", _optional(
            binder, "loss", "min_snr_gamma", float, "off",
            "Balances learning across noise levels; 5 is the usual value. Empty = off."))
        more.row("Attention", binder.field(
            combo([("PyTorch SDPA", "sdpa"), ("xformers", "xformers")]),
            "precision", "attention", "The attention implementation (xformers: NVIDIA only)."))
        more.row("Compile the U-Net", binder.field(
            QCheckBox("torch.compile (first steps slower)"), "precision", "compile",
            "Compiles the U-Net's forward pass: faster steps at larger batches (1.28x at batch "
            "4 on the tiny model here, none at batch 1) after a compile of seconds to minutes. "
            "It trains the same; off by default."))
        more.row("Cache images on disk", binder.field(
            QCheckBox(), "precision", "cache_latents_to_disk",
            "Keep the prepared images on disk to reuse them in the next run."))
        more.row("CPU threads", _optional(
            binder, "precision", "threads", int, "automatic",
            "How many processor threads training may use."))
        more.row("Save a checkpoint every", _optional(
            binder, "output", "save_every_n_steps", int, "only at the end",
            "Steps between saved checkpoints (each can be exported or resumed from)."))
        more.row("Checkpoints kept", binder.field(
            spin(1, 10_000), "output", "keep_last", "How many recent checkpoints stay on disk."))
        self.body.addWidget(more)

    def _offer_processes(self, gpus: int) -> None:
        """Several processes only where there are several GPUs (a setting above 1 stays
        editable, so a project from a bigger machine can be set back)."""
        self._gpu_count = gpus
        self.form.setRowVisible(self.processes,
                                gpus > 1 or self._binder.config.precision.processes > 1)

    def stop(self) -> None:
        self.gpus.stop()


class SamplesSection(Page):
    def __init__(self, binder: Binder) -> None:
        super().__init__("Samples", "Preview images made during training, each also without "
                                    "the LoRA (strength 0) so you can compare.")
        prompts = QPlainTextEdit()
        prompts.setPlaceholderText("a portrait of a woman, my_style\na city street at night, my_style")
        prompts.setMinimumHeight(110)
        prompts.setMaximumHeight(220)
        self.row("Prompts", binder.field(prompts, "sampling", "prompts", PROMPT_HELP))
        self.row("", plain_label(PROMPT_HELP))
        self.row("Every N steps", _optional(
            binder, "sampling", "every_n_steps", int, "only at the end",
            "Make previews every this many steps."))
        self.row("At the end", binder.field(
            QCheckBox("make previews when training ends"), "sampling", "at_end",
            "Also render the prompts with the finished LoRA."))
        self.row("Without-LoRA baseline", binder.field(
            QCheckBox("also render at strength 0"), "sampling", "baseline",
            "Render each prompt without the LoRA too, to see what it changes."))
        self.row("Sampler", binder.field(
            combo([(sampler.label, sampler.name) for sampler in SAMPLERS.values()]),
            "sampling", "sampler",
            "How previews are drawn, as in A1111 / ComfyUI. DDIM and Euler are steady at few "
            "steps; Euler a changes more with the step count; the Karras variants spend "
            "more steps on the fine detail."))
        self.row("Sampling steps", binder.field(
            spin(1, 1000), "sampling", "steps", "Denoising steps per preview (20 is typical)."))
        self.row("Guidance scale", binder.field(
            dspin(0.0, 100.0, 0.5, 1), "sampling", "guidance_scale",
            "How closely previews follow the prompt (7 is typical)."))
        self.row("Seed", binder.field(
            spin(0, 2**31 - 1), "sampling", "seed", "Fixed so previews are comparable over time."))
        self.row("Width", _optional(binder, "sampling", "width", int, "training resolution",
                                    "Preview width in pixels (a multiple of 8)."))
        self.row("Height", _optional(binder, "sampling", "height", int, "training resolution",
                                     "Preview height in pixels (a multiple of 8)."))


class ExportSection(Page):
    def __init__(self, binder: Binder) -> None:
        super().__init__("Export", "The .safetensors file you share: its name and what it says "
                                   "about itself on Civitai and in the web UIs.")
        self.row("File name", binder.field(
            QLineEdit(), "output", "name", "The LoRA file's name, without .safetensors."))
        folder = QLineEdit()
        folder.setPlaceholderText("the run folder")
        self.row("Save to folder", binder.field(
            folder, "output", "dir", "Where the LoRA file goes; empty = the run folder.",
            get=lambda: folder.text().strip() or None,
            put=lambda v: folder.setText("" if v is None else str(v))))
        self.row("Precision", binder.field(
            combo([("fp16 (standard, small)", "fp16"), ("bf16", "bf16"), ("fp32 (large)", "fp32")]),
            "output", "save_precision", "Number format of the saved file; fp16 suits everyone."))
        self.row("Check the file", binder.field(
            QCheckBox("read the file back and verify it loads"), "output", "verify",
            "After saving, reload the file and check it gives the trained weights."))
        self.row("Title", binder.field(QLineEdit(), "metadata", "title",
                                       "The name shown on Civitai and in web UIs."))
        self.row("Author", binder.field(QLineEdit(), "metadata", "author", "Your name."))
        description = QPlainTextEdit()
        description.setMaximumHeight(90)
        self.row("Description", binder.field(
            description, "metadata", "description", "What the LoRA does and how to use it.",
            get=lambda: description.toPlainText(), put=lambda v: description.setPlainText(v or "")))
        self.row("Trigger words", binder.field(
            QLineEdit(), "metadata", "trigger_phrase", "Words to type in a prompt to use the LoRA."))
        tags, access = list_edit()
        self.row("Tags", binder.field(tags, "metadata", "tags",
                                      "Comma-separated tags, like: style, watercolor.", **access))
        self.row("License", binder.field(QLineEdit(), "metadata", "license",
                                         "How others may use it, e.g. CreativeML OpenRAIL-M."))
        self.row("Privacy", binder.field(
            QCheckBox("leave my folder names out of the file"), "metadata", "hide_folder_names",
            "Your local folder and file names are not written into the shared file."))
        self.cover = QLineEdit()
        self.row("Cover image", binder.field(
            self.cover, "metadata", "cover_image",
            "A picture stored as the file's thumbnail (right-click a sample in the Run gallery).",
            get=lambda: self.cover.text().strip() or None,
            put=lambda v: self.cover.setText("" if v is None else str(v))))
        self.exporter = Exporter(binder)
        self.body.addWidget(self.exporter)
        compare = Folding("Compare checkpoints")
        self.compare = CompareGrid(binder, self.exporter)
        compare.row("", self.compare)
        self.body.addWidget(compare)
