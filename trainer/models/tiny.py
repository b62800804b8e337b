"""make_tiny_model: tiny random models of every family, for tests, trials and the CPU demo.

Each has its family's architecture (SD 1.x: three U-Net levels instead of four; SD 2.x: Linear
proj_in/out, an OpenCLIP-style gelu text encoder whose single file carries the extra 24th-style
layer SD 2 drops; SDXL: three levels with two layers each, so the SGM block indices are the real
ones, per-level transformer depth, two text encoders of different widths and the size-id
embedding), narrow widths, the real 49,408-token CLIP tokenizer, 8x VAE downsampling and the SD
noise schedule, built and saved in about a second. Saved as a diffusers folder and, on request,
as one single-file checkpoint written through the same key table the loader reads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from trainer.families import Family, get_family  # noqa: E402
from trainer.families.checkpoint_keys import build_key_table  # noqa: E402
from trainer.families.family import CLIP_TOKENIZER_DIR  # noqa: E402

from .loading import build_text_encoder, build_unet, build_vae, text_key_prefix  # noqa: E402

_TINY_UNET = {
    "sd1": dict(block_out_channels=[32, 64, 64], layers_per_block=1, cross_attention_dim=64,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
    "sd2": dict(block_out_channels=[32, 64, 64], layers_per_block=1, cross_attention_dim=64,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
    # SDXL: input blocks 4, 5, 7, 8 and output blocks 0-5 hold attention, as in the real model;
    # context = 32 + 64 (the two encoders), size ids 6 x 8 wide after the 64-wide pooled text.
    "sdxl": dict(block_out_channels=[32, 64, 64], layers_per_block=2, cross_attention_dim=96,
                 transformer_layers_per_block=[1, 1, 2], addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=64 + 6 * 8),
}
_TINY_TEXT = {  # component -> (hidden, intermediate); two layers each
    ("sd1", "text_encoder"): (64, 128),
    ("sd2", "text_encoder"): (64, 128),
    ("sdxl", "text_encoder"): (32, 64),      # different widths: a swapped encoder shows
    ("sdxl", "text_encoder_2"): (64, 128),
}


def tiny_unet_config(family: Family) -> dict:
    cfg = family.config("unet")
    cfg.update(_TINY_UNET[family.name], norm_num_groups=32, sample_size=8)
    cfg["attention_head_dim"] = family.heads_for(cfg["block_out_channels"])
    return cfg


def tiny_vae_config(family: Family) -> dict:
    cfg = family.config("vae")
    cfg.update(block_out_channels=[32, 32, 64, 64],  # 4 levels: 8x downsampling, like SD
               layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64)
    return cfg


def tiny_text_config(family: Family, component: str = "text_encoder") -> dict:
    hidden, inner = _TINY_TEXT[(family.name, component)]
    cfg = family.config(component)
    cfg.update(hidden_size=hidden, num_hidden_layers=2, intermediate_size=inner,
               num_attention_heads=max(1, hidden // 64), vocab_size=49408,
               max_position_embeddings=77, projection_dim=hidden)
    return cfg


@torch.no_grad()
def _perturb_constants(module: torch.nn.Module) -> None:
    """Give every constant tensor (zero-initialised outputs, norm scales of 1, zero biases)
    small random values, so outputs depend on every parameter and a swapped key shows."""
    for p in module.parameters():
        if p.numel() and bool((p == p.reshape(-1)[0]).all()):
            p.add_(torch.randn_like(p) * 0.05)


@torch.no_grad()
def _calibrate_vae(vae: torch.nn.Module) -> None:
    """Scale the latent mean so that `scaling_factor` gives latents of unit spread, as it does
    for the real SD VAE. A random VAE's latents are ~50x too small, which turns training into
    learning a noise gain instead of the images."""
    generator = torch.Generator().manual_seed(1)
    blocks = torch.rand(8, 3, 8, 8, generator=generator) * 2 - 1  # flat colour patches
    probe = torch.nn.functional.interpolate(blocks, scale_factor=8, mode="nearest")
    spread = vae.encode(probe).latent_dist.mean.std() * vae.config.scaling_factor
    gain = 1.0 / float(spread)
    channels = vae.config.latent_channels  # quant_conv's first half is the mean, second logvar
    vae.quant_conv.weight[:channels] *= gain
    vae.quant_conv.bias[:channels] *= gain
    vae.post_quant_conv.weight /= gain  # the decoder sees what it saw before


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def make_tiny_model(out_dir: Path, *, single_file: Path | None = None, seed: int = 0,
                    family: str = "sd1", prediction_type: str = "epsilon") -> None:
    """Write a tiny random model of ``family`` ("sd1", "sd2", "sdxl") as a diffusers folder at
    ``out_dir``; with ``single_file``, also the same weights as one fp32 single-file checkpoint.
    ``prediction_type="v_prediction"`` marks it as a v-prediction model (scheduler config and
    the single file's ``v_pred`` key)."""
    spec = get_family(family)
    text = {s.component: tiny_text_config(spec, s.component) for s in spec.text_encoders}
    write_random_model(out_dir, spec, tiny_unet_config(spec), tiny_vae_config(spec), text,
                       single_file=single_file, seed=seed, prediction_type=prediction_type)


def make_random_model(out_dir: Path, family: str = "sd1", *, seed: int = 0) -> None:
    """The family's real layout and widths with random weights (benchmarks; SD 1.5 ~4 GB)."""
    spec = get_family(family)
    text = {s.component: spec.config(s.component) for s in spec.text_encoders}
    write_random_model(out_dir, spec, spec.config("unet"), spec.config("vae"), text, seed=seed)


def write_random_model(out_dir: Path, family: Family, unet_cfg: dict, vae_cfg: dict,
                       text_cfgs: dict[str, dict], *, single_file: Path | None = None, seed: int = 0,
                       prediction_type: str = "epsilon") -> None:
    """Build the U-Net, VAE and text encoders from configs with seeded random weights and save
    them as a diffusers folder (and optionally one single-file checkpoint)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = build_unet(unet_cfg, empty=False)
    vae = build_vae(vae_cfg, empty=False)
    encoders = {s.component: build_text_encoder(text_cfgs[s.component], empty=False,
                                                with_projection=s.with_projection)
                for s in family.text_encoders}
    for m in (unet, vae, *encoders.values()):
        _perturb_constants(m)
        m.eval()
    _calibrate_vae(vae)

    save_diffusers_folder(out_dir, family, unet, vae, encoders, prediction_type=prediction_type)
    if single_file is None:
        return
    table = build_key_table(family, unet_cfg, vae_cfg, text_cfgs,
                            {c: text_key_prefix(m) for c, m in encoders.items()})
    ldm = table.to_ldm({"unet": unet.state_dict(), "vae": vae.state_dict(),
                        **{c: m.state_dict() for c, m in encoders.items()}})
    ldm = {k: v.detach().to(torch.float32).contiguous() for k, v in ldm.items()}
    ldm.update(_single_file_extras(family, ldm, text_cfgs))
    if prediction_type == "v_prediction":
        ldm["v_pred"] = torch.tensor([])
    single_file = Path(single_file)
    single_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm, str(single_file), metadata={"format": "pt"})


def _single_file_extras(family: Family, ldm: dict, text_cfgs: dict[str, dict]) -> dict:
    """What real single files carry beside the weights: CLIP's position_ids, OpenCLIP's
    logit_scale, and SD 2's unused 24th layer (here: a scaled copy of the last one)."""
    extras = {}
    for spec in family.text_encoders:
        p, layers = spec.ldm_prefix, text_cfgs[spec.component]["num_hidden_layers"]
        if spec.layout == "hf":
            extras[p + "embeddings.position_ids"] = torch.arange(
                text_cfgs[spec.component]["max_position_embeddings"])[None]
            continue
        extras[p + "logit_scale"] = torch.tensor(4.6052)
        last = f"{p}transformer.resblocks.{layers - 1}."
        for extra in range(spec.dropped_layers):
            for key in [k for k in ldm if k.startswith(last)]:
                extras[key.replace(last, f"{p}transformer.resblocks.{layers + extra}.")] = ldm[key] * 1.01
    return extras


def save_diffusers_folder(out_dir: Path, family: Family, unet, vae, encoders: dict, *,
                          prediction_type: str = "epsilon") -> None:
    """Write the networks, the CLIP tokenizer(s), the family's scheduler and model_index.json
    as a diffusers folder that `load_base_model` (and diffusers itself) reads."""
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    vae.save_pretrained(out_dir / "vae", safe_serialization=True)
    for spec in family.text_encoders:
        model = encoders[spec.component]
        te_dir = out_dir / spec.component
        te_dir.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(te_dir)
        te_sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(te_sd, str(te_dir / "model.safetensors"), metadata={"format": "pt"})

        tok_dir = out_dir / spec.tokenizer_component
        extra = {"pad_token": spec.pad_token} if spec.pad_token else {}
        CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), local_files_only=True,
                                      **extra).save_pretrained(str(tok_dir))
        for name in ("vocab.json", "merges.txt"):  # so transformers 4's slow tokenizer reads it too
            if not (tok_dir / name).exists():
                shutil.copyfile(CLIP_TOKENIZER_DIR / name, tok_dir / name)
    scheduler = family.config("scheduler", bookkeeping=True)
    scheduler["prediction_type"] = prediction_type
    _write_json(out_dir / "scheduler" / "scheduler_config.json", scheduler)
    _write_json(out_dir / "model_index.json", family.config("model_index", bookkeeping=True))
