"""The one typed model of a training job.

The GUI edits it, presets are TOML files of it (only the values that differ from the defaults),
the CLI builds it from flags, and the run folder keeps the exact copy that ran. Defaults live
here and nowhere else. Importing this module must stay cheap: no torch, no Qt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, field_validator,
                      model_validator)

from trainer.network_kinds import KINDS, get_kind
from trainer.network_groups import LEAVES, PROJECTIONS, TARGET_PATTERN, group_leaves, uses_conv_rank
from trainer.paths import special_file_problem

SCHEMA_VERSION = 1

BLOCK_PATTERN = re.compile(r"^(down|mid|up)(\.\d+)?$")
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def _not_special(path: Path) -> Path:
    problem = special_file_problem(path)
    if problem:  # a FIFO would block the first open() forever
        raise ValueError(problem)
    return path


UserPath = Annotated[Path, AfterValidator(_not_special)]  # a path the user names


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated (the GUI sets fields)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetFolder(Section):
    """One image folder. `repeats` = None takes a kohya `N_name` prefix from the folder name, else 1."""

    path: UserPath
    repeats: Annotated[int, Field(ge=1, le=MAX_REPEATS)] | None = None
    is_reg: bool = False
    class_tokens: str = ""
    caption_extension: str | None = None  # None: the dataset-wide extension
    validation: bool = Field(False, description="hold every image of this folder out of "
                                                "training, for the validation loss")
    mask_folder: UserPath | None = Field(
        None, description="masked loss: the folder of masks, one per image with the same name "
                          "(white = trained, black = ignored); kohya's conditioning_data_dir")

    @model_validator(mode="after")
    def _one_role(self) -> DatasetFolder:
        if self.is_reg and self.validation:
            raise ValueError("a folder is either regularisation images (is_reg) or validation "
                             "images (validation), not both")
        return self


MAX_NAME_BYTES = 200  # 255 bytes minus ".safetensors", the temp file's "." and ".XXXXXXXX.tmp"
MAX_REPEATS = 10_000  # per image per epoch: a folder prefix beyond it is no repeat count


def bucket_range_for(resolution: int) -> tuple[int, int]:
    """The usual bucket range for a training resolution: half to twice it (kohya's 256-1024
    for 512), never under 64 px."""
    return max(64, resolution // 2 // 64 * 64), resolution * 2


class DatasetConfig(Section):
    folders: list[DatasetFolder] = []
    kohya_config: UserPath | None = Field(
        None, description="kohya dataset TOML ([general]/[[datasets]]/[[datasets.subsets]])")
    caption_extension: str = ".txt"
    trigger_word: str = Field("", description="prepended to every caption")
    caption_separator: Annotated[str, Field(min_length=1)] = ","  # "" can't split tags
    shuffle_caption: bool = False
    keep_tokens: Annotated[int, Field(ge=0)] = 0
    caption_dropout_rate: Fraction = 0.0
    caption_tag_dropout_rate: Fraction = 0.0
    resolution: Annotated[int, Field(ge=64, le=4096, multiple_of=64)] = 512
    enable_bucket: bool = True
    min_bucket_reso: Annotated[int, Field(ge=64, multiple_of=32)] = 256
    max_bucket_reso: Annotated[int, Field(ge=64, multiple_of=32)] = 1024
    bucket_reso_steps: Literal[32, 64] = Field(64, description="32 is allowed for SDXL (as kohya)")
    bucket_no_upscale: bool = False
    flip_aug: bool = False
    masked_loss: bool = Field(
        False, description="train only where each image's mask is white: its file in the "
                           "folder's mask_folder, else its alpha channel (kohya's --masked_loss)")
    background_color: str = Field("#ffffff", description="transparent pixels are flattened on it")
    min_image_side: Annotated[int, Field(ge=1)] = 64
    batch_size: Annotated[int, Field(ge=1, le=256)] = 1
    validation_split: Annotated[float, Field(
        ge=0, le=0.5, allow_inf_nan=False,
        description="the share of each folder's images held out for the validation loss "
                    "(never trained on); kohya's validation_split")] = 0.0
    validation_seed: Annotated[int, Field(ge=0, lt=2**32)] | None = Field(
        None, description="which images are held out; None: schedule.seed (as kohya)")
    validation_every_n_steps: Annotated[int, Field(ge=1)] | None = Field(
        None, description="also score the validation loss every N steps (always: at the start, "
                          "at every saved checkpoint and at the end)")

    @field_validator("caption_extension")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not re.fullmatch(r"\.[A-Za-z0-9_.-]+", value):
            raise ValueError(f"must look like '.txt' (a dot and letters), got {value!r}")
        return value

    @field_validator("background_color")
    @classmethod
    def _colour(cls, value: str) -> str:
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise ValueError(f"must be a colour like '#ffffff', got {value!r}")
        return value.lower()

    @model_validator(mode="after")
    def _bucket_range(self) -> DatasetConfig:
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ValueError(
                f"min_bucket_reso ({self.min_bucket_reso}) is larger than max_bucket_reso "
                f"({self.max_bucket_reso})")
        if self.enable_bucket and not (self.min_bucket_reso <= self.resolution
                                       <= self.max_bucket_reso):
            # else most images train at a size the user never asked for (a 64-64 px range
            # left by the demo turned a 512 px run into a 64 px one)
            low, high = bucket_range_for(self.resolution)
            raise ValueError(
                f"the bucket range {self.min_bucket_reso}-{self.max_bucket_reso} px does not "
                f"contain the resolution {self.resolution} px: set min_bucket_reso <= "
                f"{self.resolution} <= max_bucket_reso (for example {low} and {high})")
        return self


class ModelConfig(Section):
    path: UserPath | None = Field(None, description="diffusers folder or one .safetensors/.ckpt file")
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"
    clip_skip: Annotated[int, Field(ge=1, le=4)] = 1


class NetworkConfig(Section):
    kind: Literal["lora", "dora", "loha", "lokr"] = Field(
        "lora", description="lora (LoCon with the conv group), dora (LoRA with weight "
                            "decomposition), loha, lokr (LyCORIS)")
    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    alpha: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 8.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    modules: list[Literal["attention", "transformer", "conv"]] = Field(
        ["attention"], description="layer groups: attention (the projections), transformer "
                                   "(kohya's default: + proj_in/proj_out and feed-forward), "
                                   "conv (LoCon: ResNet convs, shortcuts, time embedding, "
                                   "down/upsamplers)")
    conv_rank: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        None, description="rank of the k x k convolutions (kohya's conv_dim); None: rank")
    conv_alpha: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="alpha of the k x k convolutions (kohya's conv_alpha); None: the "
                          "scale of the other layers (alpha / rank x conv_rank)")
    lokr_factor: Annotated[int, Field(ge=-1, le=1024)] = Field(
        -1, description="LoKr: the size of one Kronecker factor (LyCORIS' factor); -1: near "
                        "the square root of each layer's width")
    decompose_both: bool = Field(False, description="LoKr: the first factor low-rank too")
    use_tucker: bool = Field(False, description="LoHa / LoKr: k x k convs as a Tucker core and "
                                                "two projections (LyCORIS' use_tucker)")
    rank_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="LoHa / LoKr: drop rows of the weight change while training")
    module_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="LoHa / LoKr: skip a whole layer's change on a training step")
    blocks: list[str] = ["down", "mid", "up"]
    attention: list[Literal["attn1", "attn2"]] = ["attn1", "attn2"]
    projections: list[Literal["to_q", "to_k", "to_v", "to_out.0"]] = list(PROJECTIONS)
    targets: list[str] | None = Field(
        None, description="layers one by one as block.layer ('up.attn2.to_k', "
                          "'down.1.attn1.to_q', 'mid.proj_in', 'up.0.conv1'); when set it "
                          "replaces blocks x modules x attention x projections")
    train_text_encoder: bool = False
    text_encoder_lr: PositiveFloat | None = Field(None, description="None: the U-Net rate")
    text_encoder_2_lr: PositiveFloat | None = Field(
        None, description="SDXL's second text encoder (OpenCLIP-bigG); None: text_encoder_lr")
    init_from: UserPath | None = Field(None, description="an existing LoRA to continue from")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, value: list[str]) -> list[str]:
        for block in value:
            if not BLOCK_PATTERN.match(block):
                raise ValueError(
                    f"{block!r} is not a block; use 'down', 'mid', 'up' or one block like 'down.1'")
        if not value:
            raise ValueError("pick at least one block (down, mid or up)")
        return value

    @field_validator("attention", "projections", "modules")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("pick at least one")
        return value

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for target in value:
            if not TARGET_PATTERN.match(target):
                raise ValueError(
                    f"{target!r} is not a target layer; write block.layer like 'up.attn2.to_k' "
                    f"(block: down, mid, up or one like down.1; layer: {', '.join(LEAVES)})")
        if not value:
            raise ValueError("pick at least one target layer")
        return value

    @model_validator(mode="after")
    def _kind_options(self) -> NetworkConfig:
        """An option another kind reads would be ignored: refuse it, naming both."""
        kind = get_kind(self.kind)
        defaults = {"lokr_factor": -1, "decompose_both": False, "rank_dropout": 0.0,
                    "module_dropout": 0.0, "use_tucker": False}
        for option, default in defaults.items():
            if getattr(self, option) != default and option not in kind.options:
                users = [k.name for k in KINDS.values() if option in k.options]
                raise ValueError(f"{option} = {getattr(self, option)!r} applies to kind "
                                 f"{' and '.join(users)}, not {self.kind}; clear it or set "
                                 f"network.kind")
        if self.dropout and self.kind in ("loha", "lokr"):
            raise ValueError(f"dropout = {self.dropout:g} is LoRA's input dropout; {kind.label} "
                             "has rank_dropout and module_dropout instead")
        if self.lokr_factor == 0:
            raise ValueError("lokr_factor = 0: use -1 (near the square root) or a size >= 1")
        return self

    @property
    def target_layers(self) -> list[str]:
        """Every block.layer picked: `targets`, or blocks x the groups' layers."""
        if self.targets is not None:
            return self.targets
        leaves = group_leaves(self.modules, self.attention, self.projections)
        return [f"{block}.{leaf}" for block in self.blocks for leaf in leaves]

    def selects(self, block: str, index: str, leaf: str) -> bool:
        """Whether layer `leaf` (trainer.network_groups) of U-Net block `block` (down/mid/up)
        number `index` gets an adapter. The trainer and the window's count both ask this."""
        chosen = self.target_layers
        return f"{block}.{leaf}" in chosen or f"{block}.{index}.{leaf}" in chosen

    def rank_for(self, kernel: tuple[int, int] = (1, 1)) -> int:
        """The rank of a layer: conv_rank for a k x k convolution (kohya's rule), else rank."""
        return (self.conv_rank or self.rank) if uses_conv_rank(kernel) else self.rank

    def alpha_for(self, kernel: tuple[int, int] = (1, 1)) -> float:
        """The alpha of a layer (conv_alpha for a k x k convolution; unset, the same scale)."""
        if not uses_conv_rank(kernel):
            return self.alpha
        if self.conv_alpha is not None:
            return self.conv_alpha
        return self.alpha / self.rank * self.rank_for(kernel)


