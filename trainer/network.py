"""The LoRA network: which modules get adapters, peft injection, and kohya names.

peft's `LoraLayer` does the maths (W x + scale * B A x with scale = alpha / rank); this module
picks the targets from the config, and maps every adapter to and from its kohya key, per family
(docs/lora-format.md): SD 1.x / 2.x U-Net modules by their diffusers path
(`lora_unet_down_blocks_0_..._attn1_to_q`), SDXL ones by the original SGM path
(`lora_unet_input_blocks_4_1_..._attn1_to_q`), text encoders as `lora_te_` (SD 1/2) or
`lora_te1_` / `lora_te2_` (SDXL) + the transformers 4 path.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from trainer.config import NetworkConfig
from trainer.families import Family, get_family
from trainer.families.lora_names import TEXT_ENCODER_LAYERS, kohya_name, unet_kohya_names

ADAPTER = "default"
UNET_ATTENTION = re.compile(
    r"^(?P<block>down_blocks\.(?P<down>\d+)|mid_block|up_blocks\.(?P<up>\d+))\.attentions\.\d+"
    r"\.transformer_blocks\.\d+\.(?P<attn>attn1|attn2)\.(?P<proj>to_q|to_k|to_v|to_out\.0)$")
TEXT_ENCODER_TARGET = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.(" + "|".join(
    re.escape(name) for name in TEXT_ENCODER_LAYERS) + ")$")


class NetworkError(ValueError):
    """The chosen targets or a LoRA file do not fit the model."""


def _block_of(match: re.Match[str]) -> tuple[str, str]:
    if match["down"] is not None:
        return "down", match["down"]
    if match["up"] is not None:
        return "up", match["up"]
    return "mid", "0"


def select_unet_targets(module_names: list[str], network: NetworkConfig) -> list[str]:
    """The U-Net attention projections the config picks, in model order."""
    targets, present, block_names = [], set(), {}
    for name in module_names:
        match = UNET_ATTENTION.match(name)
        if not match:
            continue
        (block, index), leaf = _block_of(match), f"{match['attn']}.{match['proj']}"
        present |= {f"{block}.{leaf}", f"{block}.{index}.{leaf}"}
        block_names[f"{block}.{index}"] = None
        if network.selects(block, index, match["attn"], match["proj"]):
            targets.append(name)
    missing = [t for t in network.targets or [] if t not in present]
    if missing:  # a typo'd block number would otherwise train less than asked, silently
        raise NetworkError(f"network.targets: {missing[0]!r} names no layer of this model "
                           f"({len(missing)} such entries); its attention blocks are "
                           f"{', '.join(block_names)}")
    if not targets:  # (every entry of network.targets names a layer, so not with targets)
        raise NetworkError(
            f"no U-Net module matches blocks={network.blocks}, attention={network.attention}, "
            f"projections={network.projections}; pick blocks that have attention layers")
    return targets


def select_text_encoder_targets(module_names: list[str]) -> list[str]:
    return [name for name in module_names if TEXT_ENCODER_TARGET.match(name)]


@dataclass
class LoraNetwork:
    """The adapters injected into a U-Net (and optionally a text encoder)."""

    rank: int
    alpha: float
    unet_layers: dict[str, LoraLayer]      # kohya name -> peft layer
    text_encoder_layers: dict[str, LoraLayer]
    # kohya name -> "text_encoder" | "text_encoder_2" for every text-encoder layer
    text_encoder_of: dict[str, str] = field(default_factory=dict)
    family: str = "sd1"

    @property
    def layers(self) -> dict[str, LoraLayer]:
        return {**self.unet_layers, **self.text_encoder_layers}

    def parameters(self, part: str = "all") -> list[nn.Parameter]:
        """Trainable tensors in a fixed order (the optimizer's state is keyed by position).
        `part`: "all", "unet", "text_encoders" (both), or one text encoder's component name."""
        if part in ("unet", "all"):
            layers = self.unet_layers if part == "unet" else self.layers
        elif part == "text_encoders":
            layers = self.text_encoder_layers
        else:
            layers = {n: layer for n, layer in self.text_encoder_layers.items()
                      if self.text_encoder_of.get(n, "text_encoder") == part}
        params = []
        for name in sorted(layers):
            layer = layers[name]
            params += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
        return params

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """kohya tensors: `lora_down` = peft A [r, in], `lora_up` = peft B [out, r], `alpha`."""
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            tensors[f"{name}.lora_down.weight"] = layer.lora_A[ADAPTER].weight.detach().to(
                "cpu", dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = layer.lora_B[ADAPTER].weight.detach().to(
                "cpu", dtype).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(self.alpha, dtype=dtype)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy kohya tensors into the adapters; every adapter must be filled, shapes must fit."""
        expected = set(self.state_dict_keys())
        missing = sorted(expected - set(tensors))
        extra = sorted(set(tensors) - expected)
        if missing or extra:
            raise NetworkError(
                f"LoRA tensors do not match the network: missing {missing[:3]}, "
                f"unexpected {extra[:3]} ({len(missing)} missing, {len(extra)} unexpected)")
        with torch.no_grad():
            for name, layer in self.layers.items():
                for kohya, weight in (("lora_down", layer.lora_A[ADAPTER].weight),
                                      ("lora_up", layer.lora_B[ADAPTER].weight)):
                    source = tensors[f"{name}.{kohya}.weight"]
                    if source.shape != weight.shape:
                        raise NetworkError(f"{name}.{kohya}.weight has shape "
                                           f"{list(source.shape)}, the network needs "
                                           f"{list(weight.shape)}")
                    weight.copy_(source)

    def state_dict_keys(self) -> list[str]:
        return [f"{name}.{part}" for name in self.layers
                for part in ("lora_down.weight", "lora_up.weight", "alpha")]

    @contextmanager
    def strength(self, multiplier: float) -> Iterator[None]:
        """Apply the LoRA at `multiplier` x its trained strength (0 = the base model)."""
        saved = {name: layer.scaling[ADAPTER] for name, layer in self.layers.items()}
        try:
            for name, layer in self.layers.items():
                layer.scaling[ADAPTER] = saved[name] * multiplier
            yield
        finally:
            for name, layer in self.layers.items():
                layer.scaling[ADAPTER] = saved[name]


def _inject(model: nn.Module, targets: list[str], network: NetworkConfig,
            names: dict[str, str]) -> dict[str, LoraLayer]:
    config = LoraConfig(r=network.rank, lora_alpha=network.alpha, lora_dropout=network.dropout,
                        target_modules=targets, init_lora_weights=True, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    modules = dict(model.named_modules())
    layers = {names[name]: modules[name] for name in targets}
    for name, layer in layers.items():
        if not isinstance(layer, LoraLayer):
            raise NetworkError(f"peft did not wrap {name}; got {type(layer).__name__}")
    return layers


def apply_lora(unet: nn.Module, text_encoders: nn.Module | dict[str, nn.Module] | None,
               network: NetworkConfig, family: Family | None = None) -> LoraNetwork:
    """Freeze the base weights and inject adapters on the configured targets.

    `text_encoders` is {component: model} (one bare model means SD 1.x's "text_encoder");
    `family` decides the kohya names (default SD 1.x). Targets are chosen with the base model's
    own random stream untouched: peft initialises lora_A from torch's global RNG, so call this
    after seeding for reproducible runs."""
    family = family or get_family("sd1")
    if isinstance(text_encoders, nn.Module):
        text_encoders = {"text_encoder": text_encoders}
    unet.requires_grad_(False)
    unet_targets = select_unet_targets([n for n, _ in unet.named_modules()], network)
    _check_rank(unet, unet_targets, network.rank)
    unet_layers = _inject(unet, unet_targets, network,
                          unet_kohya_names(family, unet.config, unet_targets))
    text_layers: dict[str, LoraLayer] = {}
    owner: dict[str, str] = {}
    for spec in family.text_encoders:
        encoder = (text_encoders or {}).get(spec.component)
        if encoder is None:
            continue
        encoder.requires_grad_(False)
        if network.train_text_encoder:
            te_targets = select_text_encoder_targets([n for n, _ in encoder.named_modules()])
            _check_rank(encoder, te_targets, network.rank)
            names = {t: kohya_name(spec.kohya_prefix, t) for t in te_targets}
            layers = _inject(encoder, te_targets, network, names)
            text_layers.update(layers)
            owner.update({name: spec.component for name in layers})
    return LoraNetwork(network.rank, network.alpha, unet_layers, text_layers, owner, family.name)


def apply_lora_to(base, network: NetworkConfig) -> LoraNetwork:
    """`apply_lora` on a loaded BaseModel: its U-Net, every text encoder, its family's names."""
    return apply_lora(base.unet, base.text_encoders, network, base.spec)


def _check_rank(model: nn.Module, targets: list[str], rank: int) -> None:
    modules = dict(model.named_modules())
    narrowest = min(targets, key=lambda n: min(modules[n].in_features, modules[n].out_features))
    width = min(modules[narrowest].in_features, modules[narrowest].out_features)
    if rank > width:
        raise NetworkError(f"network.rank = {rank} is larger than the narrowest layer "
                           f"({narrowest}, width {width}); use a rank of at most {width}")
