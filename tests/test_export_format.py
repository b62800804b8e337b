"""The exported file against docs/lora-format.md: golden SD 1.5 names (built on the meta
device), the round trip through diffusers in fp16 and fp32, hashes, atomic writes, cover image
and the privacy switch."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from synthetic import make_shapes_dataset
from test_training import tiny_config
from trainer.cli import main as cli
from trainer.config import NetworkConfig
from trainer.export import cover_thumbnail, tensor_data_hashes, write_lora_file
from trainer.loop import train
from trainer.network import apply_lora
from trainer.verify import MODULE_NAME, verify_lora_file

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "sd15"
RANK, ALPHA = 4, 2.0  # alpha != rank: a loader that drops alpha is caught


pytestmark = pytest.mark.usefixtures("one_thread")


# --- golden names: the real SD 1.5 layout, no weights ------------------------------------

def hand_written_sd15_attention() -> list[str]:
    """Written from lora-format.md, not from the code: 16 transformer blocks x attn1/attn2 x
    q/k/v/out."""
    blocks = [("down_blocks_0", 2), ("down_blocks_1", 2), ("down_blocks_2", 2), ("mid_block", 1),
              ("up_blocks_1", 3), ("up_blocks_2", 3), ("up_blocks_3", 3)]
    names = []
    for block, attentions in blocks:
        for index in range(attentions):
            for attn in ("attn1", "attn2"):
                for proj in ("to_q", "to_k", "to_v", "to_out_0"):
                    names.append(f"lora_unet_{block}_attentions_{index}_transformer_blocks_0_"
                                 f"{attn}_{proj}")
    return sorted(names)


def hand_written_sd15_text_encoder() -> list[str]:
    return sorted(f"lora_te_text_model_encoder_layers_{layer}_{part}"
                  for layer in range(12)
                  for part in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
                               "self_attn_out_proj", "mlp_fc1", "mlp_fc2"))


@pytest.fixture(scope="module")
def sd15_network():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            json.loads((ASSETS / "unet" / "config.json").read_text()))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(ASSETS / "text_encoder"))
    network = apply_lora(unet, text_encoder, NetworkConfig(rank=8, alpha=4.0,
                                                           train_text_encoder=True))
    return network, text_encoder


def test_sd15_attention_names_are_the_golden_list(sd15_network) -> None:
    network, _ = sd15_network
    names = sorted(network.unet_layers)
    assert len(names) == 16 * 2 * 4 == 128
    assert names == hand_written_sd15_attention()
    assert all(MODULE_NAME.match(name) for name in names)


def test_sd15_text_encoder_names_keep_text_model_whatever_transformers(sd15_network) -> None:
    network, text_encoder = sd15_network
    names = sorted(network.text_encoder_layers)
    assert len(names) == 12 * 6 == 72
    assert names == hand_written_sd15_text_encoder()
    assert all(MODULE_NAME.match(name) for name in names)
    # the installed CLIPTextModel may or may not have the text_model level; the names do
    installed = {path for path, _ in text_encoder.named_modules()}
    assert ("encoder.layers.0.self_attn.q_proj" in installed
            or "text_model.encoder.layers.0.self_attn.q_proj" in installed)


@pytest.mark.parametrize("key, shape", [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
     [8, 320]),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
     [8, 768]),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v.lora_up.weight",
     [1280, 8]),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0.lora_up.weight",
     [320, 8]),
    ("lora_te_text_model_encoder_layers_11_self_attn_q_proj.lora_down.weight", [8, 768]),
])
def test_spec_examples_have_the_spec_shapes(sd15_network, key: str, shape: list[int]) -> None:
    network, _ = sd15_network
    name, _, part = key.partition(".")
    layer = network.layers[name]
    weight = layer.lora_A["default"].weight if part == "lora_down.weight" \
        else layer.lora_B["default"].weight
    assert list(weight.shape) == shape


# --- the round trip: train, export fp16 and fp32, reload in diffusers ----------------------

@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "my_secret_folder"
    make_shapes_dataset(data, 4)
    config = tiny_config(tiny_model[0], data, root / "run",
                         schedule={"max_train_steps": 6},
                         network={"rank": RANK, "alpha": ALPHA, "train_text_encoder": True},
                         optimizer={"learning_rate": 1e-2},
                         output={"save_precision": "fp16"}, precision={"threads": 1})
    fp16 = train(config, root / "run")
    checkpoint = sorted((root / "run" / "checkpoints").iterdir())[-1]
    return {"fp16": fp16, "checkpoint": checkpoint, "root": root,
            "trained": load_file(checkpoint / "lora.safetensors")}


def fused_against_trained(pipe, trained_tensors: dict[str, torch.Tensor],
                          originals: dict[str, torch.Tensor], paths) -> tuple[int, float]:
    """(modules compared, worst error relative to the module's LoRA delta)."""
    modules = {k.rsplit(".", 2)[0] for k in trained_tensors if k.endswith(".lora_down.weight")}
    worst = 0.0
    for name in modules:
        component, path = paths[name]
        layer = dict(getattr(pipe, component).named_modules())[path]
        fused = layer.get_base_layer().weight.detach().double()
        down = trained_tensors[f"{name}.lora_down.weight"].double()
        up = trained_tensors[f"{name}.lora_up.weight"].double()
        delta = (ALPHA / RANK) * (up @ down)
        error = float((fused - originals[name].double() - delta).abs().max())
        worst = max(worst, error / max(float(delta.abs().max()), 1e-12))
    return len(modules), worst


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_round_trip_through_diffusers(trained, tiny_model, precision: str, capsys) -> None:
    from diffusers import StableDiffusionPipeline

    from trainer.verify_base import _module_paths, _unet_output

    if precision == "fp16":
        path = trained["fp16"]  # the loop's own end-of-training export
    else:
        path = trained["root"] / "exported" / "fp32.safetensors"
        assert cli(["export", str(trained["checkpoint"]), "--out", str(path),
                    "--precision", "fp32", "--no-verify"]) == 0
    with safe_open(str(path), "pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
        meta = handle.metadata()
    assert dtypes == {"F16" if precision == "fp16" else "F32"}
    assert meta["ss_network_dim"] == str(RANK) and float(meta["ss_network_alpha"]) == ALPHA
    tensors = load_file(path)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in tensors)
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {ALPHA}

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model[0], safety_checker=None,
                                                   feature_extractor=None,
                                                   requires_safety_checker=False)
    paths = _module_paths(pipe)
    originals = {name: dict(getattr(pipe, c).named_modules())[p].weight.detach().clone()
                 for name, (c, p) in paths.items()}
    before = _unet_output(pipe.unet)
    pipe.load_lora_weights(str(path))
    after = _unet_output(pipe.unet)
    assert float((after - before).abs().max()) > 1e-4  # the LoRA does something
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0)
    count, worst = fused_against_trained(pipe, trained["trained"], originals, paths)
    assert count == len(tensors) // 3 and count > 56  # U-Net and text encoder, every module
    assert worst < (2e-3 if precision == "fp16" else 1e-5), worst


