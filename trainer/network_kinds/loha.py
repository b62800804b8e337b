"""LoHa (LyCORIS): ΔW = (w1a · w1b) ⊙ (w2a · w2b) x alpha / r, a Hadamard product of two
rank-r matrices, so the change can reach rank r² at the size of two LoRAs. peft trains it
(`LoHaConfig`) with LyCORIS' tensor layout and scale, so the tensors are written as they are:
`hada_w1_a [out, r]`, `hada_w1_b [r, in x kh x kw]`, `hada_w2_a`, `hada_w2_b`, `alpha`."""

from __future__ import annotations

from typing import Any

from .kind import ADAPTER, NetworkKind

PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class Loha(NetworkKind):
    name = "loha"
    label = "LoHa"
    summary = ("LyCORIS' Hadamard LoRA: more expressive than LoRA at the same rank, twice its "
               "size. Loads in A1111/Forge, ComfyUI and LyCORIS; not in diffusers.")
    loads_in = "Loads as trained in A1111/Forge, ComfyUI and LyCORIS; diffusers refuses LoHa."
    network_module = "lycoris.kohya"
    required = PARTS
    peft_class = "LoHaConfig"
    options = ("rank_dropout", "module_dropout")

    def peft_arguments(self, network, targets, rank_pattern, alpha_pattern) -> dict[str, Any]:
        return {"r": network.rank, "alpha": network.alpha, "rank_dropout": network.rank_dropout,
                "module_dropout": network.module_dropout, "target_modules": targets,
                "init_weights": True, "use_effective_conv2d": False,
                "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}

    def alpha_of(self, layer) -> float:
        return float(layer.alpha[ADAPTER])

    def tensors(self, layer) -> dict[str, Any]:
        return {part: getattr(layer, part)[ADAPTER] for part in PARTS}

    def network_args(self, network) -> dict[str, str]:
        return {"algo": "loha", "rank_dropout": f"{network.rank_dropout:g}",
                "module_dropout": f"{network.module_dropout:g}"}

    def parts_problem(self, shapes: dict[str, tuple[int, ...]]) -> str:
        w1a, w1b, w2a, w2b = (shapes[part] for part in PARTS)
        if not (len(w1a) == len(w1b) == len(w2a) == len(w2b) == 2 and w1a == w2a and w1b == w2b
                and w1a[1] == w1b[0]):
            return (f"hada_w1_a {list(w1a)}, hada_w1_b {list(w1b)}, hada_w2_a {list(w2a)}, "
                    f"hada_w2_b {list(w2b)} are not two [out, r] x [r, in] pairs")
        return ""

    def file_rank(self, shapes: dict[str, tuple[int, ...]]) -> int | None:
        return shapes["hada_w1_b"][0]

    def delta(self, parts: dict[str, Any], alpha: float | None, shape: tuple[int, ...]):
        rank = parts["hada_w1_b"].shape[0]
        scale = (alpha if alpha is not None else rank) / rank
        first = parts["hada_w1_a"] @ parts["hada_w1_b"]
        second = parts["hada_w2_a"] @ parts["hada_w2_b"]
        return (first * second).reshape(shape) * scale

    def parameter_count(self, fan_in, fan_out, kernel, rank, network) -> int:
        return 2 * rank * (fan_in * kernel[0] * kernel[1] + fan_out)


KIND = Loha()
