"""`inspect` names the family and kind of LoRA files of every family and naming; `init_from`
refuses a LoRA made for another family, naming both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.cli import main as cli
from trainer.config import NetworkConfig
from trainer.export import write_lora_file
from trainer.init_from import init_network_from
from trainer.lora_reader import read_lora_file
from trainer.metadata import base_model_metadata
from trainer.models import load_base_model, make_tiny_model
from trainer.network import NetworkError, apply_lora_to


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    for family in ("sd1", "sd2", "sdxl"):
        make_tiny_model(root / family, family=family)
    return {family: root / family for family in ("sd1", "sd2", "sdxl")}


def _our_file(base_path: Path, family: str, out: Path, **network) -> Path:
    torch.manual_seed(0)
    base = load_base_model(base_path)
    lora = apply_lora_to(base, NetworkConfig(rank=4, alpha=2.0, **network))
    with torch.no_grad():
        for layer in lora.layers.values():
            layer.lora_B["default"].weight.normal_(0, 0.1)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2",
            **base_model_metadata(family, "epsilon")}
    return write_lora_file(out, lora.state_dict(), meta)


@pytest.mark.parametrize("family, label", [("sd1", "SD 1.x"), ("sd2", "SD 2.x"), ("sdxl", "SDXL")])
def test_inspect_names_the_family_of_our_files(bases, tmp_path, capsys, family, label) -> None:
    path = _our_file(bases[family], family, tmp_path / f"{family}.safetensors",
                     train_text_encoder=True)
    assert read_lora_file(path).family == family
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"family:        {label}\n" in out and "kind:          LoRA\n" in out
    if family == "sdxl":
        assert "unet input.4" in out and "text encoder 2" in out


def _fake(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict | None = None) -> Path:
    save_file({k: torch.randn(s) * 0.01 for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


def test_inspect_reads_the_family_from_other_tools_names(tmp_path) -> None:
    peft_xl = _fake(tmp_path / "peft_xl.safetensors", {  # diffusers / PEFT names, no metadata
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 4)})
    peft_sd2 = _fake(tmp_path / "peft_sd2.safetensors", {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 1024),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (320, 4)})
    onetrainer_xl = _fake(tmp_path / "ot_xl.safetensors", {  # OneTrainer's dotted heads
        "lora_te2.text_model.encoder.layers.0.self_attn.q_proj.lora_down.weight": (4, 1280),
        "lora_te2.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight": (1280, 4),
        "lora_te2.text_model.encoder.layers.0.self_attn.q_proj.alpha": ()})
    kohya_v2 = _fake(tmp_path / "kohya_v2.safetensors", {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": (4, 8),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": (8, 4)},
        {"ss_base_model_version": "sd_v2_v", "ss_v2": "True"})
    locon = _fake(tmp_path / "locon.safetensors", {
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": (4, 320, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": (320, 4, 1, 1)},
        {"ss_base_model_version": "sd_v1"})
    found = {p.name: (read_lora_file(p).family, read_lora_file(p).kind)
             for p in (peft_xl, peft_sd2, onetrainer_xl, kohya_v2, locon)}
    assert found == {"peft_xl.safetensors": ("sdxl", "LoRA"), "peft_sd2.safetensors": ("sd2", "LoRA"),
                     "ot_xl.safetensors": ("sdxl", "LoRA"), "kohya_v2.safetensors": ("sd2", "LoRA"),
                     "locon.safetensors": ("sd1", "LoCon (LoRA with conv layers)")}


def test_init_from_refuses_a_lora_of_another_family(bases, tmp_path) -> None:
    sd1_file = _our_file(bases["sd1"], "sd1", tmp_path / "for_sd1.safetensors")
    xl = load_base_model(bases["sdxl"])
    network = apply_lora_to(xl, NetworkConfig(rank=4, alpha=2.0))
    with pytest.raises(NetworkError, match=r"for_sd1\.safetensors is a LoRA for SD 1\.x models but "
                                           r"this run trains on an SDXL model"):
        init_network_from(network, sd1_file)
    xl_file = _our_file(bases["sdxl"], "sdxl", tmp_path / "for_xl.safetensors")
    init_network_from(network, xl_file)  # the same family loads, every tensor
    loaded = read_lora_file(xl_file)
    for name, layer in network.unet_layers.items():
        assert torch.equal(layer.lora_B["default"].weight, loaded.modules[name].up.float()), name