class OptimizerConfig(Section):
    type: Literal["AdamW", "AdamW8bit", "Prodigy", "Lion"] = "AdamW"
    learning_rate: PositiveFloat = 1e-4
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-2
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = \
        (0.9, 0.999)  # torch refuses others, but only once the optimizer is built
    eps: PositiveFloat = 1e-8
    max_grad_norm: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0


class ScheduleConfig(Section):
    max_train_steps: Annotated[int, Field(ge=1)] | None = 1000
    max_train_epochs: Annotated[int, Field(ge=1)] | None = None
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "cosine_with_restarts",
                          "linear", "polynomial"] = "constant_with_warmup"
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 42

    @model_validator(mode="after")
    def _length(self) -> ScheduleConfig:
        if self.max_train_steps is None and self.max_train_epochs is None:
            raise ValueError("set max_train_steps or max_train_epochs")
        return self


class LossConfig(Section):
    noise_offset: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_snr_gamma: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    zero_terminal_snr: bool = Field(
        False, description="rescale the noise schedule so the last step is pure noise (Lin et "
                           "al. 2023); for v-prediction models")


class PrecisionConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="CUDA only; a CPU run always trains in fp32")
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "xformers"] = "sdpa"
    cache_latents: bool = True
    cache_latents_to_disk: bool = False
    cache_text_encoder_outputs: bool = True
    threads: Annotated[int, Field(ge=1, le=512)] | None = None
    compile: bool = Field(False, description="torch.compile the U-Net's forward (the first "
                                             "steps pay for compiling; see docs/benchmarks.md)")
    processes: Annotated[int, Field(
        ge=1, le=64, description="data-parallel processes on this machine, one per GPU "
                                 "(trainer.distributed); the batch size is per process")] = 1


