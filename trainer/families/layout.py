"""A base model described without torch: family, prediction type, native size, U-Net layout.

The window shows this in its Base model section and builds its layer tree and live parameter
count from it; the trainer counts the same modules (`NetworkConfig.selects` decides for both).
A diffusers folder is described from its configs, a single .safetensors file from the shapes in
its header (the same inference the loader uses), so a fine-tune's real layout is what is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import NetworkConfig
from trainer.network_groups import ATTENTION_LEAVES, leaf_of
from trainer.network_kinds import get_kind

from . import get_family
from .checkpoint_keys import unet_sgm_paths
from .config_inference import infer_unet_config
from .detect import classify_folder, classify_keys, read_json
from .errors import ModelError
from .lora_names import TEXT_ENCODER_LAYERS, kohya_name
from .safetensors_header import read_header
from .torch_archive import torch_archive_problem
from .unet_layers import LayerShape, unet_layers

@dataclass
class ModelDescription:
    """What the window shows about a base model (``usable`` False: ``message`` says why)."""

    family: str = ""                 # "sd1" | "sd2" | "sdxl" | ""
    label: str = ""                  # "SD 1.x" | "SD 2.x (v-prediction)" | "SDXL" | ""
    prediction_type: str = ""        # "epsilon" | "v_prediction" | "" (not known)
    prediction_reason: str = ""      # why: "the file has a v_pred key", "assumed: ..."
    native_resolution: int = 0
    message: str = ""
    usable: bool = False
    unet_config: dict = field(default_factory=dict)


def describe_model(path: Path | str | None) -> ModelDescription:
    """Family, prediction type and U-Net layout of a diffusers folder or one checkpoint file;
    never raises (an unusable model comes back with the reason in ``message``)."""
    if path is None or str(path) == "":
        return ModelDescription(message="Pick a base model: a diffusers folder or one "
                                        ".safetensors file.")
    path = Path(path).expanduser()
    if not path.exists():
        return ModelDescription(message=f"Not found: {path}")
    try:
        if path.is_dir():
            architecture = classify_folder(path)
            unet = {k: v for k, v in read_json(path / "unet" / "config.json").items()
                    if not k.startswith("_")}
            sched_path = path / "scheduler" / "scheduler_config.json"
            scheduler = read_json(sched_path) if sched_path.is_file() else {}
            v = scheduler.get("prediction_type") == "v_prediction"
            reason = ("the folder's scheduler says v_prediction" if v else
                      "the folder's scheduler says epsilon" if scheduler else
                      "assumed: the folder has no scheduler config")
            what = "diffusers folder"
            weights = any((path / "unet").glob("diffusion_pytorch_model*"))
            folder_native = _folder_native_size(path, unet)
        elif path.suffix.lower() == ".ckpt":
            problem = torch_archive_problem(path)
            return ModelDescription(usable=not problem, message=problem or (
                "A PyTorch .ckpt archive: its family is read when training starts (a "
                ".safetensors file is checked as soon as it is picked)."))
        else:
            header = read_header(path)
            shapes = header.shapes()
            architecture = classify_keys(shapes, path, header.metadata)
            unet = infer_unet_config(shapes, path, get_family(architecture))
            v = "v_pred" in shapes
            reason = ("the file has a v_pred key" if v else
                      "assumed: the file has no v_pred key (the mark of a v-prediction model)")
            what = "checkpoint file"
            weights = True
            folder_native = 0  # a single file says nothing of its size: the family's
    except ModelError as error:
        return ModelDescription(message=str(error))
    family = get_family(architecture)
    prediction = "v_prediction" if v or architecture == "sd2_v" else "epsilon"
    native = folder_native or native_resolution(family.name, prediction)
    label = family.display_label(prediction)
    message = f"{label} {what}, native {native} px - ready to train."
    if not weights:  # the layout is known (the window still shows it), training is not possible
        message = (f"This folder has the {label} settings but no U-Net weights "
                   "(unet/diffusion_pytorch_model.safetensors is missing).")
    return ModelDescription(
        family=family.name, label=label, prediction_type=prediction, prediction_reason=reason,
        native_resolution=native, usable=weights, unet_config=unet, message=message)


def _folder_native_size(folder: Path, unet: dict) -> int:
    """The image side a diffusers folder generates by default, as diffusers' pipelines compute
    it: the U-Net's sample_size times the VAE's downscale (2 ** (VAE blocks - 1)); 0 when the
    folder does not say. SD 1.5 gives 64 x 8 = 512; the demo's tiny model 8 x 8 = 64."""
    vae_path = folder / "vae" / "config.json"
    sample_size = unet.get("sample_size")
    if not isinstance(sample_size, int) or not vae_path.is_file():
        return 0
    blocks = read_json(vae_path).get("block_out_channels") or []
    return sample_size * 2 ** (len(blocks) - 1) if blocks else 0


def native_resolution(family_name: str, prediction_type: str) -> int:
    """The side a family was trained at for this prediction type (SD 2.x v: 768; SDXL: 1024),
    from the family's modelspec.resolution."""
    family = get_family(family_name)
    return int(family.version_for(prediction_type)[2].split("x")[0])


