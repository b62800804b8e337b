"""The one key table between the original (ldm / SGM) checkpoint layout and diffusers.

A single-file SD checkpoint (what Civitai serves) stores every network in one flat dict:

    model.diffusion_model.*                          U-Net          -> UNet2DConditionModel
    first_stage_model.*                              VAE            -> AutoencoderKL
    cond_stage_model.transformer.text_model.*        SD 1.x CLIP    -> CLIPTextModel
    cond_stage_model.model.*                         SD 2.x OpenCLIP -> CLIPTextModel (23 layers)
    conditioner.embedders.0.transformer.text_model.* SDXL CLIP-L    -> CLIPTextModel
    conditioner.embedders.1.model.*                  SDXL OpenCLIP-bigG -> CLIPTextModelWithProjection

``build_key_table`` writes out every parameter name on both sides from the configs and the
family's text-encoder specs, and the same table is used in both directions (loading a
checkpoint, writing the tiny test models), so the two directions cannot drift apart. Three kinds
of tensor change shape on the way: the VAE mid-block attention q/k/v/proj_out (1x1 conv
``[C, C, 1, 1]`` in ldm, Linear ``[C, C]`` in diffusers), OpenCLIP's fused ``in_proj_weight``
(``[3D, D]``: q, k, v stacked) and its ``text_projection`` (``[D, P]``, the transpose of
``text_projection.weight``). The block arithmetic here (``input_block`` / ``output_block``) is
also how SDXL LoRA modules get their kohya SGM names (docs/lora-format.md).

Pure Python (no torch import): tensors are only reshaped through their own methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .family import Family, TextEncoderSpec

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."  # SD 1.x


@dataclass(frozen=True)
class KeyPair:
    component: str  # "unet" | "vae" | "text_encoder" | "text_encoder_2"
    ldm: str  # full key in the single-file checkpoint
    diffusers: str  # key in the component's state_dict
    conv1x1: bool = False  # ldm [C, C, 1, 1] <-> diffusers Linear [C, C]
    split: tuple[int, int] | None = None  # (i, n): the i-th of n equal row blocks of the ldm tensor
    transpose: bool = False  # ldm [D, P] <-> diffusers [P, D]


class KeyTable:
    """Both directions of the mapping. Every diffusers key appears once; an ldm key appears
    once, or n times for a tensor split into n (OpenCLIP's fused q/k/v)."""

    def __init__(self, pairs: Iterable[KeyPair]) -> None:
        self.pairs: list[KeyPair] = list(pairs)
        self.by_ldm: dict[str, list[KeyPair]] = {}
        self.by_diffusers: dict[tuple[str, str], KeyPair] = {}
        for p in self.pairs:
            group = self.by_ldm.setdefault(p.ldm, [])
            if group and (p.split is None or any(q.split is None or q.split == p.split for q in group)):
                raise ValueError(f"key table maps {p.ldm} twice")
            if (p.component, p.diffusers) in self.by_diffusers:
                raise ValueError(f"key table maps {p.component}:{p.diffusers} twice")
            group.append(p)
            self.by_diffusers[(p.component, p.diffusers)] = p

    def __len__(self) -> int:
        return len(self.pairs)

    def components(self) -> list[str]:
        return list(dict.fromkeys(p.component for p in self.pairs))

    def diffusers_keys(self, component: str) -> set[str]:
        return {p.diffusers for p in self.pairs if p.component == component}

    def ldm_keys(self) -> set[str]:
        return set(self.by_ldm)

    # -- one tensor --------------------------------------------------------------------------
    @staticmethod
    def tensor_to_diffusers(pair: KeyPair, t):
        if pair.conv1x1 and t.ndim == 4:
            return t.reshape(t.shape[0], t.shape[1])
        if pair.split is not None:
            index, count = pair.split
            rows = t.shape[0] // count
            return t[index * rows:(index + 1) * rows]
        if pair.transpose:
            return t.transpose(0, 1)
        return t

    @staticmethod
    def tensor_to_ldm(pair: KeyPair, t):
        if pair.conv1x1 and t.ndim == 2:
            return t.reshape(t.shape[0], t.shape[1], 1, 1)
        if pair.transpose:
            return t.transpose(0, 1)
        return t

    # -- whole state dicts ---------------------------------------------------------------------
    def to_ldm(self, components: dict[str, dict]) -> dict:
        """{component: diffusers state_dict} -> one ldm state dict. Strict both ways."""
        out, parts = {}, {}
        for comp, sd in components.items():
            expected = self.diffusers_keys(comp)
            missing, extra = expected - set(sd), set(sd) - expected
            if missing or extra:
                raise KeyError(f"{comp}: state dict does not match the key table "
                               f"(missing {sorted(missing)[:4]}, unexpected {sorted(extra)[:4]})")
            for key, t in sd.items():
                pair = self.by_diffusers[(comp, key)]
                if pair.split is None:
                    out[pair.ldm] = self.tensor_to_ldm(pair, t)
                else:
                    parts.setdefault(pair.ldm, {})[pair.split[0]] = t
        for ldm, pieces in parts.items():  # stack the row blocks back into one tensor
            count = self.by_ldm[ldm][0].split[1]
            first = pieces[0]
            rows = first.shape[0]
            fused = first.new_empty((rows * count, *first.shape[1:]))
            for index in range(count):
                fused[index * rows:(index + 1) * rows] = pieces[index]
            out[ldm] = fused
        return out

    def to_diffusers(self, ldm_sd: dict) -> dict[str, dict]:
        """One ldm state dict (only table keys) -> {component: diffusers state_dict}."""
        out: dict[str, dict] = {c: {} for c in self.components()}
        for key, t in ldm_sd.items():
            for pair in self.by_ldm[key]:
                out[pair.component][pair.diffusers] = self.tensor_to_diffusers(pair, t)
        return out


# ---------------------------------------------------------------------------------------------
# table construction


class _Builder:
    def __init__(self, component: str, ldm_prefix: str, dif_prefix: str = "") -> None:
        self.component, self.lp, self.dp = component, ldm_prefix, dif_prefix
        self.pairs: list[KeyPair] = []

    def key(self, ldm: str, dif: str, conv1x1: bool = False, *, split: tuple[int, int] | None = None,
            transpose: bool = False, root: bool = False) -> None:
        """``root``: the diffusers key sits outside the component prefix (text_projection)."""
        self.pairs.append(KeyPair(self.component, self.lp + ldm, (dif if root else self.dp + dif),
                                  conv1x1, split, transpose))

    def wb(self, ldm: str, dif: str, conv1x1: bool = False) -> None:
        self.key(f"{ldm}.weight", f"{dif}.weight", conv1x1)
        self.key(f"{ldm}.bias", f"{dif}.bias")


def _unet_resnet(b: _Builder, ldm: str, dif: str, shortcut: bool) -> None:
    b.wb(f"{ldm}.in_layers.0", f"{dif}.norm1")
    b.wb(f"{ldm}.in_layers.2", f"{dif}.conv1")
    b.wb(f"{ldm}.emb_layers.1", f"{dif}.time_emb_proj")
    b.wb(f"{ldm}.out_layers.0", f"{dif}.norm2")
    b.wb(f"{ldm}.out_layers.3", f"{dif}.conv2")
    if shortcut:
        b.wb(f"{ldm}.skip_connection", f"{dif}.conv_shortcut")


def _unet_transformer(b: _Builder, ldm: str, dif: str, depth: int) -> None:
    """SpatialTransformer / Transformer2DModel: identical names below the block prefix."""
    names = ["norm", "proj_in"]
    for t in range(depth):
        tb = f"transformer_blocks.{t}"
        for attn in ("attn1", "attn2"):
            names += [f"{tb}.{attn}.to_q.weight", f"{tb}.{attn}.to_k.weight", f"{tb}.{attn}.to_v.weight",
                      f"{tb}.{attn}.to_out.0"]
        names += [f"{tb}.norm1", f"{tb}.norm2", f"{tb}.norm3", f"{tb}.ff.net.0.proj", f"{tb}.ff.net.2"]
    names.append("proj_out")
    for n in names:
        if n.endswith(".weight"):
            b.key(f"{ldm}.{n}", f"{dif}.{n}")
        else:
            b.wb(f"{ldm}.{n}", f"{dif}.{n}")


def _as_list(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * n


def input_block(level: int, layer: int, layers_per_block: int) -> int:
    """SGM ``input_blocks.N`` of diffusers' ``down_blocks.level`` resnet/attention ``layer``
    (input block 0 is conv_in; each level has its layers and then a downsampler)."""
    return 1 + level * (layers_per_block + 1) + layer


def output_block(level: int, layer: int, layers_per_block: int) -> int:
    """SGM ``output_blocks.N`` of diffusers' ``up_blocks.level`` layer (one more per level)."""
    return level * (layers_per_block + 1) + layer


def unet_pairs(cfg: dict) -> list[KeyPair]:
    """U-Net keys for an SD 1.x / 2.x / SDXL UNet2DConditionModel config."""
    b = _Builder("unet", UNET_PREFIX)
    ch = list(cfg["block_out_channels"])
    n = len(ch)
    lpb = cfg["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("per-block layers_per_block is not an SD 1.x/2.x U-Net")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    depth = _as_list(cfg.get("transformer_layers_per_block", 1) or 1, n)
    mid_type = cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn"

    b.wb("time_embed.0", "time_embedding.linear_1")
    b.wb("time_embed.2", "time_embedding.linear_2")
    if cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled text + size ids
        b.wb("label_emb.0.0", "add_embedding.linear_1")
        b.wb("label_emb.0.2", "add_embedding.linear_2")
    b.wb("input_blocks.0.0", "conv_in")
    prev = ch[0]
    for i in range(n):
        for j in range(lpb):
            k = input_block(i, j, lpb)
            cin = prev if j == 0 else ch[i]
            _unet_resnet(b, f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", cin != ch[i])
            if "CrossAttn" in down[i]:
                _unet_transformer(b, f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", depth[i])
        if i < n - 1:
            b.wb(f"input_blocks.{(i + 1) * (lpb + 1)}.0.op", f"down_blocks.{i}.downsamplers.0.conv")
        prev = ch[i]

    _unet_resnet(b, "middle_block.0", "mid_block.resnets.0", False)
    if mid_type == "UNetMidBlock2DCrossAttn":
        _unet_transformer(b, "middle_block.1", "mid_block.attentions.0", depth[-1])
        _unet_resnet(b, "middle_block.2", "mid_block.resnets.1", False)
    else:
        _unet_resnet(b, "middle_block.1", "mid_block.resnets.1", False)

    rev_depth = depth[::-1]
    for i in range(n):
        has_attn = "CrossAttn" in up[i]
        for j in range(lpb + 1):
            k = output_block(i, j, lpb)
            # up-block resnets take the skip connection concatenated: always a shortcut conv
            _unet_resnet(b, f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", True)
            if has_attn:
                _unet_transformer(b, f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", rev_depth[i])
        if i < n - 1:
            k = output_block(i, lpb, lpb)
            b.wb(f"output_blocks.{k}.{2 if has_attn else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv")
    b.wb("out.0", "conv_norm_out")
    b.wb("out.2", "conv_out")
    return b.pairs


def unet_sgm_paths(cfg: dict) -> dict[str, str]:
    """diffusers module path -> original (SGM) module path for every U-Net weight, e.g.
    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``input_blocks.4.1.transformer_blocks.0.attn1.to_q`` in SDXL (kohya's SDXL LoRA names)."""
    out = {}
    for pair in unet_pairs(cfg):
        if pair.diffusers.endswith(".weight"):
            out[pair.diffusers[: -len(".weight")]] = pair.ldm[len(UNET_PREFIX): -len(".weight")]
    return out


def _vae_resnet(b: _Builder, ldm: str, dif: str, shortcut: bool) -> None:
    for n in ("norm1", "conv1", "norm2", "conv2"):
        b.wb(f"{ldm}.{n}", f"{dif}.{n}")
    if shortcut:
        b.wb(f"{ldm}.nin_shortcut", f"{dif}.conv_shortcut")


def _vae_mid(b: _Builder, side: str, c: int) -> None:
    _vae_resnet(b, f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", False)
    b.wb(f"{side}.mid.attn_1.norm", f"{side}.mid_block.attentions.0.group_norm")
    for ldm, dif in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        b.wb(f"{side}.mid.attn_1.{ldm}", f"{side}.mid_block.attentions.0.{dif}", conv1x1=True)
    _vae_resnet(b, f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", False)


def vae_pairs(cfg: dict) -> list[KeyPair]:
    """VAE keys for an AutoencoderKL config (SD 1.x / 2.x / XL share this layout)."""
    b = _Builder("vae", VAE_PREFIX)
    ch = list(cfg["block_out_channels"])
    n, lpb = len(ch), int(cfg["layers_per_block"])

    b.wb("encoder.conv_in", "encoder.conv_in")
    prev = ch[0]
    for i in range(n):
        for j in range(lpb):
            cin = prev if j == 0 else ch[i]
            _vae_resnet(b, f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", cin != ch[i])
        if i < n - 1:
            b.wb(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
        prev = ch[i]
    _vae_mid(b, "encoder", ch[-1])
    b.wb("encoder.norm_out", "encoder.conv_norm_out")
    b.wb("encoder.conv_out", "encoder.conv_out")
    b.wb("quant_conv", "quant_conv")
    b.wb("post_quant_conv", "post_quant_conv")

    b.wb("decoder.conv_in", "decoder.conv_in")
    _vae_mid(b, "decoder", ch[-1])
    rev = ch[::-1]
    prev = rev[0]
    for i in range(n):
        ldm_i = n - 1 - i  # ldm numbers decoder levels from the output side
        for j in range(lpb + 1):
            cin = prev if j == 0 else rev[i]
            _vae_resnet(b, f"decoder.up.{ldm_i}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", cin != rev[i])
        if i < n - 1:
            b.wb(f"decoder.up.{ldm_i}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
        prev = rev[i]
    b.wb("decoder.norm_out", "decoder.conv_norm_out")
    b.wb("decoder.conv_out", "decoder.conv_out")
    return b.pairs


def _hf_text_pairs(b: _Builder, cfg: dict) -> None:
    """CLIPTextModel keys as transformers stores them (SD 1.x, SDXL's CLIP-L)."""
    b.key("embeddings.token_embedding.weight", "embeddings.token_embedding.weight")
    b.key("embeddings.position_embedding.weight", "embeddings.position_embedding.weight")
    for layer in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layers.{layer}"
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                  "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2"):
            b.wb(f"{p}.{n}", f"{p}.{n}")
    b.wb("final_layer_norm", "final_layer_norm")


def _openclip_text_pairs(b: _Builder, cfg: dict, with_projection: bool) -> None:
    """OpenCLIP's text tower (SD 2.x, SDXL's bigG) in CLIPTextModel names."""
    b.key("token_embedding.weight", "embeddings.token_embedding.weight")
    b.key("positional_embedding", "embeddings.position_embedding.weight")
    for layer in range(int(cfg["num_hidden_layers"])):
        p, d = f"transformer.resblocks.{layer}", f"encoder.layers.{layer}"
        for index, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            b.key(f"{p}.attn.in_proj_weight", f"{d}.self_attn.{proj}.weight", split=(index, 3))
            b.key(f"{p}.attn.in_proj_bias", f"{d}.self_attn.{proj}.bias", split=(index, 3))
        b.wb(f"{p}.attn.out_proj", f"{d}.self_attn.out_proj")
        b.wb(f"{p}.ln_1", f"{d}.layer_norm1")
        b.wb(f"{p}.ln_2", f"{d}.layer_norm2")
        b.wb(f"{p}.mlp.c_fc", f"{d}.mlp.fc1")
        b.wb(f"{p}.mlp.c_proj", f"{d}.mlp.fc2")
    b.wb("ln_final", "final_layer_norm")
    if with_projection:
        b.key("text_projection", "text_projection.weight", transpose=True, root=True)


def text_pairs(spec: TextEncoderSpec, cfg: dict, te_prefix: str) -> list[KeyPair]:
    """One text encoder's keys. ``te_prefix`` is what the installed model puts before
    ``embeddings.``: "text_model." in transformers 4 (and CLIPTextModelWithProjection in 5),
    "" for transformers 5's CLIPTextModel."""
    b = _Builder(spec.component, spec.ldm_prefix, te_prefix)
    if spec.layout == "openclip":
        _openclip_text_pairs(b, cfg, spec.with_projection)
    else:
        _hf_text_pairs(b, cfg)
    return b.pairs


def build_key_table(family: Family, unet_config: dict, vae_config: dict,
                    text_configs: dict[str, dict], te_prefixes: dict[str, str]) -> KeyTable:
    """The table of one model: U-Net, VAE and each of the family's text encoders
    (``text_configs`` / ``te_prefixes`` keyed by component)."""
    pairs = unet_pairs(unet_config) + vae_pairs(vae_config)
    for spec in family.text_encoders:
        pairs += text_pairs(spec, text_configs[spec.component], te_prefixes[spec.component])
    return KeyTable(pairs)


# Keys a checkpoint may carry that no model parameter corresponds to.
_IGNORED_EXACT = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights", "v_pred", "ztsnr",
}
_IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.", "denoiser.")


def ignorable_keys(family: Family, keys, text_layers: dict[str, int]) -> set[str]:
    """The keys of a single file that hold no network weight: schedule buffers, EMA copies,
    CLIP's position_ids, OpenCLIP's logit_scale / attn_mask, an unused text_projection, and the
    OpenCLIP layers the family drops (``text_layers``: component -> layers the model has)."""
    out = {k for k in keys if k in _IGNORED_EXACT or k.startswith(_IGNORED_PREFIXES)}
    for spec in family.text_encoders:
        p = spec.ldm_prefix
        extra = {p + "embeddings.position_ids", p + "logit_scale", p + "attn_mask"}
        if not spec.with_projection:
            extra.add(p + "text_projection")
        layers = text_layers.get(spec.component)
        for k in keys:
            if k in extra:
                out.add(k)
            elif layers is not None and spec.layout == "openclip" and k.startswith(p + "transformer.resblocks."):
                if int(k[len(p + "transformer.resblocks."):].split(".")[0]) >= layers:
                    out.add(k)
    return out
