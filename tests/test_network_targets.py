"""`network.targets`: layers picked one by one select exactly those modules, in the trainer and
in the window's count alike; a bad entry is named."""

from __future__ import annotations

import json

import pytest

from app.model_info import network_parameter_count, selected_modules
from trainer.families import get_family
from trainer.config import NetworkConfig
from trainer.config_io import ConfigError, build_config

# The tiny U-Net: attention in down_blocks 0 (width 32) and 1 (64), the mid block (64), and
# up_blocks 1 (64) and 2 (32) with two attentions each; context width 64.
TARGETS = ["down.attn1.to_q", "mid.attn2.to_out.0", "up.attn2.to_k", "up.2.attn1.to_v"]
PREFIX = "lora_unet_{}_transformer_blocks_0_{}"
EXPECTED = [PREFIX.format(block, leaf) for block, leaf in [  # in model order: mid comes last
    ("down_blocks_0_attentions_0", "attn1_to_q"),
    ("down_blocks_1_attentions_0", "attn1_to_q"),
    ("up_blocks_1_attentions_0", "attn2_to_k"),
    ("up_blocks_1_attentions_1", "attn2_to_k"),
    ("up_blocks_2_attentions_0", "attn1_to_v"),
    ("up_blocks_2_attentions_0", "attn2_to_k"),
    ("up_blocks_2_attentions_1", "attn1_to_v"),
    ("up_blocks_2_attentions_1", "attn2_to_k"),
    ("mid_block_attentions_0", "attn2_to_out_0"),
]]
# rank 4 x (in + out): 32+32, 64+64, 64+64, 2 x (64+64), 2 x ((32+32) + (64+32))
EXPECTED_PARAMETERS = 4 * (64 + 128 + 128 + 2 * 128 + 2 * (64 + 96))


def test_targets_select_exactly_the_listed_modules(tiny_model, one_thread) -> None:
    from trainer.models import load_base_model
    from trainer.network import apply_lora

    network_config = NetworkConfig(rank=4, alpha=4, targets=TARGETS)
    base = load_base_model(tiny_model[0])
    network = apply_lora(base.unet, base.text_encoder, network_config)
    assert list(network.layers) == EXPECTED
    assert network.trainable_parameter_count() == EXPECTED_PARAMETERS == 3584
    unet_config = json.loads((tiny_model[0] / "unet" / "config.json").read_text())
    shown = selected_modules(unet_config, network_config)  # what the window counts
    assert sorted("lora_unet_" + name.replace(".", "_") for name, *_ in shown) == sorted(EXPECTED)
    assert network_parameter_count(shown, network_config) == EXPECTED_PARAMETERS


def test_a_run_with_targets_exports_a_file_that_verifies(tiny_model, one_thread, tmp_path) -> None:
    from safetensors import safe_open

    from synthetic import make_shapes_dataset
    from test_training import tiny_config
    from trainer.loop import train
    from trainer.verify import verify_lora_file

    make_shapes_dataset(tmp_path / "data", 2)
    config = tiny_config(tiny_model[0], tmp_path / "data", tmp_path / "run",
                         schedule={"max_train_steps": 2}, network={"targets": TARGETS},
                         optimizer={"learning_rate": 1e-2}, precision={"threads": 1})
    path = train(config, tmp_path / "run")
    with safe_open(str(path), "pt") as handle:
        modules = {key.rsplit(".", 2)[0] for key in handle.keys()}
        network_args = json.loads(handle.metadata()["ss_network_args"])
    assert modules == set(EXPECTED)
    assert network_args == {"targets": TARGETS}  # the file says which layers, as picked
    report = verify_lora_file(path, tiny_model[0])
    assert report.ok, report.format()


def test_an_entry_naming_a_block_without_attention_is_refused(tiny_model, one_thread) -> None:
    from trainer.models import load_base_model
    from trainer.network import NetworkError, apply_lora

    base = load_base_model(tiny_model[0])
    with pytest.raises(NetworkError, match=r"'down\.2\.attn1\.to_q' names no layer.*"
                                           r"its blocks with attn1\.to_q are down\.0, down\.1, up\.1, up\.2, mid$"):
        apply_lora(base.unet, None, NetworkConfig(targets=["up.attn1.to_q", "down.2.attn1.to_q"]))