def block_of(name: str) -> tuple[str, str]:
    """("down" | "mid" | "up", block index) of a diffusers U-Net module path."""
    if name.startswith("mid_block"):
        return "mid", "0"
    kind, index = name.split(".")[:2]
    return kind.removesuffix("_blocks"), index


@dataclass(frozen=True)
class UNetBlock:
    """One down/mid/up block, as the layer tree shows it."""

    key: str            # "down.1" / "mid" / "up.0": what network.targets and blocks say
    label: str          # "Down block 1 (input blocks 4, 5)" for SDXL
    transformer_depth: int
    modules: int        # attention projections in it (0: a block of ResNets only)
    leaves: tuple[str, ...] = ()  # every layer kind it holds (trainer.network_groups)


def unet_blocks(family_name: str, unet: dict) -> list[UNetBlock]:
    """The U-Net's blocks in model order with the family's own names (SDXL: the SGM input /
    middle / output block numbers kohya and A1111 users know), their transformer depth and
    which layers they hold."""
    family = get_family(family_name)
    sgm = unet_sgm_paths(unet) if family.unet_names == "sgm" and unet else {}
    grouped: dict[str, list[str]] = {}
    leaves: dict[str, dict[str, None]] = {}
    for layer in unet_layers(unet):
        kind, index, leaf = leaf_of(layer.name)
        key = "mid" if kind == "mid" else f"{kind}.{index}"
        grouped.setdefault(key, []).append(layer.name)
        leaves.setdefault(key, {})[leaf] = None
    out = []
    for key, names in sorted(grouped.items(), key=lambda item: _block_order(item[0])):
        kind, _, index = key.partition(".")
        title = {"down": f"Down block {index}", "mid": "Middle block", "up": f"Up block {index}"}[kind]
        attention = [n for n in names if leaf_of(n)[2] in ATTENTION_LEAVES]
        depth = len({n.split(".transformer_blocks.")[1].split(".")[0] for n in attention})
        where = {"down": "input blocks", "up": "output blocks"}.get(kind)
        if sgm and where:  # the one middle block needs no number
            numbers = sorted({int(sgm[n].split(".")[1]) for n in attention or names})
            title += f" ({where} {', '.join(map(str, numbers))})"
        out.append(UNetBlock(key, title, depth, len(attention), tuple(leaves[key])))
    return out


def attention_blocks(family_name: str, unet: dict) -> list[UNetBlock]:
    """The blocks that hold attention (what the attention group can adapt)."""
    return [block for block in unet_blocks(family_name, unet) if block.modules]


def _block_order(key: str) -> tuple[int, int]:
    kind, _, index = key.partition(".")
    return {"down": 0, "mid": 1, "up": 2}[kind], int(index or 0)


def selected_modules(unet: dict, network: NetworkConfig) -> list[LayerShape]:
    """The layers the network settings pick (the trainer asks the same
    `NetworkConfig.selects`, so the count shown is the count trained)."""
    return [layer for layer in unet_layers(unet) if network.selects(*leaf_of(layer.name))]


def layer_parameter_count(layer: LayerShape, network: NetworkConfig) -> int:
    """Trainable parameters of one adapted layer, by the network kind's own arithmetic (LoRA:
    rank x (in x kernel + out); the layer's rank: conv_rank for a k x k convolution)."""
    return get_kind(network.kind).parameter_count(layer.fan_in, layer.fan_out, layer.kernel,
                                                  network.rank_for(layer.kernel), network)


def network_parameter_count(layers: list[LayerShape], network: NetworkConfig) -> int:
    """Trainable parameters of the network on these layers."""
    return sum(layer_parameter_count(layer, network) for layer in layers)


CLIP_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers")


def text_encoder_config(family: str, component: str, model_path: Path | str | None) -> dict:
    """A text encoder's shape config: the model folder's own (the demo's tiny CLIP differs
    from its family's), else the family's bundled one (a single checkpoint file of a family
    always has the family's text encoders)."""
    own = Path(model_path) / component / "config.json" if model_path else None
    if own is not None and own.is_file():
        try:
            data = read_json(own)
        except ModelError:
            data = {}
        if isinstance(data, dict) and all(isinstance(data.get(k), int) for k in CLIP_SHAPE_KEYS):
            return data
    return get_family(family).config(component)


def text_encoder_modules(family: str, model_path: Path | str | None) -> list[LayerShape]:
    """(kohya name, in features, out features) of every text-encoder layer a text-encoder
    LoRA adapts (TEXT_ENCODER_LAYERS, what the trainer matches), in every CLIP layer of every
    text encoder of the family (SDXL: both)."""
    modules = []
    for spec in get_family(family).text_encoders:
        config = text_encoder_config(family, spec.component, model_path)
        for layer in range(config["num_hidden_layers"]):
            path = f"text_model.encoder.layers.{layer}"
            modules += [LayerShape(kohya_name(spec.kohya_prefix, f"{path}.{name}"),
                                   config[fan_in], config[fan_out])
                        for name, (fan_in, fan_out) in TEXT_ENCODER_LAYERS.items()]
    return modules
