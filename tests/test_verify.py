"""`verify` passes a good file and fails a broken one with the broken key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from trainer.cli import main as cli
from trainer.config import NetworkConfig
from trainer.export import write_lora_file
from trainer.metadata import base_model_metadata
from trainer.lora_reader import LoraFileError, read_lora_file
from trainer.models import load_base_model
from trainer.network import apply_lora
from trainer.verify import verify_lora_file

RANK, ALPHA = 4, 2.0
TO_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


pytestmark = pytest.mark.usefixtures("one_thread")


def minimal_metadata(rank: int = RANK, alpha: float = ALPHA) -> dict[str, str]:
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
            "ss_network_alpha": f"{alpha:g}", "ss_output_name": "hand_made",
            "modelspec.title": "hand made", "modelspec.resolution": "64x64"}
    meta.update(base_model_metadata("sd1", "epsilon"))
    return meta


@pytest.fixture(scope="module")
def good(tiny_model, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    """An fp16 file with U-Net and text-encoder modules and random (non-zero) weights."""
    base = load_base_model(tiny_model[0])
    torch.manual_seed(0)
    network = apply_lora(base.unet, base.text_encoder,
                         NetworkConfig(rank=RANK, alpha=ALPHA, train_text_encoder=True))
    with torch.no_grad():
        for layer in network.layers.values():
            layer.lora_B["default"].weight.normal_(0, 0.05)
    tensors, meta = network.state_dict(), minimal_metadata()
    path = write_lora_file(tmp_path_factory.mktemp("verify") / "good.safetensors", tensors, meta,
                           "fp16")
    return path, tensors, meta


def failing(report, name: str):
    check = next((c for c in report.checks if c.name == name), None)
    assert check is not None, report.format()
    assert not check.ok, report.format()
    return check


def test_a_good_file_passes_every_check(good, tiny_model, capsys) -> None:
    path = good[0]
    assert cli(["verify", str(path), "--base", str(tiny_model[0])]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "FAIL " not in out
    for line in ("fused weights = W0 + (alpha/r) up @ down", "U-Net output changes at strength 1",
                 "U-Net output equals the base at strength 0", "sshs_model_hash",
                 "sshs_legacy_hash", "shapes match the base model", "ss_network_dim",
                 "ss_network_alpha", "base model version", "text-encoder output changes"):
        assert line in out, out


def test_missing_alpha_fails_naming_the_key(good, tiny_model, tmp_path) -> None:
    path, tensors, meta = good
    broken = {k: v for k, v in tensors.items() if k != f"{TO_Q}.alpha"}
    bad = write_lora_file(tmp_path / "no_alpha.safetensors", broken, meta, "fp16")
    report = verify_lora_file(bad, tiny_model[0])
    assert not report.ok
    assert f"{TO_Q}.alpha" in failing(report, "complete modules").detail
    # diffusers gives that module the file's common alpha, kohya/A1111 give it scale 1: the
    # applied weight is then not the one the file describes, and verify says which module
    assert TO_Q in failing(report, "fused weights = W0 + (alpha/r) up @ down").detail


def test_renamed_key_fails_naming_the_key(good, tiny_model, tmp_path, capsys) -> None:
    path, tensors, meta = good
    renamed = f"{TO_Q.replace('to_q', 'to_query')}.lora_down.weight"
    broken = dict(tensors)
    broken[renamed] = broken.pop(f"{TO_Q}.lora_down.weight")
    bad = write_lora_file(tmp_path / "renamed.safetensors", broken, meta, "fp16")
    assert cli(["verify", str(bad), "--base", str(tiny_model[0])]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    report = verify_lora_file(bad, tiny_model[0])
    assert renamed in failing(report, "key names").detail
    assert f"{TO_Q}.lora_down.weight" in failing(report, "complete modules").detail


def test_wrong_network_dim_fails_naming_the_key(good, tiny_model, tmp_path) -> None:
    path, tensors, meta = good
    bad = write_lora_file(tmp_path / "dim.safetensors", tensors, {**meta, "ss_network_dim": "8"},
                          "fp16")
    report = verify_lora_file(bad, tiny_model[0])
    detail = failing(report, "ss_network_dim").detail
    assert "ss_network_dim = 8" in detail and "rank 4" in detail
    assert [c.name for c in report.failures] == ["ss_network_dim"]


def test_text_encoder_keys_diffusers_skips_are_named(good, tiny_model, monkeypatch) -> None:
    """If diffusers drops the lora_te_text_model_* keys (as a loader expecting another
    transformers layout would), verify must say so, not pass on the U-Net alone."""
    from diffusers import StableDiffusionPipeline

    monkeypatch.setattr(StableDiffusionPipeline, "load_lora_into_text_encoder",
                        classmethod(lambda cls, *args, **kwargs: None))
    report = verify_lora_file(good[0], tiny_model[0])
    detail = failing(report, "diffusers loads every module").detail
    assert "12 of 68 modules were not loaded" in detail
    assert "lora_te_text_model_encoder_layers_0" in detail and "transformers" in detail
    assert not report.ok


def test_file_only_rules_without_a_base(good, tmp_path) -> None:
    path, tensors, meta = good
    wrong = {**meta, "ss_network_alpha": "4", "ss_base_model_version": "sd_v2"}
    bad = write_lora_file(tmp_path / "meta.safetensors", tensors, wrong, "fp16")
    report = verify_lora_file(bad)
    assert report.skipped and not report.ok
    assert "ss_network_alpha = 4" in failing(report, "ss_network_alpha").detail
    assert "sd_v2" in failing(report, "base version keys agree").detail


def test_tampered_hash_and_shapes_for_another_base(good, tiny_model, tmp_path) -> None:
    path, tensors, meta = good
    bad = write_lora_file(tmp_path / "hash.safetensors", tensors, meta, "fp16")
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0x01  # flip one bit of tensor data; the header still claims the old hash
    bad.write_bytes(bytes(raw))
    report = verify_lora_file(bad)
    assert "sshs_model_hash" in failing(report, "sshs_model_hash").detail

    wide = dict(tensors)
    wide[f"{TO_Q}.lora_down.weight"] = torch.zeros(RANK, 320)  # SD 1.5's width, not the tiny's
    bad = write_lora_file(tmp_path / "wide.safetensors", wide, meta, "fp16")
    report = verify_lora_file(bad, tiny_model[1])
    assert f"{TO_Q}.lora_down.weight is [4, 320]" in failing(
        report, "shapes match the base model").detail


def test_unreadable_input_exits_2(tmp_path, tiny_model, capsys) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    assert cli(["verify", str(junk), "--base", str(tiny_model[0])]) == 2
    assert cli(["verify", str(tmp_path / "absent.safetensors"), "--base",
                str(tiny_model[0])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())


def write_raw(path: Path, header: dict, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_header_limits_and_string_metadata(tmp_path) -> None:
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(LoraFileError, match="header claims 1,000,000,000,000 bytes"):
        read_lora_file(huge)
    entry = {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}
    numeric = write_raw(tmp_path / "numeric.safetensors",
                        {"__metadata__": {"ss_network_dim": 4}, f"{TO_Q}.alpha": entry},
                        b"\0\0\0\0")
    with pytest.raises(LoraFileError, match="metadata 'ss_network_dim' is int 4, not a string"):
        read_lora_file(numeric)
    long = write_raw(tmp_path / "long.safetensors",
                     {"__metadata__": {"modelspec.description": "x" * 1_500_000},
                      f"{TO_Q}.alpha": entry}, b"\0\0\0\0")
    lora = read_lora_file(long)
    assert len(lora.metadata["modelspec.description"]) == 1_000_000
    assert any("modelspec.description" in w for w in lora.warnings)
    truncated = write_raw(tmp_path / "short.safetensors", {f"{TO_Q}.alpha": entry}, b"\0")
    with pytest.raises(LoraFileError, match="truncated"):
        read_lora_file(truncated)


def test_good_file_metadata_is_all_strings(good) -> None:
    with safe_open(str(good[0]), "pt") as handle:
        meta = handle.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert set(load_file(good[0])) == set(good[1])
