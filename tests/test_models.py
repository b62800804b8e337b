"""trainer.models: detection, offline loading (folder / single file / .ckpt), the ldm<->diffusers
key table, the tiny model and the shipped CLIP tokenizer. Asserts on numbers throughout."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer.models import ModelError, detect_architecture, load_base_model, make_tiny_model
from trainer.families import get_family
from trainer.families.checkpoint_keys import TEXT_PREFIX, build_key_table
from trainer.families.family import CLIP_TOKENIZER_DIR
from trainer.families.config_inference import infer_text_config, infer_unet_config, infer_vae_config
from trainer.models.loading import build_text_encoder, build_unet, build_vae, text_key_prefix

COMPONENTS = ("unet", "vae", "text_encoder")
SD1 = get_family("sd1")


@pytest.fixture(scope="session")
def tiny(tiny_model):
    """(diffusers folder, ldm single file), built once per session by conftest.tiny_model."""
    return tiny_model


@pytest.fixture(scope="session")
def tiny_from_folder(tiny):
    return load_base_model(tiny[0])


def assert_same_weights(a, b):
    for comp in COMPONENTS:
        sa, sb = getattr(a, comp).state_dict(), getattr(b, comp).state_dict()
        assert sa.keys() == sb.keys(), comp
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{comp}.{k}"


@torch.no_grad()
def outputs(m):
    ids = m.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ctx = m.text_encoder(ids)[0]
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    noise_pred = m.unet(latents, torch.tensor([500]), encoder_hidden_states=ctx).sample
    image = torch.randn(1, 3, 64, 64, generator=g)
    posterior = m.vae.encode(image).latent_dist.mean
    decoded = m.vae.decode(latents).sample
    return {"ctx": ctx, "noise_pred": noise_pred, "posterior": posterior, "decoded": decoded}


# -- folder vs single file ---------------------------------------------------------------------

def test_folder_and_single_file_are_identical(tiny, tiny_from_folder):
    folder, file = tiny
    a, b = tiny_from_folder, load_base_model(file)
    assert_same_weights(a, b)
    oa, ob = outputs(a), outputs(b)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    assert oa["noise_pred"].shape == (1, 4, 8, 8) and oa["ctx"].shape == (1, 77, 64)
    assert oa["posterior"].shape == (1, 4, 8, 8) and oa["decoded"].shape == (1, 3, 64, 64)
    assert float(oa["noise_pred"].std()) > 1e-3
    assert (a.family, b.family) == ("sd1", "sd1")
    assert a.prediction_type == b.prediction_type == "epsilon"
    for m in (a, b):
        sched = m.noise_scheduler
        assert type(sched).__name__ == "DDPMScheduler"
        assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "scaled_linear"
        assert abs(float(sched.betas[0]) - 0.00085) < 1e-9 and abs(float(sched.betas[-1]) - 0.012) < 1e-9
        assert not any(p.requires_grad for p in m.unet.parameters())
    assert a.source_sha256 is None
    assert b.source_sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
    assert a.vae_scale_factor == 8 and a.vae_scaling_factor == pytest.approx(0.18215)


def test_tiny_model_depends_on_every_layer(tiny):
    """No constant tensor survives in the tiny model (zero-initialised outputs are perturbed)."""
    sd = load_file(tiny[1])
    const = [k for k, t in sd.items() if t.is_floating_point() and t.numel() > 1 and bool((t == t.flatten()[0]).all())]
    assert const == []


def test_tiny_model_is_deterministic(tmp_path, tiny):
    make_tiny_model(tmp_path / "again", single_file=tmp_path / "again.safetensors", seed=0)
    assert hashlib.sha256((tmp_path / "again.safetensors").read_bytes()).digest() == \
        hashlib.sha256(tiny[1].read_bytes()).digest()
    make_tiny_model(tmp_path / "other", single_file=tmp_path / "other.safetensors", seed=1)
    a, b = load_file(tiny[1]), load_file(tmp_path / "other.safetensors")
    assert not torch.equal(a[TEXT_PREFIX + "final_layer_norm.weight"], b[TEXT_PREFIX + "final_layer_norm.weight"])


def test_fp16_single_file_loads_as_fp32(tmp_path, tiny, tiny_from_folder):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(tiny[1]).items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    m = load_base_model(tmp_path / "half.safetensors", dtype=torch.float32)
    ref = tiny_from_folder.unet.state_dict()
    for k, v in m.unet.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, ref[k].half().float()), k


def test_transformers4_style_folder_loads(tmp_path, tiny, tiny_from_folder):
    """A folder saved by transformers 4 stores the text encoder under 'text_model.'; an old
    diffusers VAE names its mid attention query/key/value/proj_attn. Both must load fully."""
    import shutil

    folder = tmp_path / "tf4"
    shutil.copytree(tiny[0], folder)
    te_file = folder / "text_encoder" / "model.safetensors"
    te = load_file(te_file)
    te = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in te.items()}
    te["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(te, str(te_file))
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    vae = {}
    for k, v in load_file(vae_file).items():
        for new, old in legacy.items():
            k = k.replace(f"mid_block.attentions.0.{new}.", f"mid_block.attentions.0.{old}.")
        vae[k] = v
    assert any(".query." in k for k in vae)
    save_file(vae, str(vae_file))
    assert_same_weights(load_base_model(folder), tiny_from_folder)


# -- .ckpt ---------------------------------------------------------------------------------------

def test_ckpt_loads_with_weights_only(tmp_path, tiny, tiny_from_folder):
    sd = load_file(tiny[1])
    torch.save({"state_dict": sd, "global_step": 1234}, tmp_path / "tiny.ckpt")
    assert detect_architecture(tmp_path / "tiny.ckpt") == "sd1"
    assert_same_weights(load_base_model(tmp_path / "tiny.ckpt"), tiny_from_folder)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": _Evil(marker)}, tmp_path / "evil.ckpt")
    assert not marker.exists()
    for fn in (detect_architecture, load_base_model):
        with pytest.raises(ModelError, match="evil.ckpt") as e:
            fn(tmp_path / "evil.ckpt")
        assert "unsafe" in str(e.value) and ".safetensors" in str(e.value)
        assert "weights_only" not in str(e.value)  # never advice to run the pickle (#15)
    assert not marker.exists()


def test_a_checkpoint_whose_state_is_a_hostile_pickle_is_refused_without_torchs_advice(
        tmp_path: Path) -> None:
    """torch's own message suggests re-running with weights_only=False: running the pickle."""
    from trainer.checkpoint import CheckpointError, load_checkpoint

    folder = tmp_path / "run" / "checkpoints" / "step-000002"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"step": 2, "epoch": 0, "batch_in_epoch": 2, '
                                       '"total_steps": 4}')
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(folder / "lora.safetensors"))
    marker = tmp_path / "pwned"
    torch.save({"evil": _Evil(marker)}, folder / "training_state.pt")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "run")
    message = str(refused.value)
    assert "is damaged (its training state holds objects that are not plain tensors)" in message
    assert "weights_only" not in message and not marker.exists()


