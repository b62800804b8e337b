"""Every family loads offline from a diffusers folder and from one single file, identically, and
the same as diffusers' own single-file converter reads it; refusals name what a file is."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainer.families import FAMILIES, get_family
from trainer.models import ModelError, detect_architecture, load_base_model, make_tiny_model

PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl": "StableDiffusionXLPipeline"}


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def tiny_family(request, tmp_path_factory):
    """(family, diffusers folder, single file) of one tiny random model per family."""
    root = tmp_path_factory.mktemp(f"tiny-{request.param}")
    make_tiny_model(root / "model", single_file=root / "model.safetensors", family=request.param)
    return request.param, root / "model", root / "model.safetensors"


def _state(model, component):
    module = getattr(model, component)
    return None if module is None else module.state_dict()


COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def test_folder_and_single_file_load_identically(tiny_family):
    family, folder, single = tiny_family
    a, b = load_base_model(folder), load_base_model(single)
    assert a.family == b.family == family
    assert detect_architecture(folder) == detect_architecture(single) == family
    for comp in COMPONENTS:
        sa, sb = _state(a, comp), _state(b, comp)
        assert (sa is None) == (sb is None) == (comp == "text_encoder_2" and family != "sdxl"), comp
        if sa is None:
            continue
        assert sa.keys() == sb.keys(), comp
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{comp}.{key}"
    # the U-Net reads the family's conditioning: context width, and SDXL's size embedding
    spec = get_family(family)
    context = sum(m.config.hidden_size for m in a.text_encoders.values())
    assert a.unet.config.cross_attention_dim == context
    assert (a.unet.config.addition_embed_type == "text_time") == spec.micro_conditioning
    assert a.vae_scaling_factor == pytest.approx({"sdxl": 0.13025}.get(family, 0.18215))


def test_diffusers_single_file_converter_agrees(tiny_family):
    """diffusers' own converter (from_single_file with the folder as its local config) reads
    our single file into exactly the weights our loader gives: an independent check of the key
    table in both directions (the tiny single file is written through it)."""
    import diffusers

    family, folder, single = tiny_family
    pipe = getattr(diffusers, PIPELINES[family]).from_single_file(
        str(single), config=str(folder), local_files_only=True)
    ours = load_base_model(single)
    checked = 0
    for comp in COMPONENTS:
        mine = _state(ours, comp)
        if mine is None:
            continue
        theirs = getattr(pipe, comp).state_dict()
        assert mine.keys() == theirs.keys(), comp
        for key in mine:
            assert torch.equal(mine[key], theirs[key].float()), f"{comp}.{key}"
            checked += 1
    assert checked == {"sd1": 540, "sd2": 540, "sdxl": 871}[family]  # every tensor of every part


def test_sdxl_encoders_have_different_widths_and_the_pooled_projection(tmp_path_factory):
    root = tmp_path_factory.mktemp("xl-widths")
    make_tiny_model(root / "m", single_file=root / "m.safetensors", family="sdxl")
    model = load_base_model(root / "m.safetensors")
    assert model.text_encoder.config.hidden_size == 32
    assert model.text_encoder_2.config.hidden_size == 64
    assert type(model.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    keys = load_file(root / "m.safetensors")
    # OpenCLIP layout in the file: fused q/k/v and a [D, P] projection (transposed on load)
    qkv = keys["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert qkv.shape == (3 * 64, 64)
    q = model.text_encoder_2.text_model.encoder.layers[0].self_attn.q_proj.weight
    v = model.text_encoder_2.text_model.encoder.layers[0].self_attn.v_proj.weight
    assert torch.equal(q, qkv[:64]) and torch.equal(v, qkv[128:])
    proj = keys["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(model.text_encoder_2.text_projection.weight, proj.T)
    assert model.tokenizer.pad_token == "<|endoftext|>" and model.tokenizer_2.pad_token == "!"


def test_sd2_single_file_drops_the_last_openclip_layer(tmp_path):
    make_tiny_model(tmp_path / "m", single_file=tmp_path / "m.safetensors", family="sd2")
    keys = load_file(tmp_path / "m.safetensors")
    layers = {int(k.split("resblocks.")[1].split(".")[0]) for k in keys if "resblocks." in k}
    assert layers == {0, 1, 2}  # the file has one more layer than the model uses
    model = load_base_model(tmp_path / "m.safetensors")
    assert model.text_encoder.config.num_hidden_layers == 2
    assert model.text_encoder.config.hidden_act == "gelu" and model.tokenizer.pad_token == "!"


def test_v_prediction_is_read_from_the_file(tmp_path):
    make_tiny_model(tmp_path / "v", single_file=tmp_path / "v.safetensors", family="sd2",
                    prediction_type="v_prediction")
    assert detect_architecture(tmp_path / "v") == detect_architecture(tmp_path / "v.safetensors") == "sd2_v"
    for path in (tmp_path / "v", tmp_path / "v.safetensors"):
        model = load_base_model(path)
        assert (model.family, model.prediction_type) == ("sd2", "v_prediction")
        assert model.noise_scheduler.config.prediction_type == "v_prediction"


def test_fp16_sdxl_single_file_loads_with_an_fp32_vae(tmp_path, tiny_family):
    family, folder, single = tiny_family
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(single).items()}
    save_file(half, str(tmp_path / "half.safetensors"))
    model = load_base_model(tmp_path / "half.safetensors", dtype=torch.float16)
    assert model.unet.dtype == torch.float16
    assert model.vae.dtype == (torch.float32 if family == "sdxl" else torch.float16)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    make_tiny_model(tmp_path / "m", single_file=tmp_path / "m.safetensors", family="sdxl")
    sd = load_file(tmp_path / "m.safetensors")
    gone = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"
    save_file({k: v for k, v in sd.items() if k != gone}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match=r"missing\.safetensors is missing 3 weights .*resblocks\.1\.attn"
                                         r"\.in_proj_weight.*complete SDXL"):
        load_base_model(tmp_path / "missing.safetensors")
    extra = dict(sd, **{"conditioner.embedders.2.model.token_embedding.weight": torch.zeros(2, 2)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ModelError, match=r"extra\.safetensors has weights an SDXL model does not have "
                                         r"\(conditioner\.embedders\.2"):
        load_base_model(tmp_path / "extra.safetensors")


def _fake(path: Path, shapes: dict) -> Path:
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


@pytest.mark.parametrize("name, shapes, words", [
    ("refiner.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": (1536, 2560),
        "conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)},
     r"^refiner\.safetensors is an SDXL refiner .*pick the SDXL base model"),
    ("inpaint.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)},
     r"^inpaint\.safetensors is an SD 1\.x inpainting or instruct model \(9 U-Net input channels\)"),
    ("xl-inpaint.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280)},
     r"^xl-inpaint\.safetensors is an SDXL inpainting or instruct model"),
    ("sd3.safetensors", {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4, 4)},
     r"^sd3\.safetensors is an SD3 / Flux-style model"),
    ("flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": (4, 4)},
     r"^flux\.safetensors is an SD3 / Flux-style model"),
])
def test_refused_files_say_what_they_are(tmp_path, name, shapes, words):
    path = _fake(tmp_path / name, shapes)
    for call in (detect_architecture, load_base_model):
        with pytest.raises(ModelError, match=words) as error:
            call(path)
        assert "\n" not in str(error.value)


def test_refiner_folder_is_refused(tmp_path):
    for sub in ("unet", "text_encoder_2", "vae"):
        (tmp_path / "refiner" / sub).mkdir(parents=True)
    (tmp_path / "refiner" / "unet" / "config.json").write_text('{"cross_attention_dim": 1280}')
    (tmp_path / "refiner" / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": true}')
    with pytest.raises(ModelError, match=r"^folder refiner is an SDXL refiner"):
        detect_architecture(tmp_path / "refiner")


def test_a_folders_native_size_is_its_own_sample_size_times_the_vae_downscale() -> None:
    """As diffusers' pipelines size their default image: the demo's tiny SD 1.x model is a
    64 px model (sample_size 8 x 8), not SD 1.5's 512 (the family's figure)."""
    import json

    from trainer.demo import DEMO_BASE
    from trainer.families.family import ASSETS_DIR
    from trainer.families.layout import describe_model

    unet = json.loads((DEMO_BASE / "unet" / "config.json").read_text())
    vae = json.loads((DEMO_BASE / "vae" / "config.json").read_text())
    expected = unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    assert expected == 64
    assert describe_model(DEMO_BASE).native_resolution == 64
    assert describe_model(ASSETS_DIR / "sd15").native_resolution == 512  # 64 x 8
    assert describe_model(ASSETS_DIR / "sdxl").native_resolution == 1024  # 128 x 8
