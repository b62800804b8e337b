"""The VRAM preflight (trainer/vram.py): parameter counts from headers, activations measured on
the meta device, checked against independent readings (the loaded model, real CPU tensors)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from trainer.config_io import build_config
from trainer.families.layout import describe_model
from trainer.models import load_base_model
from trainer.vram import GIB, MemoryEstimate, estimate_for_config, measure_activations, parameter_counts


def test_parameter_counts_from_headers_are_the_loaded_models(tiny_model) -> None:
    base = load_base_model(tiny_model[0])
    loaded = {"unet": sum(p.numel() for p in base.unet.parameters()),
              "vae": sum(p.numel() for p in base.vae.parameters()),
              "text": sum(p.numel() for e in base.text_encoders.values() for p in e.parameters())}
    assert parameter_counts(tiny_model[0]) == loaded  # the diffusers folder
    single = parameter_counts(tiny_model[1])  # the single file holds the same weights
    assert single["unet"] == loaded["unet"] and single["vae"] == loaded["vae"]
    assert abs(single["text"] - loaded["text"]) <= loaded["text"] * 0.01  # + position ids


def _real_kept_bytes(unet, sample, context) -> int:
    """What autograd keeps in a real CPU forward: distinct storages that are not weights."""
    weights = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(sample, torch.tensor([500]), context)
    return sum(storages.values())


def test_the_meta_measurement_matches_a_real_forward_on_this_cpu(tiny_model) -> None:
    base = load_base_model(tiny_model[0])
    unet = base.unet.requires_grad_(False).train()
    config = dict(unet.config)
    sample = torch.randn(2, 4, 16, 16, requires_grad=True)
    context = torch.randn(2, 77, config["cross_attention_dim"])
    real = _real_kept_bytes(unet, sample, context)
    measured, largest = measure_activations(config, batch=2, latent_side=16, dtype_bytes=4,
                                            checkpointing=False)
    assert measured == pytest.approx(real, rel=0.15), (measured, real)
    assert 0 < largest < measured


def test_activations_grow_with_pixels_and_batch_and_checkpointing_cuts_them(tiny_model) -> None:
    config = dict(describe_model(tiny_model[0]).unet_config)

    def kept(batch: int, side: int, checkpointing: bool = False) -> int:
        return measure_activations(config, batch, side, 2, checkpointing)[0]

    assert kept(2, 16) == pytest.approx(2 * kept(1, 16), rel=0.02)
    assert kept(1, 32) == pytest.approx(4 * kept(1, 16), rel=0.15)
    assert kept(1, 32, checkpointing=True) < kept(1, 32) / 2
    adapted = frozenset(n for n, m in load_base_model(tiny_model[0]).unet.named_modules()
                        if n.endswith("attn1.to_q"))
    with_lora = measure_activations(config, 1, 32, 2, False, adapted)[0]
    assert with_lora > kept(1, 32)  # a LoRA's down weight needs its layer's input


def test_the_estimate_adds_up_and_names_what_to_do(tiny_model) -> None:
    settings = {"model": {"path": str(tiny_model[0])},
                "dataset": {"resolution": 128, "min_bucket_reso": 64, "max_bucket_reso": 256}}
    fp32 = estimate_for_config(build_config(settings))
    fp16 = estimate_for_config(build_config({**settings, "precision": {"mixed_precision": "fp16"}}))
    counts = parameter_counts(tiny_model[0])
    assert fp32.weights == 4 * sum(counts.values())
    assert fp16.weights == 2 * (counts["unet"] + counts["text"]) + 4 * counts["vae"]  # fp32 VAE
    assert fp16.activations < fp32.activations
    assert fp16.training_state == fp32.training_state  # the LoRA trains in fp32 either way
    assert fp32.problem(fp32.total) is None
    assert "gradient checkpointing" in fp32.problem(fp32.total - 1)
    assert MemoryEstimate(GIB, 0, 0, 0).text().startswith("about 1.0 GB")


def test_preflight_prints_the_estimate_as_json(tiny_model) -> None:
    out = subprocess.run([sys.executable, "-m", "trainer.cli", "preflight", "--json", "--model",
                          str(tiny_model[0]), "--preset", "tiny-cpu"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == [] and report["problem"] is None  # no GPU on this machine
    config = build_config({"model": {"path": str(tiny_model[0])},
                           "dataset": {"resolution": 64, "min_bucket_reso": 64,
                                       "max_bucket_reso": 128},
                           "network": {"rank": 4, "alpha": 4.0}})
    assert report["estimate"]["total_bytes"] == estimate_for_config(config).total
