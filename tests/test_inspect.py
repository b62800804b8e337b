"""`inspect` and the reader on files in every naming, and `--init-from`."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.cli import main as cli
from trainer.config import NetworkConfig
from trainer.export import write_lora_file
from trainer.init_from import init_network_from
from trainer.lora_reader import normalise_key, read_lora_file
from trainer.models import load_base_model
from trainer.network import NetworkError, apply_lora

UNET = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_v",
        "up_blocks.3.attentions.0.transformer_blocks.0.attn2.to_q"]
TEXT = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.11.mlp.fc2"]
WIDTH = {"down_blocks.0": 320, "down_blocks.1": 320, "mid_block": 1280, "up_blocks.1": 1280,
         "up_blocks.3": 320}


pytestmark = pytest.mark.usefixtures("one_thread")


def shapes(path: str, rank: int) -> tuple[list[int], list[int]]:
    """SD 1.5 widths, so the guessed base is sd_v1."""
    if path.startswith("text_model"):
        width = 768
        return [rank, 3072 if path.endswith("fc2") else width], [width, rank]
    block = ".".join(path.split(".")[:2]) if not path.startswith("mid") else "mid_block"
    width = WIDTH[block]
    in_width = 768 if "attn2.to_k" in path or "attn2.to_v" in path else width
    return [rank, in_width], [width, rank]


def kohya(path: str) -> str:
    prefix = "lora_te_" if path.startswith("text_model") else "lora_unet_"
    return prefix + path.replace(".", "_")


def make_kohya(folder: Path, rank: int = 8, alpha: float = 4.0) -> Path:
    tensors = {}
    for path in UNET + TEXT:
        down, up = shapes(path, rank)
        tensors[f"{kohya(path)}.lora_down.weight"] = torch.randn(down)
        tensors[f"{kohya(path)}.lora_up.weight"] = torch.randn(up)
        tensors[f"{kohya(path)}.alpha"] = torch.tensor(alpha)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
            "ss_network_alpha": f"{alpha:g}", "ss_base_model_version": "sd_v1", "ss_v2": "False",
            "modelspec.architecture": "stable-diffusion-v1/lora",
            "modelspec.trigger_phrase": "zq style, zq",
            "ss_tag_frequency": '{"10_art": {"zq style": 12, "tree": 5}, "5_more": {"tree": 3}}',
            "ss_steps": "1500", "ss_output_name": "kohya_made"}
    return write_lora_file(folder / "kohya.safetensors", tensors, meta, "fp16")


def make_peft(folder: Path, rank: int = 16) -> Path:
    """diffusers' `save_lora_weights` layout: unet./text_encoder. + PEFT lora_A/lora_B, no
    alpha (scale 1); the text encoder in the transformers 5 layout (no text_model.)."""
    tensors = {}
    for path in UNET + TEXT:
        down, up = shapes(path, rank)
        head = "text_encoder." + path.removeprefix("text_model.") \
            if path.startswith("text_model") else f"unet.{path}"
        tensors[f"{head}.lora_A.weight"] = torch.randn(down, dtype=torch.float16)
        tensors[f"{head}.lora_B.weight"] = torch.randn(up, dtype=torch.float16)
    path = folder / "pytorch_lora_weights.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def field(out: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}:\s+(.*)$", out, re.M)
    assert match, out
    return match[1]


def block_counts(out: str) -> dict[str, int]:
    section = out.split("modules by block:\n", 1)[1]
    counts = {}
    for line in section.splitlines():
        match = re.match(r"^  (.+?)\s+(\d+)$", line)
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


EXPECTED_BLOCKS = {"unet down.0": 2, "unet mid": 1, "unet up.1": 1, "unet up.3": 1,
                   "text encoder": 2}


def test_inspect_kohya_file(tmp_path, capsys) -> None:
    path = make_kohya(tmp_path)
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert field(out, "naming") == "kohya"
    assert field(out, "base model") == "sd_v1"
    assert field(out, "rank") == "8 (7 modules)"
    assert field(out, "alpha") == "4 (7 modules)"
    assert field(out, "modules") == "7 (5 U-Net, 2 text encoder)"
    assert field(out, "dtype") == "fp16"
    assert block_counts(out) == EXPECTED_BLOCKS
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert field(out, "AutoV2") == hashlib.sha256(raw).hexdigest()[:10].upper()
    assert field(out, "AutoV3").startswith(hashlib.sha256(raw[8 + n:]).hexdigest()[:12].upper())
    assert "(= sshs_model_hash)" in field(out, "AutoV3")
    assert field(out, "trigger words") == "zq style, zq"
    assert "zq style (12), tree (8)" in out
    assert re.search(r"ss_steps\s+1500", out)


def test_inspect_diffusers_peft_file(tmp_path, capsys) -> None:
    path = make_peft(tmp_path)
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert field(out, "naming") == "diffusers (PEFT)"
    assert field(out, "rank") == "16 (7 modules)"
    assert field(out, "alpha").startswith("16 (7 modules)")  # no alpha: alpha = rank
    assert "store no alpha" in field(out, "alpha")
    assert field(out, "modules") == "7 (5 U-Net, 2 text encoder)"
    assert block_counts(out) == EXPECTED_BLOCKS
    assert "guessed from the tensor shapes" in field(out, "base model")
    assert "sd_v1" in field(out, "base model")
    # the same modules as the kohya file, by name
    assert set(read_lora_file(path).modules) == {kohya(p) for p in UNET + TEXT}


@pytest.mark.parametrize("key, expected", [
    # kohya
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_up.weight",
     ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v", "up")),
    # PEFT on kohya names
    ("lora_unet_down_blocks_1_attentions_0_proj_in.lora_A.weight",
     ("lora_unet_down_blocks_1_attentions_0_proj_in", "down")),
    # diffusers PEFT, transformers 4 and 5 text encoder layouts
    ("unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight",
     ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0", "up")),
    ("text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_A.weight",
     ("lora_te_text_model_encoder_layers_3_mlp_fc1", "down")),
    ("text_encoder.encoder.layers.3.self_attn.out_proj.lora_B.weight",
     ("lora_te_text_model_encoder_layers_3_self_attn_out_proj", "up")),
    # older diffusers attention-processor names
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight",
     ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0", "up")),
    ("text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight",
     ("lora_te_text_model_encoder_layers_0_self_attn_k_proj", "down")),
    ("text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_linear_layer.up.weight",
     ("lora_te_text_model_encoder_layers_0_mlp_fc2", "up")),
    # bare PEFT model
    ("base_model.model.mid_block.attentions.0.proj_out.lora_A.weight",
     ("lora_unet_mid_block_attentions_0_proj_out", "down")),
    # OneTrainer: dotted kohya heads, and the OMI (compvis) layout
    ("lora_unet.down_blocks.2.attentions.1.transformer_blocks.0.ff.net.2.lora_down.weight",
     ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_2", "down")),
    ("lora_te.text_model.encoder.layers.5.self_attn.v_proj.alpha",
     ("lora_te_text_model_encoder_layers_5_self_attn_v_proj", "alpha")),
    ("unet.input_blocks.4.1.transformer_blocks.0.attn1.to_q.lora_down.weight",
     ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", "down")),
    ("unet.middle_block.1.proj_in.lora_up.weight",
     ("lora_unet_mid_block_attentions_0_proj_in", "up")),
    ("unet.output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.alpha",
     ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0", "alpha")),
    ("unet.output_blocks.5.2.conv.lora_down.weight",
     ("lora_unet_up_blocks_1_upsamplers_0_conv", "down")),
    ("unet.input_blocks.7.0.in_layers.2.lora_down.weight",
     ("lora_unet_down_blocks_2_resnets_0_conv1", "down")),
    ("clip_l.text_model.encoder.layers.0.mlp.fc1.lora_up.weight",
     ("lora_te_text_model_encoder_layers_0_mlp_fc1", "up")),
])
def test_every_naming_normalises_to_kohya(key: str, expected: tuple[str, str]) -> None:
    found = normalise_key(key)
    assert found is not None and found[:2] == expected


def test_unknown_keys_are_reported_not_dropped(tmp_path, capsys) -> None:
    path = tmp_path / "odd.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2), "something_else": torch.zeros(1)},
              str(path))
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "keys not understood (2)" in out and "LoHa" in out


# --- --init-from -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    """A rank-8, alpha-4 LoRA of the tiny model's attention (U-Net only)."""
    base = load_base_model(tiny_model[0])
    torch.manual_seed(1)
    network = apply_lora(base.unet, None, NetworkConfig(rank=8, alpha=4.0))
    with torch.no_grad():
        for layer in network.layers.values():
            layer.lora_B["default"].weight.normal_()
    path = tmp_path_factory.mktemp("init") / "start.safetensors"
    write_lora_file(path, network.state_dict(), {"ss_network_dim": "8"}, "fp32")
    return path, network.state_dict()