class SamplingConfig(Section):
    prompts: list[str] = []
    every_n_steps: Annotated[int, Field(ge=1)] | None = None
    at_end: bool = True
    steps: Annotated[int, Field(ge=1, le=150)] = 20
    guidance_scale: Annotated[float, Field(ge=0, le=30)] = 7.0
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 1234
    width: Annotated[int, Field(ge=64, le=4096, multiple_of=8)] | None = None  # None: resolution
    height: Annotated[int, Field(ge=64, le=4096, multiple_of=8)] | None = None
    baseline: bool = Field(True, description="also render each prompt at LoRA strength 0")
    sampler: Literal["ddim", "euler", "euler_a", "dpmpp_2m", "euler_karras",
                     "dpmpp_2m_karras"] = Field("ddim", description="trainer.samplers")


class OutputConfig(Section):
    dir: UserPath | None = None
    name: str = "my_lora"
    save_every_n_steps: Annotated[int, Field(ge=1)] | None = None
    save_every_n_epochs: Annotated[int, Field(ge=1)] | None = None
    keep_last: Annotated[int, Field(ge=1, le=1000)] = 3
    save_precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    verify: bool = Field(True, description="read the exported file back and check it loads in "
                                           "diffusers with the trained weights")

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        bad = sorted(set(value) & set('/\\:*?"<>|'))
        if not value or value in {".", ".."} or bad or any(ord(ch) < 32 for ch in value):
            raise ValueError(
                f"{value!r} can't be a file name{' (contains ' + ' '.join(bad) + ')' if bad else ''}; "
                "use letters, digits, '-' and '_'")
        if value.split(".")[0].upper() in WINDOWS_RESERVED or value.endswith((" ", ".")):
            raise ValueError(f"{value!r} is not allowed as a file name on Windows")
        if len(value.encode("utf-8")) > MAX_NAME_BYTES:
            # the file is written as .NAME.safetensors.XXXXXXXX.tmp first: 255 bytes at most
            raise ValueError(f"is {len(value.encode('utf-8'))} bytes long; file systems allow "
                             f"names of at most {MAX_NAME_BYTES} here (the file is "
                             "NAME.safetensors, written through a temporary name)")
        return value