@pytest.mark.parametrize("targets, needle", [
    (["up.attn2.to_k", "up.attn3.to_q"], "'up.attn3.to_q' is not a target layer"),
    (["side.attn1.to_q"], "'side.attn1.to_q' is not a target layer"),
    (["up.attn1.to_out"], "'up.attn1.to_out' is not a target layer"),
    ([], "pick at least one target layer"),
])
def test_a_bad_entry_is_named(targets: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"network": {"targets": targets}})
    assert "network.targets" in str(error.value) and needle in str(error.value)


def test_without_targets_the_cross_product_keeps_its_meaning() -> None:
    network = NetworkConfig(blocks=["down.1", "up"], attention=["attn2"], projections=["to_k"])
    assert network.target_layers == ["down.1.attn2.to_k", "up.attn2.to_k"]
    assert network.selects("down", "1", "attn2.to_k")
    assert not network.selects("down", "0", "attn2.to_k")
    assert not network.selects("up", "1", "attn1.to_k")
    assert NetworkConfig(blocks=["mid"], targets=["up.attn1.to_q"]).target_layers == \
        ["up.attn1.to_q"]  # targets, when set, replace the product


# The real SD 2.x and SDXL U-Nets (built on the meta device: no memory, no weights) against the
# window's arithmetic, for the same settings. SDXL: down 1 (2 x depth 2, 640 wide), down 2
# (2 x depth 10, 1280), mid (depth 10, 1280), up 0 (3 x depth 10, 1280), up 1 (3 x depth 2, 640);
# context 2048. SD 2.x: the SD 1.x layout with a 1024-wide context.
REAL_LAYOUTS = [
    ("sdxl", NetworkConfig(rank=16), 560, 23_224_320),
    ("sdxl", NetworkConfig(rank=16, attention=["attn2"]), 280, 12_574_720),
    ("sdxl", NetworkConfig(rank=8, blocks=["down.2"]), 160, 3_522_560),
    ("sdxl", NetworkConfig(rank=4, targets=["mid.attn1.to_q", "up.0.attn2.to_k"]), 40, 501_760),
    ("sd2", NetworkConfig(rank=16), 128, 3_319_808),
    ("sd2", NetworkConfig(rank=16, attention=["attn2"]), 64, 1_722_368),
    ("sd2", NetworkConfig(rank=8, blocks=["down.2"]), 16, 319_488),
    ("sd2", NetworkConfig(rank=4, targets=["mid.attn1.to_q", "up.1.attn2.to_k"]), 4, 37_888),
]


@pytest.mark.parametrize("family, network_config, modules, parameters", REAL_LAYOUTS)
def test_the_window_counts_the_real_layouts_as_the_trainer_trains_them(
        family: str, network_config: NetworkConfig, modules: int, parameters: int) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from trainer.network import apply_lora

    unet_config = get_family(family).config("unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        network = apply_lora(unet, None, network_config, get_family(family))
    shown = selected_modules(unet_config, network_config)  # what the window counts
    assert (len(network.layers), network.trainable_parameter_count()) == (modules, parameters)
    assert (len(shown), network_parameter_count(shown, network_config)) == (modules, parameters)


def test_sdxl_mid_and_up_0_by_hand() -> None:
    """The last SDXL row above, worked out: mid = 10 transformer blocks x 4 x (1280 + 1280);
    up 0 = 3 attentions x 10 x 4 x (2048 + 1280) for the cross-attention key."""
    network = NetworkConfig(rank=4, targets=["mid.attn1.to_q", "up.0.attn2.to_k"])
    shown = selected_modules(get_family("sdxl").config("unet"), network)
    assert network_parameter_count(shown, network) == 10 * 4 * 2560 + 30 * 4 * 3328 == 501_760