# -- the key table -------------------------------------------------------------------------------

def _meta_models(unet_cfg, vae_cfg, text_cfg):
    with torch.device("meta"):
        return build_unet(unet_cfg, empty=False), build_vae(vae_cfg, empty=False), build_text_encoder(text_cfg, empty=False)


def _check_table(unet_cfg, vae_cfg, text_cfg):
    unet, vae, te = _meta_models(unet_cfg, vae_cfg, text_cfg)
    table = build_key_table(SD1, unet_cfg, vae_cfg, {"text_encoder": text_cfg},
                            {"text_encoder": text_key_prefix(te)})
    sds = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": te.state_dict()}
    for comp, sd in sds.items():  # every parameter exactly once
        assert table.diffusers_keys(comp) == set(sd), comp
    assert len(table) == sum(len(sd) for sd in sds.values()) == len(table.ldm_keys())
    ldm = table.to_ldm(sds)  # round trip, names and shapes
    back = table.to_diffusers(ldm)
    for comp, sd in sds.items():
        assert back[comp].keys() == sd.keys()
        assert all(back[comp][k].shape == sd[k].shape for k in sd), comp
    for pair in table.pairs:
        assert table.by_ldm[pair.ldm] == [table.by_diffusers[(pair.component, pair.diffusers)]]
    return table, ldm, sds


def test_key_table_tiny_config():
    from trainer.models.tiny import tiny_text_config, tiny_unet_config, tiny_vae_config

    table, ldm, _ = _check_table(tiny_unet_config(SD1), tiny_vae_config(SD1), tiny_text_config(SD1))
    assert len(table) == 540


