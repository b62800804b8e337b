"""The network: which modules get adapters, peft injection of the chosen kind, and kohya names.

peft's `LoraLayer` does the maths (W x + scale * B A x with scale = alpha / rank; on a conv
layer A is a conv with the layer's kernel, stride and padding and B a 1 x 1 conv, kohya's LoCon
layout); this module picks the targets from the config (trainer.network_groups: attention,
transformer, conv), gives k x k convs their own rank and alpha, injects the kind's peft layer
(trainer.network_kinds: LoRA, DoRA, LoHa, LoKr), and maps every adapter to and from its kohya
key, per family (docs/lora-format.md): SD 1.x / 2.x U-Net modules by their diffusers path
(`lora_unet_down_blocks_0_..._attn1_to_q`), SDXL ones by the original SGM path
(`lora_unet_input_blocks_4_1_..._attn1_to_q`), text encoders as `lora_te_` (SD 1/2) or
`lora_te1_` / `lora_te2_` (SDXL) + the transformers 4 path.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import peft
import torch
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from trainer.config import NetworkConfig
from trainer.network_groups import TARGET_PATTERN, leaf_of
from trainer.families import Family, get_family
from trainer.families.lora_names import TEXT_ENCODER_LAYERS, kohya_name, unet_kohya_names
from trainer.network_kinds import ADAPTER, LORA, NetworkKind, get_kind

TEXT_ENCODER_TARGET = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.(" + "|".join(
    re.escape(name) for name in TEXT_ENCODER_LAYERS) + ")$")


class NetworkError(ValueError):
    """The chosen targets or a LoRA file do not fit the model."""


def select_unet_targets(module_names: list[str], network: NetworkConfig) -> list[str]:
    """The U-Net layers the config picks, in model order."""
    targets, present, holding = [], set(), {}
    for name in module_names:
        place = leaf_of(name)
        if place is None:
            continue
        block, index, leaf = place
        present |= {f"{block}.{leaf}", f"{block}.{index}.{leaf}"}
        holding.setdefault(leaf, {})[block if block == "mid" else f"{block}.{index}"] = None
        if network.selects(block, index, leaf):
            targets.append(name)
    missing = [t for t in network.targets or [] if t not in present]
    if missing:  # a typo'd block number would otherwise train less than asked, silently
        leaf = TARGET_PATTERN.match(missing[0])["leaf"]
        where = (f"its blocks with {leaf} are {', '.join(holding[leaf])}" if leaf in holding
                 else f"it has no {leaf} layer")
        raise NetworkError(f"network.targets: {missing[0]!r} names no layer of this model "
                           f"({len(missing)} such entries); {where}")
    if not targets:  # (every entry of network.targets names a layer, so not with targets)
        raise NetworkError(
            f"no U-Net module matches blocks={network.blocks}, modules={network.modules}, "
            f"attention={network.attention}, projections={network.projections}; pick blocks "
            "that have these layers")
    return targets


def select_text_encoder_targets(module_names: list[str]) -> list[str]:
    return [name for name in module_names if TEXT_ENCODER_TARGET.match(name)]


@dataclass
class LoraNetwork:
    """The adapters injected into a U-Net (and optionally a text encoder), of one kind
    (trainer.network_kinds: LoRA/LoCon, DoRA, LoHa, LoKr)."""

    rank: int
    alpha: float
    unet_layers: dict[str, BaseTunerLayer]      # kohya name -> peft layer
    text_encoder_layers: dict[str, BaseTunerLayer]
    # kohya name -> "text_encoder" | "text_encoder_2" for every text-encoder layer
    text_encoder_of: dict[str, str] = field(default_factory=dict)
    family: str = "sd1"
    kind: NetworkKind = LORA

    @property
    def layers(self) -> dict[str, BaseTunerLayer]:
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
            params += list(self.kind.tensors(layers[name]).values())
        return params

    def rank_of(self, name: str) -> int:
        """The rank of one adapter (a LoCon conv may have conv_rank)."""
        return self.kind.rank_of(self.layers[name])

    def alpha_of(self, name: str) -> float:
        return self.kind.alpha_of(self.layers[name])

    def is_conv(self, name: str) -> bool:
        """Whether the adapter sits on a k x k convolution (conv_rank / conv_alpha apply)."""
        return _kernel(self.layers[name].get_base_layer()) != (1, 1)

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The file's tensors (docs/lora-format.md, per kind): LoRA `lora_down` = peft A
        [r, in], `lora_up` = peft B [out, r]; DoRA + `dora_scale`; LoHa `hada_*`; LoKr
        `lokr_*`; and each module's own `alpha` (a LoCon conv may have conv_alpha). Exact
        copies (renamed, DoRA's magnitude reshaped), so a checkpoint resumes bit for bit."""
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            for suffix, value in self.kind.tensors(layer).items():
                tensors[f"{name}.{suffix}"] = self.kind.file_tensor(
                    suffix, value.detach()).to("cpu", dtype).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(self.kind.alpha_of(layer), dtype=dtype)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy file tensors into the adapters; every adapter must be filled, shapes must fit."""
        expected = set(self.state_dict_keys())
        missing = sorted(expected - set(tensors))
        extra = sorted(set(tensors) - expected)
        if missing or extra:
            raise NetworkError(
                f"{self.kind.label} tensors do not match the network: missing {missing[:3]}, "
                f"unexpected {extra[:3]} ({len(missing)} missing, {len(extra)} unexpected)")
        with torch.no_grad():
            for name, layer in self.layers.items():
                for suffix, weight in self.kind.tensors(layer).items():
                    source = self.kind.from_file(suffix, tensors[f"{name}.{suffix}"], weight)
                    if source.shape != weight.shape:
                        raise NetworkError(f"{name}.{suffix} has shape {list(source.shape)}, "
                                           f"the network needs {list(weight.shape)}")
                    weight.copy_(source)

    def state_dict_keys(self) -> list[str]:
        return [f"{name}.{part}" for name, layer in self.layers.items()
                for part in (*self.kind.tensors(layer), "alpha")]

    @contextmanager
    def strength(self, multiplier: float) -> Iterator[None]:
        """Apply the network at `multiplier` x its trained strength (0 = the base model)."""
        saved = {name: layer.scaling[ADAPTER] for name, layer in self.layers.items()}
        try:
            for name, layer in self.layers.items():
                self.kind.set_strength(layer, saved[name], multiplier)
            yield
        finally:
            for name, layer in self.layers.items():
                self.kind.set_strength(layer, saved[name], 1.0)


def _kernel(module: nn.Module) -> tuple[int, int]:
    return tuple(module.kernel_size) if isinstance(module, nn.Conv2d) else (1, 1)


def _inject(model: nn.Module, targets: list[str], network: NetworkConfig,
            names: dict[str, str]) -> dict[str, BaseTunerLayer]:
    modules = dict(model.named_modules())
    # k x k convs take conv_rank / conv_alpha (kohya's rule); peft matches the pattern keys as
    # regular expressions against the end of a module's path, so whole paths are escaped
    own = {name: _kernel(modules[name]) for name in targets
           if network.rank_for(_kernel(modules[name])) != network.rank
           or network.alpha_for(_kernel(modules[name])) != network.alpha}
    kind = get_kind(network.kind)
    config = getattr(peft, kind.peft_class)(**kind.peft_arguments(
        network, targets, {re.escape(n): network.rank_for(k) for n, k in own.items()},
        {re.escape(n): network.alpha_for(k) for n, k in own.items()}))
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    modules = dict(model.named_modules())
    layers = {names[name]: modules[name] for name in targets}
    for name, layer in layers.items():
        if not isinstance(layer, BaseTunerLayer):
            raise NetworkError(f"peft did not wrap {name}; got {type(layer).__name__}")
        kind.after_inject(layer)
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
    _check_rank(unet, unet_targets, network)
    unet_layers = _inject(unet, unet_targets, network,
                          unet_kohya_names(family, unet.config, unet_targets))
    text_layers: dict[str, BaseTunerLayer] = {}
    owner: dict[str, str] = {}
    for spec in family.text_encoders:
        encoder = (text_encoders or {}).get(spec.component)
        if encoder is None:
            continue
        encoder.requires_grad_(False)
        if network.train_text_encoder:
            te_targets = select_text_encoder_targets([n for n, _ in encoder.named_modules()])
            _check_rank(encoder, te_targets, network)
            names = {t: kohya_name(spec.kohya_prefix, t) for t in te_targets}
            layers = _inject(encoder, te_targets, network, names)
            text_layers.update(layers)
            owner.update({name: spec.component for name in layers})
    lora = LoraNetwork(network.rank, network.alpha, unet_layers, text_layers, owner, family.name,
                       get_kind(network.kind))
    # peft's injection gives the adapters the base's dtype: on an fp16 or bf16 base the LoRA
    # would train in half precision (GradScaler refuses fp16 gradients; bf16 rounds small
    # updates away). The LoRA trains in fp32 whatever the base, as kohya's does; the file is
    # cast to output.save_precision at export.
    for parameter in lora.parameters():
        parameter.data = parameter.data.float()
    return lora


def apply_lora_to(base, network: NetworkConfig) -> LoraNetwork:
    """`apply_lora` on a loaded BaseModel: its U-Net, every text encoder, its family's names."""
    return apply_lora(base.unet, base.text_encoders, network, base.spec)


def _width(module: nn.Module) -> int:
    """The largest useful rank of a layer: min(in, out), a conv's input counted per kernel."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return min(module.in_channels * kh * kw, module.out_channels)
    return min(module.in_features, module.out_features)


def _check_rank(model: nn.Module, targets: list[str], network: NetworkConfig) -> None:
    modules = dict(model.named_modules())
    for convs in (False, True):
        chosen = [n for n in targets if (_kernel(modules[n]) != (1, 1)) == convs]
        if not chosen:
            continue
        narrowest = min(chosen, key=lambda n: _width(modules[n]))
        width, rank = _width(modules[narrowest]), network.rank_for(_kernel(modules[narrowest]))
        setting = "conv_rank" if convs and network.conv_rank else "rank"
        if rank > width:
            raise NetworkError(f"network.{setting} = {rank} is larger than the narrowest layer "
                               f"({narrowest}, width {width}); use a {setting.replace('_', ' ')} "
                               f"of at most {width}")
