"""LoKr (LyCORIS): ΔW = kron(w1, w2), each factor a full matrix or a rank-r product. Each
side of a layer is split into two factors near its square root (`lokr_factor` picks one of
them), so the file is tiny. peft trains it (`LoKrConfig`) with LyCORIS' layout: `lokr_w1
[a, c]` or `lokr_w1_a [a, r]` + `lokr_w1_b [r, c]`, `lokr_w2 [b, d(, kh, kw)]` or `lokr_w2_a
[b, r]` + `lokr_w2_b [r, d x kh x kw]`, out = a x b, in = c x d.

The scale differs between the two: peft multiplies by alpha / r always, but when both factors
are full matrices LyCORIS trains, and ComfyUI, A1111 and LyCORIS read, scale 1 (there is no
rank). Such layers train at scale 1 here too (their alpha is set to r), so the file reads
back as it trained in every loader; alpha acts only on layers with a decomposed factor."""

from __future__ import annotations

from typing import Any

from .kind import ADAPTER, NetworkKind

W1 = ("lokr_w1", "lokr_w1_a", "lokr_w1_b")
W2 = ("lokr_w2", "lokr_w2_a", "lokr_w2_b")
TUCKER = ("lokr_t2",)  # with use_tucker on a k x k conv: lokr_w2_a [r, b], lokr_w2_b [r, d]


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n), m <= n, m x n = dimension: m = `factor` when it divides, else the divisor pair
    nearest the square root with m <= factor (peft's and LyCORIS' rule)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        other = dimension // candidate
        if candidate + other > m + n or candidate > limit:
            break
        m, n = candidate, other
    return (n, m) if m > n else (m, n)


def factor_shapes(fan_in: int, fan_out: int, rank: int, factor: int,
                  decompose_both: bool) -> tuple[tuple[int, int], tuple[int, int], bool, bool]:
    """((a, c), (b, d), w1 full, w2 full) for a layer, as peft decides them."""
    c, d = factorization(fan_in, factor)
    a, b = factorization(fan_out, factor)
    full_w1 = not (decompose_both and rank < max(a, c) / 2)
    full_w2 = not rank < max(b, d) / 2
    return (a, c), (b, d), full_w1, full_w2


class Lokr(NetworkKind):
    name = "lokr"
    label = "LoKr"
    summary = ("LyCORIS' Kronecker LoRA: the smallest files (often under 5 MB for SDXL), good "
               "for characters and styles. Loads in A1111/Forge, ComfyUI and LyCORIS; not in "
               "diffusers.")
    loads_in = ("Loads as trained in A1111/Forge, ComfyUI and LyCORIS (not its merge tool, which "
                "applies alpha / r twice); diffusers refuses LoKr.")
    network_module = "lycoris.kohya"
    required = ()
    optional = W1 + W2 + TUCKER
    peft_class = "LoKrConfig"
    options = ("lokr_factor", "decompose_both", "rank_dropout", "module_dropout", "use_tucker")

    def peft_arguments(self, network, targets, rank_pattern, alpha_pattern) -> dict[str, Any]:
        return {"r": network.rank, "alpha": network.alpha, "rank_dropout": network.rank_dropout,
                "module_dropout": network.module_dropout, "target_modules": targets,
                "init_weights": True, "use_effective_conv2d": network.use_tucker,
                "decompose_both": network.decompose_both,
                "decompose_factor": network.lokr_factor,
                "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}

    def after_inject(self, layer) -> None:
        if ADAPTER in layer.lokr_w1 and ADAPTER in layer.lokr_w2:  # both full: LyCORIS' scale 1
            layer.alpha[ADAPTER] = layer.r[ADAPTER]
            layer.scaling[ADAPTER] = 1.0

    def alpha_of(self, layer) -> float:
        return float(layer.alpha[ADAPTER])

    def tensors(self, layer) -> dict[str, Any]:
        return {part: getattr(layer, part)[ADAPTER] for part in W1 + W2 + TUCKER
                if ADAPTER in getattr(layer, part)}

    def network_args(self, network) -> dict[str, str]:
        return {"algo": "lokr", "factor": str(network.lokr_factor),
                "decompose_both": str(network.decompose_both),
                "use_tucker": str(network.use_tucker),
                "rank_dropout": f"{network.rank_dropout:g}",
                "module_dropout": f"{network.module_dropout:g}"}

    def parts_problem(self, shapes: dict[str, tuple[int, ...]]) -> str:
        for side, (full, low, high) in (("w1", W1), ("w2", W2)):
            if (full in shapes) == (low in shapes and high in shapes) or \
                    (full not in shapes and (low in shapes) != (high in shapes)):
                return (f"lokr_{side} needs either lokr_{side} or both lokr_{side}_a and "
                        f"lokr_{side}_b; the module has {sorted(s for s in shapes if side in s)}")
            tucker = side == "w2" and "lokr_t2" in shapes
            if tucker and full in shapes:
                return "lokr_t2 belongs to a decomposed lokr_w2, not beside a full one"
            if tucker and not (len(shapes["lokr_t2"]) == 4 and shapes["lokr_t2"][:2] == (
                    shapes[low][0], shapes[high][0])):
                return (f"lokr_t2 {list(shapes['lokr_t2'])} is not [r, r, kh, kw] for "
                        f"lokr_w2_a {list(shapes[low])} and lokr_w2_b {list(shapes[high])}")
            if full not in shapes and not tucker and shapes[low][1] != shapes[high][0]:
                return f"lokr_{side}_a {list(shapes[low])} and _b {list(shapes[high])} disagree"
        return ""

    def file_rank(self, shapes: dict[str, tuple[int, ...]]) -> int | None:
        """r from lokr_w1_b, else lokr_w2_b (ComfyUI's order); None when both are full."""
        for key in ("lokr_w1_b", "lokr_w2_b"):
            if key in shapes:
                return shapes[key][0]
        return None

    def delta(self, parts: dict[str, Any], alpha: float | None, shape: tuple[int, ...]):
        """ComfyUI's arithmetic: kron(w1, w2) x alpha / r, scale 1 when no factor has a rank."""
        w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"]
        elif "lokr_t2" in parts:  # Tucker: [b, d, kh, kw] from the core and two projections
            w2 = self.rebuild_tucker(parts["lokr_t2"], parts["lokr_w2_a"], parts["lokr_w2_b"])
        else:
            w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        rank = self.file_rank({k: tuple(v.shape) for k, v in parts.items()})
        scale = alpha / rank if alpha is not None and rank else 1.0
        return w1.kron(w2.contiguous()).reshape(shape) * scale  # kron fails on a strided w2

    def parameter_count(self, fan_in, fan_out, kernel, rank, network) -> int:
        (a, c), (b, d), full_w1, full_w2 = factor_shapes(fan_in, fan_out, rank,
                                                         network.lokr_factor,
                                                         network.decompose_both)
        kk = kernel[0] * kernel[1]
        first = a * c if full_w1 else rank * (a + c)
        if full_w2:
            second = b * d * kk
        elif network.use_tucker and kk > 1:  # a core [r, r, kh, kw] and [r, b] + [r, d]
            second = rank * rank * kk + rank * (b + d)
        else:
            second = rank * (b + d * kk)
        return first + second


KIND = Lokr()
