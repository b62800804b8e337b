"""#16, module groups and LoCon: `network.modules` (attention / transformer / conv) with
`conv_rank` / `conv_alpha` pick the layers kohya's networks.lora picks, the window counts what
the trainer trains, and the file reconstructs every module (checked with arithmetic written here
from docs/lora-format.md, and by diffusers' own loader)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthetic import make_shapes_dataset
from test_training import tiny_config
from trainer.checkpoint import list_checkpoints
from trainer.config import NetworkConfig
from trainer.config_io import ConfigError, build_config
from trainer.families import FAMILIES, get_family
from trainer.loop import train
from trainer.models import load_base_model, make_tiny_model

LOCON = {"modules": ["transformer", "conv"], "rank": 4, "alpha": 2.0, "conv_rank": 2,
         "conv_alpha": 1.0}
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl": "StableDiffusionXLPipeline"}


def real_layers(unet) -> dict[str, tuple[int, int, tuple[int, int]]]:
    """(in, out, kernel) of every Linear / Conv2d a group may adapt, read off the real model."""
    from trainer.network_groups import leaf_of

    out = {}
    for name, module in unet.named_modules():
        if leaf_of(name) is None:
            continue
        if isinstance(module, torch.nn.Conv2d):
            out[name] = (module.in_channels, module.out_channels, tuple(module.kernel_size))
        else:
            out[name] = (module.in_features, module.out_features, (1, 1))
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_windows_layer_list_is_the_real_unets(family: str) -> None:
    """Every layer of every group, with its shape, from the config alone (what the window
    counts) equals the real U-Net's modules (built on the meta device)."""
    from diffusers import UNet2DConditionModel

    from trainer.families.unet_layers import unet_layers

    config = get_family(family).config("unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    shown = {layer.name: (layer.fan_in, layer.fan_out, layer.kernel) for layer in unet_layers(config)}
    assert shown == real_layers(unet)
    assert len(shown) == {"sd1": 278, "sd2": 278, "sdxl": 788}[family]


def _resnets_sd15() -> list[tuple[int, int]]:
    """(in, out) channels of SD 1.5's 22 ResNet blocks, worked out by hand: the down path
    widens 320 -> 640 -> 1280, up blocks add the skip connection's channels."""
    down = [(320, 320)] * 2 + [(320, 640), (640, 640), (640, 1280), (1280, 1280)] + [(1280, 1280)] * 2
    mid = [(1280, 1280)] * 2
    up = [(2560, 1280)] * 3 + [(2560, 1280), (2560, 1280), (1920, 1280)] + \
        [(1920, 640), (1280, 640), (960, 640)] + [(960, 320), (640, 320), (640, 320)]
    return down + mid + up


def _resnets_sdxl() -> list[tuple[int, int]]:
    down = [(320, 320)] * 2 + [(320, 640), (640, 640), (640, 1280), (1280, 1280)]
    mid = [(1280, 1280)] * 2
    up = [(2560, 1280), (2560, 1280), (1920, 1280), (1920, 640), (1280, 640), (960, 640),
          (960, 320), (640, 320), (640, 320)]
    return down + mid + up


def _conv_group(resnets, samplers, rank: int, conv_rank: int, time: int = 1280) -> tuple[int, int]:
    """(modules, parameters) of the conv group by kohya's rule: 3x3 convs at conv_rank with
    r x (9 in + out) each; time_emb_proj and 1x1 shortcuts at rank with r x (in + out)."""
    modules = parameters = 0
    for fan_in, fan_out in resnets:
        parameters += conv_rank * (9 * fan_in + fan_out) + conv_rank * (9 * fan_out + fan_out)
        parameters += rank * (time + fan_out)
        modules += 3
        if fan_in != fan_out:
            parameters += rank * (fan_in + fan_out)
            modules += 1
    for width in samplers:
        parameters += conv_rank * (9 * width + width)
        modules += 1
    return modules, parameters


# SD 1.5's transformer set by hand, per transformer (depth 1) of width w, context 768: attention
# 14w + 2 x 768, feed-forward (w -> 8w) + (4w -> w) = 14w, proj_in + proj_out 4w; widths 320 x 5,
# 640 x 5, 1280 x 6.
SD15_TRANSFORMER = 16 * (32 * (5 * 320 + 5 * 640 + 6 * 1280) + 16 * 2 * 768)
SD15_CONV = _conv_group(_resnets_sd15(), [320, 640, 1280, 1280, 1280, 640], rank=16, conv_rank=8)
SDXL_CONV = _conv_group(_resnets_sdxl(), [320, 640, 1280, 640], rank=16, conv_rank=8)
COUNTS = [
    ("sd1", NetworkConfig(rank=16, modules=["transformer"]), 192, SD15_TRANSFORMER),
    ("sd1", NetworkConfig(rank=16, alpha=8, modules=["conv"], conv_rank=8), *SD15_CONV),
    ("sdxl", NetworkConfig(rank=16, alpha=8, modules=["conv"], conv_rank=8), *SDXL_CONV),
    ("sdxl", NetworkConfig(rank=16, modules=["transformer", "conv"], conv_rank=8), 788,
     None),  # kohya's SDXL LoCon: 722 transformer modules + the 66 above
]


@pytest.mark.parametrize("family, network_config, modules, parameters", COUNTS)
def test_counts_on_the_real_layouts_match_the_hand_count_in_trainer_and_window(
        family: str, network_config: NetworkConfig, modules: int, parameters: int | None) -> None:
    from diffusers import UNet2DConditionModel

    from app.model_info import network_parameter_count, selected_modules
    from trainer.network import apply_lora

    config = get_family(family).config("unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        network = apply_lora(unet, None, network_config, get_family(family))
    shown = selected_modules(config, network_config)
    trained = (len(network.layers), network.trainable_parameter_count())
    assert trained == (len(shown), network_parameter_count(shown, network_config))
    assert trained[0] == modules
    if parameters is not None:
        assert trained[1] == parameters
    assert SD15_CONV[0] == 86 and SDXL_CONV[0] == 66  # kohya's conv counts for these U-Nets


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(folder, 4)
    return folder


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"model-{request.param}")
    make_tiny_model(root / "m", family=request.param, seed=4)
    return request.param, root / "m"


def delta_from_file(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """ΔW of one module as docs/lora-format.md and ComfyUI read it: (alpha / r) up · down, the
    rank r from lora_down's first axis; a conv's up [out, r, 1, 1] and down [r, in, k, k]
    multiply as matrices and take the down's kernel shape."""
    down = tensors[f"{name}.lora_down.weight"].double()
    up = tensors[f"{name}.lora_up.weight"].double()
    scale = float(tensors[f"{name}.alpha"]) / down.shape[0]
    product = up.flatten(1) @ down.flatten(1)
    return (product.reshape(up.shape[0], *down.shape[1:]) if down.dim() == 4 else product) * scale


def test_locon_trains_and_every_module_of_the_file_is_the_trained_delta(model, data,
                                                                        tmp_path) -> None:
    import diffusers

    from test_family_training import _outputs
    from trainer.network import ADAPTER, apply_lora_to

    family, folder = model
    settings = dict(schedule={"max_train_steps": 6, "seed": 2}, optimizer={"learning_rate": 2e-2},
                    network=LOCON, output={"save_precision": "fp32"})
    exported = train(tiny_config(folder, data, tmp_path / "run", **settings), tmp_path / "run")
    tensors = load_file(exported)

    ours = load_base_model(folder)
    network = apply_lora_to(ours, tiny_config(folder, data, tmp_path, **settings).network)
    network.load_state_dict(load_file(list_checkpoints(tmp_path / "run")[-1] / "lora.safetensors"))
    convs = [n for n in network.layers if network.is_conv(n)]
    assert convs and all(tensors[f"{n}.lora_down.weight"].shape[0] == 2 for n in convs)
    assert all(float(tensors[f"{n}.alpha"]) == 1.0 for n in convs)
    for name, layer in network.layers.items():  # the file against peft's own merged delta
        expected = layer.get_delta_weight(ADAPTER).detach().double()
        got = delta_from_file(tensors, name)
        assert got.shape == expected.shape == layer.get_base_layer().weight.shape, name
        assert float((got - expected).abs().max()) <= 1e-6 * max(1.0, float(expected.abs().max()))
    assert max(float(delta_from_file(tensors, n).abs().max()) for n in convs) > 1e-4  # it learned

    # diffusers' own loader applies the file: the U-Net's output is the trained model's
    trained = _outputs(ours.unet, {}, {})["unet"]
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(
        folder, **({"safety_checker": None, "feature_extractor": None,
                    "requires_safety_checker": False} if family != "sdxl" else {}))
    base = _outputs(pipe.unet, {}, {})["unet"]
    pipe.load_lora_weights(str(exported))
    loaded = _outputs(pipe.unet, {}, {})["unet"]
    assert float((loaded - trained).abs().max()) < 1e-3
    assert float((loaded - base).abs().max()) > 1e-3


@pytest.mark.parametrize("network, message", [
    ({"modules": ["conv"], "conv_rank": 512},
     r"network\.conv_rank = 512 is larger than the narrowest layer \(.*, width \d+\); use a "
     r"conv rank of at most \d+"),
    ({"targets": ["up.attn1.to_q", "mid.downsampler"]},
     r"'mid\.downsampler' names no layer of this model .*its blocks with downsampler are "
     r"down\.0, down\.1$"),
])
def test_a_bad_combination_is_refused_before_training_naming_the_field(
        tiny_model, network: dict, message: str) -> None:
    from trainer.network import NetworkError, apply_lora

    base = load_base_model(tiny_model[0])
    with pytest.raises(NetworkError, match=message):
        apply_lora(base.unet, None, NetworkConfig(**network))


@pytest.mark.parametrize("network, message", [
    ({"conv_dim": 8}, "conv_dim"),
    ({"modules": ["convolutions"]}, r"network\.modules\.0 = 'convolutions'.*'attention', "
                                    r"'transformer' or 'conv'"),
    ({"modules": []}, r"network\.modules.*pick at least one"),
    ({"targets": ["up.conv3"]}, r"'up\.conv3' is not a target layer.*conv1, conv2"),
])
def test_unknown_options_and_values_are_refused_in_the_config(network: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"network": network})


def test_without_conv_the_file_says_nothing_of_conv_and_with_it_what_kohya_writes() -> None:
    from trainer.metadata import network_args

    plain = network_args(NetworkConfig())
    assert "conv_dim" not in plain and plain["targets"]["modules"] == ["attention"]
    locon = network_args(NetworkConfig(rank=16, alpha=8, modules=["conv"], conv_rank=4))
    assert (locon["conv_dim"], locon["conv_alpha"]) == ("4", "2")  # unset: alpha / rank kept


def test_the_locon_preset_is_kohyas_locon_recipe() -> None:
    from trainer.config_io import load_config_data, preset_path

    network = build_config(load_config_data(preset_path("sd15-locon-style"))).network
    assert (network.modules, network.rank, network.conv_rank) == (["transformer", "conv"], 16, 8)
    assert network.alpha_for((3, 3)) / network.rank_for((3, 3)) == network.alpha / network.rank