def test_key_table_sd15_and_shape_inference():
    ucfg, vcfg, tcfg = (SD1.config(c) for c in ("unet", "vae", "text_encoder"))
    table, ldm, sds = _check_table(ucfg, vcfg, tcfg)
    assert len(table) == 686 + 248 + 196
    te_prefix = table.by_ldm[TEXT_PREFIX + "final_layer_norm.weight"][0].diffusers[: -len("final_layer_norm.weight")]
    assert te_prefix in ("", "text_model.")  # transformers 5 / 4
    spot = {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
            ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
        "model.diffusion_model.output_blocks.11.1.proj_out.weight":
            ("unet", "up_blocks.3.attentions.2.proj_out.weight", (320, 320, 1, 1)),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight":
            ("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight", (1280, 768)),
        "model.diffusion_model.input_blocks.3.0.op.weight": ("unet", "down_blocks.0.downsamplers.0.conv.weight", (320, 320, 3, 3)),
        "model.diffusion_model.output_blocks.2.1.conv.weight": ("unet", "up_blocks.0.upsamplers.0.conv.weight", (1280, 1280, 3, 3)),
        "model.diffusion_model.output_blocks.8.2.conv.weight": ("unet", "up_blocks.2.upsamplers.0.conv.weight", (640, 640, 3, 3)),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": ("unet", "down_blocks.1.resnets.0.conv_shortcut.weight", (640, 320, 1, 1)),
        "model.diffusion_model.time_embed.2.bias": ("unet", "time_embedding.linear_2.bias", (1280,)),
        "first_stage_model.encoder.mid.attn_1.q.weight": ("vae", "encoder.mid_block.attentions.0.to_q.weight", (512, 512, 1, 1)),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": ("vae", "decoder.mid_block.attentions.0.to_out.0.weight", (512, 512, 1, 1)),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": ("vae", "decoder.up_blocks.3.resnets.0.conv_shortcut.weight", (128, 256, 1, 1)),
        "first_stage_model.decoder.up.3.upsample.conv.weight": ("vae", "decoder.up_blocks.0.upsamplers.0.conv.weight", (512, 512, 3, 3)),
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight":
            ("text_encoder", te_prefix + "encoder.layers.11.self_attn.q_proj.weight", (768, 768)),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":
            ("text_encoder", te_prefix + "embeddings.token_embedding.weight", (49408, 768)),
    }
    for ldm_key, (comp, dif_key, shape) in spot.items():
        pair, = table.by_ldm[ldm_key]
        assert (pair.component, pair.diffusers) == (comp, dif_key)
        assert tuple(ldm[ldm_key].shape) == shape, ldm_key
    assert tuple(sds["vae"]["encoder.mid_block.attentions.0.to_q.weight"].shape) == (512, 512)

    # the config inferred from the ldm shapes alone is the SD 1.5 config
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    u = infer_unet_config(shapes, Path("sd15.safetensors"), SD1)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                "cross_attention_dim", "attention_head_dim", "in_channels", "out_channels"):
        listify = lambda x: list(x) if isinstance(x, (list, tuple)) else x  # noqa: E731
        assert listify(u[key]) == listify(ucfg[key]), key
    assert u["use_linear_projection"] is False and u["transformer_layers_per_block"] == 1
    v = infer_vae_config(shapes, Path("sd15.safetensors"), SD1)
    assert v["block_out_channels"] == [128, 256, 512, 512] and v["layers_per_block"] == 2 and v["latent_channels"] == 4
    t = infer_text_config(shapes, Path("sd15.safetensors"), SD1, SD1.text_encoders[0])
    assert (t["hidden_size"], t["num_hidden_layers"], t["intermediate_size"], t["num_attention_heads"],
            t["vocab_size"], t["max_position_embeddings"]) == (768, 12, 3072, 12, 49408, 77)


def test_single_file_key_strictness(tmp_path, tiny):
    sd = load_file(tiny[1])
    harmless = dict(sd, betas=torch.zeros(1000), alphas_cumprod=torch.zeros(1000),
                    **{"model_ema.decay": torch.tensor(0.9999)})
    save_file(harmless, str(tmp_path / "harmless.safetensors"))
    m = load_base_model(tmp_path / "harmless.safetensors")
    assert m.unet.conv_in.weight.shape == (32, 4, 3, 3)

    extra = dict(sd, **{"model.diffusion_model.extra_net.weight": torch.zeros(2)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ModelError, match=r"extra\.safetensors.*extra_net\.weight"):
        load_base_model(tmp_path / "extra.safetensors")

    gone = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    missing = {k: v for k, v in sd.items() if k != gone}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match=r"missing\.safetensors.*output_blocks\.4\.1\.transformer_blocks\.0\.attn1\.to_q"):
        load_base_model(tmp_path / "missing.safetensors")


# -- detection -----------------------------------------------------------------------------------

def _fake(path, keys_shapes, metadata=None):
    save_file({k: torch.zeros(s) for k, s in keys_shapes.items()}, str(path), metadata=metadata)
    return path


def test_detect_tiny(tiny):
    assert detect_architecture(tiny[0]) == "sd1"
    assert detect_architecture(tiny[1]) == "sd1"