def fresh(tiny_model, **network):
    base = load_base_model(tiny_model[0])
    return apply_lora(base.unet, base.text_encoder, NetworkConfig(**network))


def test_init_from_copies_the_weights(saved, tiny_model) -> None:
    path, tensors = saved
    network = fresh(tiny_model, rank=8, alpha=4.0)
    init_network_from(network, path)
    for key, value in network.state_dict().items():
        assert torch.equal(value, tensors[key]), key


def test_init_from_refuses_another_rank_naming_both(saved, tiny_model) -> None:
    with pytest.raises(NetworkError) as error:
        init_network_from(fresh(tiny_model, rank=4, alpha=4.0), saved[0])
    message = str(error.value)
    assert "rank 8" in message and "network.rank is 4" in message
    assert "\n" not in message


def test_init_from_refuses_other_alpha_and_targets(saved, tiny_model) -> None:
    with pytest.raises(NetworkError, match=r"alpha 4 but this run's network.alpha is 2"):
        init_network_from(fresh(tiny_model, rank=8, alpha=2.0), saved[0])
    with pytest.raises(NetworkError, match=r"adapts \d+ modules this run does not .*attn2"):
        init_network_from(fresh(tiny_model, rank=8, alpha=4.0, attention=["attn1"]), saved[0])
    with pytest.raises(NetworkError, match="network.train_text_encoder = false"):
        init_network_from(fresh(tiny_model, rank=8, alpha=4.0, train_text_encoder=True),
                          saved[0])