MAX_METADATA_CHARS = 1_000_000  # per metadata value, on export and on import
MetadataText = Annotated[str, Field(max_length=MAX_METADATA_CHARS)]


class MetadataConfig(Section):
    """What the exported file says about itself (Civitai and the web UIs read it)."""

    # Longer values would be refused (with a warning) by readers of the file, ours included:
    # refused here, not when the file is written at the end of the run.
    title: MetadataText = ""
    author: MetadataText = ""
    description: MetadataText = ""
    trigger_phrase: MetadataText = ""
    tags: list[MetadataText] = []
    license: MetadataText = ""
    hide_folder_names: bool = Field(False, description="leave local folder names out of the file")
    cover_image: UserPath | None = Field(None, description="stored downscaled as the file's thumbnail")


class TrainConfig(BaseModel):
    """A whole training job."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: Annotated[int, Field(ge=1)] = SCHEMA_VERSION
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    network: NetworkConfig = NetworkConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    precision: PrecisionConfig = PrecisionConfig()
    sampling: SamplingConfig = SamplingConfig()
    output: OutputConfig = OutputConfig()
    metadata: MetadataConfig = MetadataConfig()

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(
                f"this file was written by a newer LoRA Studio (schema {value}); this version "
                f"reads schema {SCHEMA_VERSION} and older - update LoRA Studio")
        return value

    @property
    def text_encoder_lr(self) -> float:
        return self.network.text_encoder_lr or self.optimizer.learning_rate

    def text_encoder_rate(self, component: str) -> float:
        """The learning rate of one text encoder ("text_encoder" or SDXL's "text_encoder_2")."""
        if component == "text_encoder_2" and self.network.text_encoder_2_lr:
            return self.network.text_encoder_2_lr
        return self.text_encoder_lr

    @property
    def network_scale(self) -> float:
        return self.network.alpha / self.network.rank
