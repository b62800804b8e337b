"""Golden kohya key lists for the REAL SD 2.x and SDXL layouts (networks built on the meta device),
written from the format spec (docs/lora-format.md, "Names"), not from the code under test."""

from __future__ import annotations

import pytest
import torch

from trainer.config import NetworkConfig
from trainer.families import get_family
from trainer.models.loading import build_text_encoder, build_unet
from trainer.network import apply_lora

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out_0")
TEXT_LEAVES = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
               "mlp_fc1", "mlp_fc2")


def _attention(prefix: str, depth: int) -> list[str]:
    return [f"{prefix}_transformer_blocks_{t}_{attn}_{proj}"
            for t in range(depth) for attn in ("attn1", "attn2") for proj in PROJECTIONS]


def sdxl_golden() -> dict[str, tuple[int, int]]:
    """kohya SDXL names from the spec with (in, out) widths: input_blocks 4, 5 (640 wide, 2
    transformer blocks), 7, 8 (1280, 10), middle_block_1 (1280, 10), output_blocks 0-2 (1280, 10),
    3-5 (640, 2); attn2's k/v read the 2048-wide context."""
    out = {}
    layout = [(f"input_blocks_{i}_1", 640, 2) for i in (4, 5)] + \
             [(f"input_blocks_{i}_1", 1280, 10) for i in (7, 8)] + [("middle_block_1", 1280, 10)] + \
             [(f"output_blocks_{i}_1", 1280, 10) for i in (0, 1, 2)] + \
             [(f"output_blocks_{i}_1", 640, 2) for i in (3, 4, 5)]
    for block, width, depth in layout:
        for name in _attention(f"lora_unet_{block}", depth):
            cross = name.endswith(("attn2_to_k", "attn2_to_v"))
            out[name] = (2048 if cross else width, width)
    return out


def sd2_golden() -> dict[str, tuple[int, int]]:
    """SD 2.x: diffusers paths as SD 1.x; down 0-2 x 2 attentions, mid, up 1-3 x 3; 1024 context."""
    out = {}
    widths = (320, 640, 1280)
    layout = [(f"down_blocks_{b}_attentions_{a}", widths[b]) for b in range(3) for a in range(2)] + \
             [("mid_block_attentions_0", 1280)] + \
             [(f"up_blocks_{b}_attentions_{a}", widths[3 - b]) for b in (1, 2, 3) for a in range(3)]
    for block, width in layout:
        for name in _attention(f"lora_unet_{block}", 1):
            out[name] = (1024 if name.endswith(("attn2_to_k", "attn2_to_v")) else width, width)
    return out


def text_golden(prefix: str, layers: int, width: int, inner: int) -> dict[str, tuple[int, int]]:
    out = {}
    for layer in range(layers):
        for leaf in TEXT_LEAVES:
            shape = {"mlp_fc1": (width, inner), "mlp_fc2": (inner, width)}.get(leaf, (width, width))
            out[f"{prefix}_text_model_encoder_layers_{layer}_{leaf}"] = shape
    return out


def _meta_network(family_name: str, rank: int, train_text_encoder: bool):
    family = get_family(family_name)
    with torch.device("meta"):
        unet = build_unet(family.config("unet"), empty=False)
        encoders = {s.component: build_text_encoder(family.config(s.component), empty=False,
                                                    with_projection=s.with_projection)
                    for s in family.text_encoders}
    network = apply_lora(unet, encoders, NetworkConfig(rank=rank, alpha=rank / 2,
                                                       train_text_encoder=train_text_encoder), family)
    return {name: (layer.lora_A["default"].weight.shape[1], layer.lora_B["default"].weight.shape[0],
                   layer.lora_A["default"].weight.shape[0])
            for name, layer in network.layers.items()}, network


@pytest.mark.parametrize("family, golden", [("sdxl", sdxl_golden), ("sd2", sd2_golden)])
def test_real_layout_attention_names_and_shapes(family, golden) -> None:
    found, network = _meta_network(family, 8, train_text_encoder=False)
    expected = golden()
    assert len(expected) == {"sdxl": 560, "sd2": 128}[family]
    assert sorted(found) == sorted(expected)
    for name, (fan_in, fan_out) in expected.items():
        assert found[name] == (fan_in, fan_out, 8), name
    assert network.trainable_parameter_count() == 8 * sum(i + o for i, o in expected.values())


def test_sdxl_text_encoder_names_and_shapes() -> None:
    found, network = _meta_network("sdxl", 4, train_text_encoder=True)
    expected = {**sdxl_golden(), **text_golden("lora_te1", 12, 768, 3072),
                **text_golden("lora_te2", 32, 1280, 5120)}
    assert len(expected) == 560 + 72 + 192
    assert sorted(found) == sorted(expected)
    for name, (fan_in, fan_out) in expected.items():
        assert found[name][:2] == (fan_in, fan_out), name
    # the two encoders are trained in their own optimizer groups
    assert len(network.parameters("text_encoder")) == 2 * 72
    assert len(network.parameters("text_encoder_2")) == 2 * 192


def test_sd2_text_encoder_is_23_layers() -> None:
    found, _ = _meta_network("sd2", 4, train_text_encoder=True)
    expected = {**sd2_golden(), **text_golden("lora_te", 23, 1024, 4096)}
    assert len(expected) - 128 == 138
    assert sorted(found) == sorted(expected)
    assert all(found[name][:2] == shape for name, shape in expected.items())


def test_sdxl_text_encoders_get_their_own_learning_rates() -> None:
    from trainer.config import TrainConfig
    from trainer.optim import build_optimizer

    _, network = _meta_network("sdxl", 4, train_text_encoder=True)
    config = TrainConfig(optimizer={"learning_rate": 1e-4},
                         network={"rank": 4, "alpha": 2.0, "train_text_encoder": True,
                                  "text_encoder_lr": 5e-5, "text_encoder_2_lr": 2e-5})
    groups = build_optimizer(config, network, torch.device("cpu")).param_groups
    assert [(g["lr"], len(g["params"])) for g in groups] == [(1e-4, 2 * 560), (5e-5, 2 * 72),
                                                             (2e-5, 2 * 192)]
    config.network.text_encoder_2_lr = None  # the second encoder follows the first
    groups = build_optimizer(config, network, torch.device("cpu")).param_groups
    assert [g["lr"] for g in groups] == [1e-4, 5e-5, 5e-5]
