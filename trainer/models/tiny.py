"""make_tiny_model: a tiny random SD 1.x-shaped model for tests and the CPU demo preset.

Same architecture family as SD 1.5 (three U-Net levels instead of four, narrow widths, the
real 49,408-token CLIP tokenizer, 8x VAE downsampling, the SD 1.5 noise schedule), built and
saved in well under a second. Saved as a diffusers folder and, on request, as one ldm-layout
.safetensors written through the same key table the loader uses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from . import defaults  # noqa: E402
from .key_map import TEXT_PREFIX, build_key_table  # noqa: E402
from .loading import build_text_encoder, build_unet, build_vae, text_key_prefix  # noqa: E402


def tiny_unet_config() -> dict:
    cfg = defaults.strip_private(defaults.sd15_unet_config())
    cfg.update(
        block_out_channels=[32, 64, 64],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
        sample_size=8,
    )
    return cfg


def tiny_vae_config() -> dict:
    cfg = defaults.strip_private(defaults.sd15_vae_config())
    cfg.update(
        block_out_channels=[32, 32, 64, 64],  # 4 levels: 8x downsampling, like SD
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    return cfg


def tiny_text_config() -> dict:
    cfg = defaults.strip_private(defaults.sd15_text_config())
    cfg.update(hidden_size=64, num_hidden_layers=2, intermediate_size=128,
               num_attention_heads=64 // defaults.CLIP_HEAD_WIDTH, vocab_size=49408,
               max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64)
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
    """Scale the latent mean so that `scaling_factor` (SD's 0.18215) gives latents of unit
    spread, as it does for the real SD VAE. A random VAE's latents are ~50x too small, which
    turns training into learning a noise gain instead of the images."""
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


def make_tiny_model(out_dir: Path, *, single_file: Path | None = None, seed: int = 0) -> None:
    """Write a tiny random SD 1.x model as a diffusers folder at ``out_dir``; with
    ``single_file``, also the same weights as one ldm-layout fp32 .safetensors."""
    write_random_model(out_dir, tiny_unet_config(), tiny_vae_config(), tiny_text_config(),
                       single_file=single_file, seed=seed)


def make_sd15_random_model(out_dir: Path, *, seed: int = 0) -> None:
    """The real SD 1.5 layout and widths with random weights (benchmarks; ~4 GB on disk)."""
    write_random_model(out_dir, defaults.strip_private(defaults.sd15_unet_config()),
                       defaults.strip_private(defaults.sd15_vae_config()),
                       defaults.strip_private(defaults.sd15_text_config()), seed=seed)


def write_random_model(out_dir: Path, unet_cfg: dict, vae_cfg: dict, text_cfg: dict, *,
                       single_file: Path | None = None, seed: int = 0) -> None:
    """Build U-Net, VAE and CLIP text encoder from configs with seeded random weights and save
    them as a diffusers folder (and optionally one ldm-layout file)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = build_unet(unet_cfg, empty=False)
    vae = build_vae(vae_cfg, empty=False)
    te = build_text_encoder(text_cfg, empty=False)
    for m in (unet, vae, te):
        _perturb_constants(m)
        m.eval()
    _calibrate_vae(vae)

    save_diffusers_folder(out_dir, unet, vae, te)

    if single_file is not None:
        table = build_key_table(unet_cfg, vae_cfg, text_cfg, text_key_prefix(te))
        ldm = table.to_ldm({"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": te.state_dict()})
        ldm = {k: v.detach().to(torch.float32).contiguous() for k, v in ldm.items()}
        ldm[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(text_cfg["max_position_embeddings"])[None]
        single_file = Path(single_file)
        single_file.parent.mkdir(parents=True, exist_ok=True)
        save_file(ldm, str(single_file), metadata={"format": "pt"})


def save_diffusers_folder(out_dir: Path, unet, vae, text_encoder) -> None:
    """Write the three networks, the CLIP tokenizer, the SD 1.5 scheduler and model_index.json
    as a diffusers folder that `load_base_model` (and diffusers itself) reads."""
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    vae.save_pretrained(out_dir / "vae", safe_serialization=True)
    te_dir = out_dir / "text_encoder"
    te_dir.mkdir(parents=True, exist_ok=True)
    text_encoder.config.save_pretrained(te_dir)
    te_sd = {k: v.contiguous() for k, v in text_encoder.state_dict().items()}
    save_file(te_sd, str(te_dir / "model.safetensors"), metadata={"format": "pt"})

    tok_dir = out_dir / "tokenizer"
    CLIPTokenizer.from_pretrained(str(defaults.CLIP_TOKENIZER_DIR), local_files_only=True).save_pretrained(str(tok_dir))
    for name in ("vocab.json", "merges.txt"):  # so transformers 4's slow tokenizer reads it too
        if not (tok_dir / name).exists():
            shutil.copyfile(defaults.CLIP_TOKENIZER_DIR / name, tok_dir / name)
    _write_json(out_dir / "scheduler" / "scheduler_config.json", defaults.sd15_scheduler_config())
    _write_json(out_dir / "model_index.json", defaults.sd15_model_index())
