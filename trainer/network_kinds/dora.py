"""DoRA: LoRA with weight decomposition. The layer's weight is split into a direction (W + ΔW,
normalised per output row) and a trained magnitude; the file is LyCORIS' (>= 3.2): the LoRA
tensors plus `dora_scale`, the magnitude per output row ([out, 1], a conv [out, 1, 1, 1];
`wd_on_output`). peft trains it (`use_dora`); its magnitude vector is [out] (conv
[1, out, 1, 1]) and is reshaped on the way to and from the file, nothing else changes."""

from __future__ import annotations

from typing import Any

from .kind import ADAPTER, NetworkKind


class Dora(NetworkKind):
    name = "dora"
    label = "DoRA"
    summary = ("LoRA that also learns each layer's strength separately: often closer to a "
               "full fine-tune at the same size (+1 value per output). Exact only in LyCORIS; "
               "approximate in ComfyUI, wrong in A1111/Forge, plain LoRA in diffusers.")
    loads_in = ("DoRA loads as trained in LyCORIS; ComfyUI applies it approximately, A1111/Forge "
                "reads the other orientation and diffusers drops dora_scale (docs/network-kinds.md).")
    network_module = "lycoris.kohya"
    required = ("lora_down.weight", "lora_up.weight", "dora_scale")

    def peft_arguments(self, network, targets, rank_pattern, alpha_pattern) -> dict[str, Any]:
        return {**super().peft_arguments(network, targets, rank_pattern, alpha_pattern),
                "use_dora": True}

    def tensors(self, layer) -> dict[str, Any]:
        return {**super().tensors(layer),
                "dora_scale": layer.lora_magnitude_vector[ADAPTER].weight}

    def file_tensor(self, suffix: str, value):
        if suffix != "dora_scale":
            return value
        return value.reshape(value.numel(), *([1] * (max(value.dim(), 2) - 1)))

    def from_file(self, suffix: str, value, target):
        return value.reshape(target.shape) if suffix == "dora_scale" else value

    def set_strength(self, layer, scaling: float, multiplier: float) -> None:
        # the magnitude rescales the base weight too: strength 0 is the base model only with
        # the adapter off (previews' baseline); other strengths scale the direction's change
        layer.enable_adapters(multiplier != 0)
        layer.scaling[ADAPTER] = scaling * multiplier

    def network_args(self, network) -> dict[str, str]:
        return {"algo": "locon", "dora_wd": "True", "wd_on_output": "True"}

    def parts_problem(self, shapes: dict[str, tuple[int, ...]]) -> str:
        problem = super().parts_problem(shapes)
        up, scale = shapes["lora_up.weight"], shapes["dora_scale"]
        if not problem and (scale[0] != up[0] or any(n != 1 for n in scale[1:])):
            problem = (f"dora_scale {list(scale)} is not one value per output row "
                       f"([{up[0]}, 1{', 1, 1' if len(up) == 4 else ''}])")
        return problem

    def merged(self, weight, parts: dict[str, Any], alpha: float | None):
        """LyCORIS' arithmetic: W' = dora_scale x (W + ΔW) / ||W + ΔW||, the norm of each
        output row over all its inputs."""
        direction = weight + self.delta(parts, alpha, tuple(weight.shape))
        norm = direction.flatten(1).norm(dim=1).reshape(-1, *([1] * (weight.dim() - 1)))
        return parts["dora_scale"].reshape(norm.shape) * direction / norm

    def parameter_count(self, fan_in, fan_out, kernel, rank, network) -> int:
        return super().parameter_count(fan_in, fan_out, kernel, rank, network) + fan_out


KIND = Dora()
