"""What every network kind provides: its training layer (a peft config), its tensors in the
community file, how a loader rebuilds a module's weight change from them, and its size.

Kind modules import neither torch nor peft (the window counts parameters with them): the
tensor work uses the tensors' own methods, and trainer/network.py builds the peft config from
the class name and arguments a kind returns. docs/lora-format.md, "Network kinds", is the file
format each kind writes.
"""

from __future__ import annotations

from typing import Any

ADAPTER = "default"  # peft's adapter name: one adapter per layer


class NetworkKind:
    """The default behaviour, LoRA's: `lora_down` = peft's lora_A, `lora_up` = lora_B."""

    name = "lora"
    label = "LoRA"
    summary = ""
    loads_in = ""  # where the file applies as trained (docs/network-kinds.md, measured)
    network_module = "networks.lora"  # ss_network_module
    required = ("lora_down.weight", "lora_up.weight")  # tensors of one module besides alpha
    optional: tuple[str, ...] = ()
    peft_class = "LoraConfig"
    options: tuple[str, ...] = ()  # network fields only this kind reads

    # -- training ---------------------------------------------------------------------------
    def peft_arguments(self, network, targets: list[str], rank_pattern: dict[str, int],
                       alpha_pattern: dict[str, float]) -> dict[str, Any]:
        return {"r": network.rank, "lora_alpha": network.alpha, "lora_dropout": network.dropout,
                "target_modules": targets, "init_lora_weights": True, "bias": "none",
                "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}

    def after_inject(self, layer) -> None:
        """Adjust a freshly injected layer to the ecosystem's convention (LoKr: scale 1)."""

    def rank_of(self, layer) -> int:
        return int(layer.r[ADAPTER])

    def alpha_of(self, layer) -> float:
        return float(layer.lora_alpha[ADAPTER])

    def tensors(self, layer) -> dict[str, Any]:
        """The module's trainable tensors by their file suffix, in a fixed order (the
        optimizer's state is keyed by position)."""
        return {"lora_down.weight": layer.lora_A[ADAPTER].weight,
                "lora_up.weight": layer.lora_B[ADAPTER].weight}

    def file_tensor(self, suffix: str, value):
        """A trainable tensor as the file stores it (DoRA reshapes its magnitude)."""
        return value

    def from_file(self, suffix: str, value, target):
        """A file tensor shaped back like the trainable one (`target`)."""
        return value

    def set_strength(self, layer, scaling: float, multiplier: float) -> None:
        layer.scaling[ADAPTER] = scaling * multiplier

    # -- the file ---------------------------------------------------------------------------
    def network_args(self, network) -> dict[str, str]:
        """The kind's entries of `ss_network_args`, as strings."""
        return {}

    def parts_problem(self, shapes: dict[str, tuple[int, ...]]) -> str:
        """Why one module's tensor shapes do not fit together ('' when they do)."""
        down, up = shapes["lora_down.weight"], shapes["lora_up.weight"]
        if len(down) not in (2, 4) or len(up) != len(down) or up[1] != down[0] \
                or (len(up) == 4 and tuple(up[2:]) != (1, 1)):
            return f"lora_down {list(down)} and lora_up {list(up)} do not make a rank-r pair"
        return ""

    def file_rank(self, shapes: dict[str, tuple[int, ...]]) -> int | None:
        """The rank the loaders read (None: the module has no rank, the scale is 1)."""
        return shapes["lora_down.weight"][0]

    def delta(self, parts: dict[str, Any], alpha: float | None, shape: tuple[int, ...]):
        """ΔW as A1111 / ComfyUI / LyCORIS rebuild it from the file, in the base weight's
        `shape`: (alpha / r) up · down, a conv's factors multiplied as matrices."""
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        scale = (alpha if alpha is not None else down.shape[0]) / down.shape[0]
        return (up.flatten(1) @ down.flatten(1)).reshape(shape) * scale

    def merged(self, weight, parts: dict[str, Any], alpha: float | None):
        """The base weight with the module applied at strength 1."""
        return weight + self.delta(parts, alpha, tuple(weight.shape))

    # -- size -------------------------------------------------------------------------------
    @staticmethod
    def rebuild_tucker(core, first, second):
        """A Tucker-decomposed conv kernel, [p, r, kh, kw] = sum over i, j of core[i, j, kh, kw]
        x first[i, p] x second[j, r] (LyCORIS' `rebuild_tucker`), with tensor methods only."""
        return (first.t() @ core.permute(2, 3, 0, 1) @ second).permute(2, 3, 0, 1)

    def parameter_count(self, fan_in: int, fan_out: int, kernel: tuple[int, int], rank: int,
                        network) -> int:
        """Trainable parameters on one layer: down r x (in x kernel) and up out x r."""
        return rank * (fan_in * kernel[0] * kernel[1] + fan_out)