def test_exported_files_pass_verify(trained, tiny_model) -> None:
    report = verify_lora_file(trained["fp16"], tiny_model[1])  # single-file base
    assert report.ok, report.format()
    names = {check.name for check in report.checks}
    assert {"fused weights = W0 + (alpha/r) up @ down", "diffusers loads every module",
            "U-Net output changes at strength 1",
            "U-Net output equals the base at strength 0"} <= names
    loaded = next(c for c in report.checks if c.name == "diffusers loads every module")
    assert "12 text-encoder modules" in loaded.detail  # transformers 5 text encoder included


def test_export_command_writes_user_metadata_and_verifies(trained, tmp_path, capsys) -> None:
    cover = tmp_path / "cover.png"
    from PIL import Image

    Image.new("RGBA", (900, 300), (200, 30, 30, 255)).save(cover)
    out = tmp_path / "final.safetensors"
    code = cli(["export", str(trained["root"] / "run"), "--out", str(out), "--precision", "bf16",
                "--title", "Red Shapes", "--author", "Ada", "--description", "circles",
                "--trigger", "shp style", "--tag", "shapes", "--tag", "flat colour",
                "--license", "CC-BY-4.0", "--cover", str(cover), "--hide-folder-names"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert "PASSED" in printed.out and "Traceback" not in printed.err
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    assert dtypes == {"BF16"}
    assert meta["modelspec.title"] == "Red Shapes" and meta["modelspec.author"] == "Ada"
    assert meta["modelspec.trigger_phrase"] == "shp style"
    assert meta["modelspec.tags"] == "shapes, flat colour"
    assert meta["modelspec.license"] == "CC-BY-4.0"
    assert meta["ss_output_name"] == "final"
    assert all(isinstance(v, str) for v in meta.values())
    raw = out.read_bytes()
    assert b"my_secret_folder" not in raw  # the privacy switch
    assert json.loads(meta["ss_tag_frequency"])  # still there, under a neutral name
    prefix = "data:image/jpeg;base64,"
    assert meta["modelspec.thumbnail"].startswith(prefix)
    from PIL import Image as PILImage

    thumb = PILImage.open(io.BytesIO(base64.b64decode(meta["modelspec.thumbnail"][len(prefix):])))
    assert thumb.format == "JPEG" and max(thumb.size) == 256 and thumb.size[1] < 256


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path, capsys) -> None:
    code = cli(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err


# --- hashes and atomic writes -------------------------------------------------------------

def big_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    return {f"{name}.lora_down.weight": torch.randn(256, 1280, generator=generator),
            f"{name}.lora_up.weight": torch.randn(1280, 256, generator=generator),
            f"{name}.alpha": torch.tensor(32.0)}


def test_sshs_model_hash_is_the_sha256_after_the_header(tmp_path) -> None:
    path = write_lora_file(tmp_path / "h.safetensors", big_tensors(), {"ss_network_dim": "256"},
                           "fp16")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sshs_model_hash"])
    # legacy: bytes 0x100000..0x110000 of the tensor-only serialisation (file is > 1 MiB)
    from safetensors.torch import save

    blob = save(load_file(path))
    assert len(blob) > 0x110000
    assert meta["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    # it depends on the tensors only: other metadata, same hash
    again = write_lora_file(tmp_path / "h2.safetensors", big_tensors(),
                            {"ss_network_dim": "256", "modelspec.title": "other"}, "fp16")
    with safe_open(str(again), "pt") as handle:
        assert handle.metadata()["sshs_model_hash"] == meta["sshs_model_hash"]
    assert tensor_data_hashes(load_file(path))[0] == meta["sshs_model_hash"]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch) -> None:
    path = write_lora_file(tmp_path / "keep.safetensors", big_tensors(), {}, "fp16")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("trainer.export.save_file", broken)
    with pytest.raises(OSError):
        write_lora_file(path, big_tensors(), {}, "fp32")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"]


def test_cover_is_downscaled_jpeg(tmp_path) -> None:
    from PIL import Image

    source = tmp_path / "tall.png"
    Image.new("RGB", (120, 1000), (0, 90, 200)).save(source)
    url = cover_thumbnail(source)
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert url.startswith("data:image/jpeg;base64,") and image.size == (31, 256)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 20)).save(small)
    assert Image.open(io.BytesIO(base64.b64decode(cover_thumbnail(small).split(",", 1)[1]))
                      ).size == (40, 20)  # never upscaled


def test_export_never_replaces_a_base_model_or_another_file(trained, tiny_model, tmp_path,
                                                           capsys) -> None:
    import hashlib
    import shutil

    base = tmp_path / "base.safetensors"
    shutil.copyfile(tiny_model[1], base)
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, notes)}
    for target, words in ((base, "is a base model"), (notes, "is not a .safetensors LoRA file")):
        assert cli(["export", str(trained["checkpoint"]), "--out", str(target), "--no-verify"]) == 2
        err = capsys.readouterr().err
        assert words in err and ("never replaces" in err or "does not replace" in err), err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, notes)} == before
    again = tmp_path / "again.safetensors"  # an earlier LoRA at the same name is replaced
    for _ in range(2):
        assert cli(["export", str(trained["checkpoint"]), "--out", str(again), "--no-verify"]) == 0
    assert load_file(again).keys() == load_file(trained["fp16"]).keys()