def test_detect_sdxl_and_sd2(tmp_path):
    sdxl = _fake(tmp_path / "model.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": (4, 8),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 4),
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (12, 4),
        "first_stage_model.encoder.conv_in.weight": (4, 3, 3, 3),
    })
    sd2 = _fake(tmp_path / "v2.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (4, 1024),
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (12, 4),
        "cond_stage_model.model.token_embedding.weight": (8, 4),
    })
    assert detect_architecture(sdxl) == "sdxl"
    assert detect_architecture(sd2) == "sd2"
    # recognised, and then refused for what is missing, naming the family (not "not SD 1.x")
    with pytest.raises(ModelError, match=r"^model\.safetensors has a U-Net layout .*pick an SDXL checkpoint"):
        load_base_model(sdxl)
    with pytest.raises(ModelError, match=r"^v2\.safetensors has no U-Net weights .*pick a complete SD 2\.x checkpoint"):
        load_base_model(sd2)


def test_detect_refuses_non_models(tmp_path, tiny):
    lora = _fake(tmp_path / "my_style.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": (4, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": (320, 4),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": (),
    })
    text = tmp_path / "notes.safetensors"
    text.write_text("these are my notes, not a model\n" * 10)
    truncated = tmp_path / "half.safetensors"
    data = tiny[1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cut_header = tmp_path / "cut.safetensors"
    cut_header.write_bytes(data[:100])
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((200 * 1000 * 1000).to_bytes(8, "little") + b"{}")
    cases = {lora: "LoRA", text: "not a safetensors", truncated: "truncated", cut_header: "truncated",
             empty: "truncated", huge: "not a safetensors"}
    for path, words in cases.items():
        for fn in (detect_architecture, load_base_model):
            with pytest.raises(ModelError) as e:
                fn(path)
            msg = str(e.value)
            assert msg.startswith(path.name) and words in msg and "\n" not in msg, msg
            assert e.value.path == path


def test_folder_errors(tmp_path, tiny):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ModelError, match=r"folder nothing has no unet/ subfolder"):
        load_base_model(tmp_path / "nothing")
    with pytest.raises(ModelError, match=r"missing\.safetensors does not exist"):
        detect_architecture(tmp_path / "missing.safetensors")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny[0], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"has no weights file"):
        load_base_model(broken)
    xl = tmp_path / "xl"
    shutil.copytree(tiny[0], xl)
    cfg = json.loads((xl / "unet" / "config.json").read_text())
    cfg.update(addition_embed_type="text_time", cross_attention_dim=2048)
    (xl / "unet" / "config.json").write_text(json.dumps(cfg))
    assert detect_architecture(xl) == "sdxl"
    with pytest.raises(ModelError, match=r"folder xl has no text_encoder_2/config\.json"):
        load_base_model(xl)


def test_detect_reads_only_the_header(tmp_path, tiny):
    """A header with garbage tensor bytes still detects: no tensor data is read."""
    with safe_open(str(tiny[1]), "pt") as f:
        keys = list(f.keys())
    raw = tiny[1].read_bytes()
    n = int.from_bytes(raw[:8], "little")
    garbage = raw[: 8 + n] + bytes([0xFF]) * (len(raw) - 8 - n)
    (tmp_path / "garbage.safetensors").write_bytes(garbage)
    assert len(keys) == 541 and detect_architecture(tmp_path / "garbage.safetensors") == "sd1"


# -- tokenizer and import cost ------------------------------------------------------------------

def test_clip_tokenizer_assets():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), local_files_only=True)
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77 and tok.pad_token_id == 49407
    vocab = json.loads((CLIP_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["cat</w>"] == 2368
    merges = (CLIP_TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894


def test_import_is_light():
    code = ("import sys, trainer.models; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'PySide6') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_full_size_sd15_layout_loads(tmp_path):
    """A file with the exact SD 1.5 keys and shapes (zeros, fp16, ~2 GB) loads through the
    shape-inference path into an 859.52 M-parameter U-Net. Run with -m slow."""
    ucfg, vcfg, tcfg = (SD1.config(c) for c in ("unet", "vae", "text_encoder"))
    unet, vae, te = _meta_models(ucfg, vcfg, tcfg)
    table = build_key_table(SD1, ucfg, vcfg, {"text_encoder": tcfg}, {"text_encoder": text_key_prefix(te)})
    ldm = table.to_ldm({"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": te.state_dict()})
    sd = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in ldm.items()}
    sd[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(77)[None]
    save_file(sd, str(tmp_path / "v1-5.safetensors"))
    del sd
    assert detect_architecture(tmp_path / "v1-5.safetensors") == "sd1"
    m = load_base_model(tmp_path / "v1-5.safetensors")
    assert sum(p.numel() for p in m.unet.parameters()) == 859_520_964
    assert list(m.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert m.text_encoder.config.num_attention_heads == 12 and m.unet.dtype == torch.float32
