"""#16, network kinds: DoRA, LoHa and LoKr (and LoRA) trained on every family's tiny model,
exported in LyCORIS' format and read back. The reconstruction below is written here from
docs/lora-format.md ("Network kinds"), the way ComfyUI and LyCORIS rebuild a module, not from
trainer/network_kinds; the trained model (peft) is the other side of every comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from test_network_groups import data, model  # noqa: F401 - the same fixtures: a dataset, a family's tiny model
from test_training import losses, tiny_config, train_whole_and_resumed
from trainer.checkpoint import list_checkpoints
from trainer.config import NetworkConfig
from trainer.loop import train
from trainer.models import load_base_model

KINDS = ["dora", "loha", "lokr"]
NETWORK = {"modules": ["transformer", "conv"], "rank": 4, "alpha": 2.0, "conv_rank": 2,
           "conv_alpha": 1.0}


def rebuilt(tensors: dict[str, torch.Tensor], name: str, weight: torch.Tensor) -> torch.Tensor:
    """The module's weight after a loader applies it at strength 1 (fp64), from the spec:
    LoRA up·down·alpha/r; LoHa (w1a·w1b)⊙(w2a·w2b)·alpha/r, r = hada_w1_b rows (Tucker: each
    factor LyCORIS' rebuild_tucker of hada_t and its two projections); LoKr
    kron(w1, w2)·alpha/r with r from lokr_w1_b else lokr_w2_b, scale 1 with no such tensor;
    DoRA: dora_scale · (W + ΔW) / ||W + ΔW|| per output row."""
    t = {k.removeprefix(f"{name}."): v.double() for k, v in tensors.items()
         if k.startswith(f"{name}.")}
    w = weight.double()
    alpha = float(t["alpha"])
    def tucker(core, first, second):  # LyCORIS' rebuild_tucker
        return torch.einsum("i j ..., i p, j r -> p r ...", core, first, second)

    if "hada_w1_a" in t:
        r = t["hada_w1_b"].shape[0]
        if "hada_t1" in t:
            delta = tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * tucker(
                t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"]) * alpha / r
        else:
            delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * alpha / r
        return w + delta.reshape(w.shape)
    if "lokr_w1" in t or "lokr_w1_a" in t:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else (
            tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"]) if "lokr_t2" in t
            else t["lokr_w2_a"] @ t["lokr_w2_b"])
        r = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else (
            t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None)
        scale = alpha / r if r else 1.0
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return w + (torch.kron(w1, w2.contiguous()) * scale).reshape(w.shape)
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    delta = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)) * alpha / down.shape[0]
    merged = w + delta.reshape(w.shape)
    if "dora_scale" in t:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1)
        merged = merged * (t["dora_scale"].reshape(-1) / norm).reshape(-1, *[1] * (w.dim() - 1))
    return merged


def trained_weight(layer) -> torch.Tensor:
    """peft's own merge of a trained layer (the base weight restored after)."""
    weight = layer.get_base_layer().weight
    original = weight.detach().clone()
    layer.merge()
    merged = weight.detach().double().clone()
    layer.unmerge()
    with torch.no_grad():
        weight.copy_(original)
    return merged


@pytest.mark.slow  # 9 runs, about 50 s
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains_exports_and_the_file_is_the_trained_model(model, data, tmp_path,
                                                                    kind: str) -> None:
    from test_family_training import _outputs
    from trainer.network import apply_lora_to

    family, folder = model
    settings = dict(schedule={"max_train_steps": 5, "seed": 3}, optimizer={"learning_rate": 3e-2},
                    network={**NETWORK, "kind": kind, "train_text_encoder": True})
    exported = train(tiny_config(folder, data, tmp_path / "run", **settings), tmp_path / "run")
    tensors = load_file(exported)  # fp16, as the default export writes it
    with safe_open(str(exported), "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == {"dora": "locon"}.get(kind, kind)

    ours = load_base_model(folder)
    network = apply_lora_to(ours, tiny_config(folder, data, tmp_path, **settings).network)
    network.load_state_dict(load_file(list_checkpoints(tmp_path / "run")[-1] / "lora.safetensors"))
    fresh = load_base_model(folder)  # the base a loader starts from
    base_modules = {**{f"unet.{n}": m for n, m in fresh.unet.named_modules()},
                    **{f"{c}.{n}": m for c, e in fresh.text_encoders.items()
                       for n, m in e.named_modules()}}
    owner = {id(layer): key for key, layer in
             {**{f"unet.{n}": m for n, m in ours.unet.named_modules()},
              **{f"{c}.{n}": m for c, e in ours.text_encoders.items()
                 for n, m in e.named_modules()}}.items()}
    worst = 0.0
    with torch.no_grad():
        for name, layer in network.layers.items():
            expected = trained_weight(layer)
            base_layer = base_modules[owner[id(layer)]]
            got = rebuilt(tensors, name, base_layer.weight)
            scale = max(1.0, float(expected.abs().max()))
            worst = max(worst, float((got - expected).abs().max()) / scale)
            base_layer.weight.copy_(got.float())  # the file applied to the fresh base
    assert worst < 2e-3  # fp16 tensors
    assert len(network.layers) == len({k.rsplit(".", 1)[0] for k in tensors if k.endswith(".alpha")})
    trained = _outputs(ours.unet, {}, {})["unet"]
    applied = _outputs(fresh.unet, {}, {})["unet"]
    base = _outputs(load_base_model(folder).unet, {}, {})["unet"]
    assert float((applied - trained).abs().max()) < 1e-3
    assert float((applied - base).abs().max()) > 1e-3  # it learned something


def test_lokr_with_two_full_factors_reads_at_scale_1_in_every_loader(tiny_model, data,
                                                                     tmp_path) -> None:
    """Rank 16 on the tiny model's 32-64 wide layers: every factor is a full matrix, which
    LyCORIS, ComfyUI and A1111 apply at scale 1 whatever alpha says; peft would scale by
    alpha / r = 0.125. The file must carry what was trained: the trained delta is kron(w1, w2)."""
    from trainer.network import ADAPTER, apply_lora_to

    settings = dict(schedule={"max_train_steps": 3}, optimizer={"learning_rate": 3e-2},
                    network={"kind": "lokr", "rank": 16, "alpha": 2.0},
                    output={"save_precision": "fp32"})
    exported = train(tiny_config(tiny_model[0], data, tmp_path / "run", **settings), tmp_path / "run")
    tensors = load_file(exported)
    assert not any(k.endswith(("_a", "_b")) for k in tensors)  # all factors full
    base = load_base_model(tiny_model[0])
    network = apply_lora_to(base, tiny_config(tiny_model[0], data, tmp_path, **settings).network)
    network.load_state_dict(load_file(list_checkpoints(tmp_path / "run")[-1] / "lora.safetensors"))
    for name, layer in network.layers.items():
        kron = torch.kron(tensors[f"{name}.lokr_w1"], tensors[f"{name}.lokr_w2"])
        delta = layer.get_delta_weight(ADAPTER).detach()
        assert torch.allclose(kron.reshape(delta.shape), delta, atol=1e-7), name
        assert float(tensors[f"{name}.alpha"]) == 16.0  # alpha / r = 1 under any reading
    assert float(delta.abs().max()) > 0


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_tucker_convolutions_read_back_as_trained(tiny_model, data, tmp_path, kind) -> None:
    """use_tucker: each 3x3 conv of a LoHa (and a LoKr's decomposed second factor) is a core
    [r, r, 3, 3] with projections [r, out] / [r, in]; rebuilt as LyCORIS does it, every module
    is the trained one."""
    from trainer.network import apply_lora_to

    network = {"kind": kind, "modules": ["conv"], "rank": 4, "alpha": 2.0, "use_tucker": True,
               **({"lokr_factor": 2, "decompose_both": True} if kind == "lokr" else {})}
    settings = dict(schedule={"max_train_steps": 3}, optimizer={"learning_rate": 3e-2},
                    network=network, output={"save_precision": "fp32"})
    exported = train(tiny_config(tiny_model[0], data, tmp_path / "run", **settings), tmp_path / "run")
    tensors = load_file(exported)
    cores = [k for k in tensors if k.endswith(("hada_t1", "lokr_t2"))]
    assert cores and all(tensors[k].shape[2:] == (3, 3) for k in cores)
    base = load_base_model(tiny_model[0])
    trained = apply_lora_to(base, tiny_config(tiny_model[0], data, tmp_path, **settings).network)
    trained.load_state_dict(load_file(list_checkpoints(tmp_path / "run")[-1] / "lora.safetensors"))
    with torch.no_grad():
        for name, layer in trained.layers.items():
            expected = trained_weight(layer)
            got = rebuilt(tensors, name, layer.get_base_layer().weight)
            assert float((got - expected).abs().max()) < 1e-5 * max(1.0, float(expected.abs().max()))


def test_dora_magnitude_is_one_value_per_output_row_on_linear_and_conv(tiny_model, data,
                                                                       tmp_path) -> None:
    """LyCORIS >= 3.2 (wd_on_output): dora_scale [out, 1] on a Linear, [out, 1, 1, 1] on a conv,
    initialised to the base weight's norm per output row (so an untrained DoRA is the base)."""
    settings = dict(schedule={"max_train_steps": 1}, optimizer={"learning_rate": 1e-9},
                    network={**NETWORK, "kind": "dora"}, output={"save_precision": "fp32"})
    exported = train(tiny_config(tiny_model[0], data, tmp_path / "run", **settings), tmp_path / "run")
    tensors = load_file(exported)
    unet = dict(load_base_model(tiny_model[0]).unet.named_modules())
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    linear = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    for name, path in ((conv, "down_blocks.0.resnets.0.conv1"),
                       (linear, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")):
        weight = unet[path].weight.detach()
        scale = tensors[f"{name}.dora_scale"]
        assert scale.shape == (weight.shape[0], *[1] * (weight.dim() - 1))
        row_norm = weight.reshape(weight.shape[0], -1).norm(dim=1)
        assert torch.allclose(scale.reshape(-1), row_norm, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lora", *KINDS])  # lora: a LoCon (NETWORK has convs)
def test_resume_is_bit_identical_for_each_kind(tiny_model, data, tmp_path, kind: str) -> None:
    network = {**NETWORK, "kind": kind}
    network.update({"rank_dropout": 0.1, "module_dropout": 0.1} if kind in ("loha", "lokr")
                   else {"dropout": 0.1})
    settings = dict(schedule={"max_train_steps": 6, "seed": 9}, network=network,
                    dataset={"batch_size": 2, "flip_aug": True}, output={"save_precision": "fp32"})
    whole, resumed = train_whole_and_resumed(tiny_model[0], data, tmp_path, 3, **settings)
    a, b = load_file(whole), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if kind == "lora":  # the LoCon's 3x3 convs resumed too
        assert any(v.dim() == 4 and v.shape[2] == 3 for v in a.values())
    assert losses(tmp_path / "part")[3:] == losses(tmp_path / "whole")[3:]


def count_on_meta(family: str, network_config: NetworkConfig) -> tuple[int, int]:
    from diffusers import UNet2DConditionModel

    from trainer.families import get_family
    from trainer.network import apply_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(get_family(family).config("unet"))
        network = apply_lora(unet, None, network_config, get_family(family))
    return len(network.layers), network.trainable_parameter_count()


# attention by hand: per transformer block of width w with context c, in + out over its 8
# projections is 14 w + 2 c and its outputs 8 w. SD 1.5: 16 blocks, widths 320 x 5, 640 x 5,
# 1280 x 6 (sum 12,480), c = 768; SDXL: 70 blocks, 640 x 10 and 1280 x 60, c = 2048.
SD15_IN_OUT, SD15_OUT = 14 * 12_480 + 16 * 2 * 768, 8 * 12_480            # 199,296; 99,840
SDXL_IN_OUT = 14 * (10 * 640 + 60 * 1280) + 70 * 2 * 2048                 # 1,451,520
SDXL_OUT = 8 * (10 * 640 + 60 * 1280)                                     # 665,600


# LoHa is two LoRAs; DoRA a LoRA plus one magnitude per output.
@pytest.mark.parametrize("family, kind, expected", [
    ("sd1", "loha", 2 * 16 * SD15_IN_OUT), ("sd1", "dora", 16 * SD15_IN_OUT + SD15_OUT),
    ("sdxl", "loha", 2 * 16 * SDXL_IN_OUT), ("sdxl", "dora", 16 * SDXL_IN_OUT + SDXL_OUT),
    ("sd1", "lokr", None), ("sdxl", "lokr", None),
])
def test_parameter_counts_per_kind_on_the_real_layouts_in_trainer_and_window(
        family: str, kind: str, expected: int | None) -> None:
    from app.model_info import network_parameter_count, selected_modules
    from trainer.families import get_family

    network_config = NetworkConfig(kind=kind, rank=16, alpha=8)
    shown = selected_modules(get_family(family).config("unet"), network_config)
    window = network_parameter_count(shown, network_config)
    assert count_on_meta(family, network_config) == (len(shown), window)
    if expected is not None:
        assert window == expected
    else:  # LoKr: a few percent of LoRA's size
        lora = network_parameter_count(shown, NetworkConfig(rank=16))
        assert window < lora / 10


def test_an_sd15_lokr_layer_by_hand() -> None:
    """to_q of SD 1.5's first block, 320 -> 320: factors (16, 20) each side; rank 16 >= 20 / 2,
    so both factors are full: 16 x 16 + 20 x 20 = 656 parameters; decomposed (rank 4):
    w1 full (16 x 16) and w2 = 4 x (20 + 20)."""
    from trainer.network_kinds import get_kind

    lokr = get_kind("lokr")
    assert lokr.parameter_count(320, 320, (1, 1), 16, NetworkConfig(kind="lokr")) == 656
    assert lokr.parameter_count(320, 320, (1, 1), 4, NetworkConfig(kind="lokr")) == 256 + 160


@pytest.mark.parametrize("network, message", [
    ({"kind": "lokr", "rank": 64}, r"network\.rank = 64 is larger than the narrowest layer"),
    ({"kind": "loha", "modules": ["conv"], "conv_rank": 512}, r"network\.conv_rank = 512"),
])
def test_a_kind_with_a_rank_too_large_is_refused_before_training(tiny_model, network,
                                                                 message) -> None:
    from trainer.network import NetworkError, apply_lora

    base = load_base_model(tiny_model[0])
    with pytest.raises(NetworkError, match=message):
        apply_lora(base.unet, None, NetworkConfig(**network))


@pytest.mark.parametrize("network, message", [
    ({"kind": "lora", "lokr_factor": 4}, r"lokr_factor = 4 applies to kind lokr, not lora"),
    ({"kind": "dora", "rank_dropout": 0.1}, r"rank_dropout = 0\.1 applies to kind loha and lokr"),
    ({"kind": "loha", "dropout": 0.1}, r"dropout = 0\.1 is LoRA's input dropout; LoHa has "),
    ({"kind": "lokr", "lokr_factor": 0}, r"lokr_factor = 0: use -1"),
    ({"kind": "dora", "use_tucker": True}, r"use_tucker = True applies to kind loha and lokr"),
    ({"kind": "oft"}, r"network\.kind = 'oft'"),
])
def test_options_of_another_kind_are_refused_naming_both(network, message) -> None:
    from trainer.config_io import ConfigError, build_config

    with pytest.raises(ConfigError, match=message):
        build_config({"network": network})


@pytest.fixture(scope="module")
def trained_kinds(tiny_model, data, tmp_path_factory) -> dict[str, Path]:
    """A LoHa, a LoKr and a DoRA file of 2 steps each on the tiny SD 1.x model."""
    root = tmp_path_factory.mktemp("kinds")
    files = {}
    for kind in KINDS:
        settings = dict(schedule={"max_train_steps": 2}, optimizer={"learning_rate": 1e-2},
                        network={**NETWORK, "kind": kind}, output={"save_precision": "fp32"})
        files[kind] = train(tiny_config(tiny_model[0], data, root / kind, **settings), root / kind)
    return files


def test_inspect_names_the_kind_and_its_options(trained_kinds, tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    from trainer.cli import main as cli

    expected = {"loha": "LoHa (LyCORIS: algo loha, conv_dim 2, conv_alpha 1, rank_dropout 0, ",
                "lokr": "LoKr (LyCORIS: algo lokr, factor -1, decompose_both False, conv_dim 2",
                "dora": "DoRA (LyCORIS: algo locon, dora_wd True, wd_on_output True, conv_dim 2"}
    for kind, path in trained_kinds.items():
        assert cli(["inspect", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"kind:          {expected[kind]}" in out, out
        assert "modules:       128 (128 U-Net, 0 text encoder)" in out
        assert "keys not understood" not in out and "warning" not in out
    # a LyCORIS LoKr file as LyCORIS writes one (a decomposed second factor), not ours
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    foreign = tmp_path / "lycoris_lokr.safetensors"
    save_file({f"{name}.lokr_w1": torch.ones(4, 4), f"{name}.lokr_w2_a": torch.ones(8, 2),
               f"{name}.lokr_w2_b": torch.ones(2, 8 * 9), f"{name}.alpha": torch.tensor(1.0)},
              str(foreign), metadata={"ss_network_module": "lycoris.kohya",
                                      "ss_network_args": '{"algo": "lokr", "factor": "4"}'})
    assert cli(["inspect", str(foreign)]) == 0
    out = capsys.readouterr().out
    assert "kind:          LoKr (LyCORIS: algo lokr, factor 4)" in out
    assert "rank:          2 (1 modules)" in out and "alpha:         1 (1 modules)" in out


def test_init_from_continues_a_file_of_its_kind_and_refuses_another(trained_kinds, tiny_model,
                                                                    data, tmp_path) -> None:
    from trainer.init_from import init_network_from
    from trainer.network import NetworkError, apply_lora_to

    for kind, path in trained_kinds.items():
        config = tiny_config(tiny_model[0], data, tmp_path, network={**NETWORK, "kind": kind})
        network = apply_lora_to(load_base_model(tiny_model[0]), config.network)
        init_network_from(network, path)
        assert all(torch.equal(v, load_file(path)[k]) for k, v in network.state_dict().items())
    lora = apply_lora_to(load_base_model(tiny_model[0]), NetworkConfig(**NETWORK))
    with pytest.raises(NetworkError, match=r"is a LoHa file but this run trains a LoRA; set "
                                           r"network\.kind = 'loha' or pick a LoRA file"):
        init_network_from(lora, trained_kinds["loha"])
    lokr = apply_lora_to(load_base_model(tiny_model[0]),
                         NetworkConfig(**{**NETWORK, "kind": "lokr", "alpha": 3.0}))
    with pytest.raises(NetworkError, match=r"has alpha 2 but this run's network\.alpha is 3"):
        init_network_from(lokr, trained_kinds["lokr"])


def test_the_lokr_character_preset_builds_a_lokr_of_kohyas_set() -> None:
    from trainer.config_io import build_config, load_config_data, preset_path

    network = build_config(load_config_data(preset_path("sdxl-lokr-character"))).network
    assert (network.kind, network.modules, network.lokr_factor) == ("lokr", ["transformer"], 8)


def test_inspect_reads_a_onetrainer_loha_by_its_dotted_names(tmp_path, capsys) -> None:
    """OneTrainer names modules with dots (`lora_unet.down_blocks.0...`); its LoHa tensors
    are the same, so the kind and module are named as for a kohya-named file."""
    from safetensors.torch import save_file

    from trainer.cli import main as cli

    stem = "lora_unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    path = tmp_path / "onetrainer_loha.safetensors"
    save_file({f"{stem}.hada_w1_a": torch.ones(320, 4), f"{stem}.hada_w1_b": torch.ones(4, 320),
               f"{stem}.hada_w2_a": torch.ones(320, 4), f"{stem}.hada_w2_b": torch.ones(4, 320),
               f"{stem}.alpha": torch.tensor(4.0)}, str(path))
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kind:          LoHa (LyCORIS)" in out and "modules:       1 (1 U-Net" in out
    assert "unet down.0" in out and "keys not understood" not in out


def test_a_crash_in_the_applied_checks_is_a_failed_check_not_a_failed_run(
        trained_kinds, tiny_model, monkeypatch) -> None:
    import trainer.verify_applied as applied
    from trainer.verify import verify_lora_file

    def broken(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(applied, "check_applied", broken)
    report = verify_lora_file(trained_kinds["loha"], tiny_model[0])
    failed = [check for check in report.checks if not check.ok]
    assert [check.name for check in failed] == ["applied as the loaders do"]
    assert failed[0].detail == ("stopped by RuntimeError: Expected all tensors to be on the same "
                                "device")


def test_a_lokr_module_with_a_tucker_core_beside_a_full_factor_is_named_not_a_crash() -> None:
    from trainer.network_kinds import get_kind

    problem = get_kind("lokr").parts_problem({"lokr_w1": (4, 4), "lokr_w2": (8, 8, 3, 3),
                                              "lokr_t2": (2, 2, 3, 3)})
    assert problem == "lokr_t2 belongs to a decomposed lokr_w2, not beside a full one"


def test_init_from_reads_a_kind_in_onetrainers_dotted_naming(trained_kinds, tiny_model, data,
                                                             tmp_path) -> None:
    from safetensors.torch import save_file

    from trainer.init_from import init_network_from
    from trainer.network import apply_lora_to

    ours = load_file(trained_kinds["loha"])
    paths = {path.replace(".", "_"): path for path, _ in
             load_base_model(tiny_model[0]).unet.named_modules()}
    dotted = {}
    for key, value in ours.items():
        name, _, part = key.partition(".")
        dotted[f"lora_unet.{paths[name.removeprefix('lora_unet_')]}.{part}"] = value
    assert len(dotted) == len(ours)
    save_file(dotted, str(tmp_path / "onetrainer.safetensors"))
    config = tiny_config(tiny_model[0], data, tmp_path, network={**NETWORK, "kind": "loha"})
    network = apply_lora_to(load_base_model(tiny_model[0]), config.network)
    init_network_from(network, tmp_path / "onetrainer.safetensors")
    assert all(torch.equal(v, ours[k]) for k, v in network.state_dict().items())


def test_a_checkpoint_without_metadata_exports_with_its_kinds_keys(trained_kinds,
                                                                   tmp_path) -> None:
    """An older checkpoint has no metadata.json: the export's minimal metadata is the kind's
    (LoHa: lycoris.kohya), its rank the most common one (the 102 rank-4 layers, not the 26
    conv-rank-2 convs)."""
    import shutil

    from trainer.export import export_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained_kinds["loha"].parent, run)
    checkpoint = list_checkpoints(run)[-1]
    (checkpoint / "metadata.json").unlink()
    out = export_checkpoint(checkpoint, tmp_path / "old.safetensors").path
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == (
        "lycoris.kohya", "4", "2")
