"""LoHa (LyCORIS): ΔW = (w1a · w1b) ⊙ (w2a · w2b) x alpha / r, a Hadamard product of two
rank-r matrices, so the change can reach rank r² at the size of two LoRAs. peft trains it
(`LoHaConfig`) with LyCORIS' tensor layout and scale, so the tensors are written as they are:
`hada_w1_a [out, r]`, `hada_w1_b [r, in x kh x kw]`, `hada_w2_a`, `hada_w2_b`, `alpha`."""

from __future__ import annotations

from typing import Any

from .kind import ADAPTER, NetworkKind

PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
TUCKER = ("hada_t1", "hada_t2")  # with use_tucker on a k x k conv: w*_a [r, out], w*_b [r, in]


class Loha(NetworkKind):
    name = "loha"
    label = "LoHa"
    summary = ("LyCORIS' Hadamard LoRA: more expressive than LoRA at the same rank, twice its "
               "size. Loads in A1111/Forge, ComfyUI and LyCORIS; not in diffusers.")
    loads_in = ("Loads as trained in A1111/Forge, ComfyUI and LyCORIS (not its merge tool, which "
                "applies alpha / r twice); diffusers refuses LoHa.")
    network_module = "lycoris.kohya"
    required = PARTS
    optional = TUCKER
    peft_class = "LoHaConfig"
    options = ("rank_dropout", "module_dropout", "use_tucker")

    def peft_arguments(self, network, targets, rank_pattern, alpha_pattern) -> dict[str, Any]:
        return {"r": network.rank, "alpha": network.alpha, "rank_dropout": network.rank_dropout,
                "module_dropout": network.module_dropout, "target_modules": targets,
                "init_weights": True, "use_effective_conv2d": network.use_tucker,
                "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}

    def alpha_of(self, layer) -> float:
        return float(layer.alpha[ADAPTER])

    def tensors(self, layer) -> dict[str, Any]:
        return {part: getattr(layer, part)[ADAPTER] for part in PARTS + TUCKER
                if ADAPTER in getattr(layer, part)}

    def network_args(self, network) -> dict[str, str]:
        return {"algo": "loha", "use_tucker": str(network.use_tucker),
                "rank_dropout": f"{network.rank_dropout:g}",
                "module_dropout": f"{network.module_dropout:g}"}

    def parts_problem(self, shapes: dict[str, tuple[int, ...]]) -> str:
        w1a, w1b, w2a, w2b = (shapes[part] for part in PARTS)
        if "hada_t1" in shapes or "hada_t2" in shapes:
            t1, t2 = shapes.get("hada_t1"), shapes.get("hada_t2")
            rank = w1a[0]
            if not (t1 and t1 == t2 and len(t1) == 4 and t1[:2] == (rank, rank)
                    and w1a == w2a and w1b == w2b and w1b[0] == rank):
                return (f"Tucker LoHa: hada_t1 {list(t1 or ())}, hada_t2 {list(t2 or ())} are "
                        f"not [r, r, kh, kw] with hada_w*_a [r, out] {list(w1a)} and "
                        f"hada_w*_b [r, in] {list(w1b)}")
            return ""
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
        if "hada_t1" in parts:  # Tucker: each factor a core and two projections
            first = self.rebuild_tucker(parts["hada_t1"], parts["hada_w1_a"], parts["hada_w1_b"])
            second = self.rebuild_tucker(parts["hada_t2"], parts["hada_w2_a"], parts["hada_w2_b"])
            return (first * second).reshape(shape) * scale
        first = parts["hada_w1_a"] @ parts["hada_w1_b"]
        second = parts["hada_w2_a"] @ parts["hada_w2_b"]
        return (first * second).reshape(shape) * scale

    def parameter_count(self, fan_in, fan_out, kernel, rank, network) -> int:
        kk = kernel[0] * kernel[1]
        if network.use_tucker and kk > 1:  # a core [r, r, kh, kw] and [r, out] + [r, in]
            return 2 * (rank * rank * kk + rank * (fan_out + fan_in))
        return 2 * rank * (fan_in * kk + fan_out)


KIND = Loha()
