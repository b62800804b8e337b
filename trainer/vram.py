"""How much GPU memory a run will need, before it starts: the VRAM preflight.

peak = weights + LoRA training state + saved activations + a backward transient, where
- weights: every tensor of the base model as stored on the GPU (U-Net and text encoders in
  the mixed-precision dtype, the VAE in fp32: loop.py keeps it so), counted from the files'
  headers (no weights are read);
- training state: the LoRA in fp32 with its gradient and AdamW's two moments (8-bit AdamW: two
  bytes of moments), from the layer arithmetic of `trainer.families.layout`;
- activations: what autograd keeps for the backward pass, measured by running the model's own
  U-Net on torch's meta device (shapes only, no memory, about a second) with the frozen base and
  the chosen resolution, batch, dtype and checkpointing; attention counts as the fused kernels
  keep it on a GPU (q, k, v, output, log-sum-exp; never the score matrix). With checkpointing,
  the inputs kept at each checkpoint plus the largest block recomputed during the backward;
- transient: the gradient of the largest activation, twice (one flowing in, one out).
The GPU bench (bench/gpu.sh) prints this estimate beside the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.config import TrainConfig
from trainer.families.safetensors_header import SafetensorsError, parse_header

GIB = 2 ** 30
SINGLE_FILE_PARTS = {"model.diffusion_model.": "unet", "first_stage_model.": "vae",
                     "cond_stage_model.": "text", "conditioner.": "text"}
FOLDER_PARTS = {"unet": "unet", "vae": "vae", "text_encoder": "text", "text_encoder_2": "text"}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a run's peak GPU memory."""

    weights: int
    training_state: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return self.weights + self.training_state + self.activations + self.transient

    def text(self) -> str:
        parts = (("model", self.weights), ("LoRA and optimizer", self.training_state),
                 ("activations", self.activations + self.transient))
        return (f"about {self.total / GIB:.1f} GB of GPU memory (" +
                ", ".join(f"{name} {size / GIB:.1f}" for name, size in parts) + ")")

    def problem(self, free_bytes: int) -> str | None:
        """What to do when the run would not fit in `free_bytes`, or None."""
        if self.total <= free_bytes:
            return None
        return (f"this run needs {self.text()}, but the GPU has {free_bytes / GIB:.1f} GB free: "
                "turn on gradient checkpointing, use fp16 or bf16, or lower the batch size or "
                "resolution")


def parameter_counts(model_path: Path) -> dict[str, int]:
    """Parameters of the U-Net, VAE and text encoders ("text"), from safetensors headers: a
    single file's key prefixes, or a diffusers folder's component folders (.bin weights are
    not counted)."""
    path = Path(model_path)
    counts = {"unet": 0, "vae": 0, "text": 0}
    files: list[tuple[Path, str | None]] = (
        [(f, part) for folder, part in FOLDER_PARTS.items()
         for f in sorted((path / folder).glob("*.safetensors"))] if path.is_dir()
        else [(path, None)])
    for file, part in files:
        try:
            tensors = parse_header(file).tensors
        except SafetensorsError:
            continue  # describe_model says why a model is unusable; here it counts nothing
        for key, info in tensors.items():
            owner = part or next((p for prefix, p in SINGLE_FILE_PARTS.items()
                                  if key.startswith(prefix)), None)
            if owner:
                size = 1
                for side in info.shape:
                    size *= side
                counts[owner] += size
    return counts


def measure_activations(unet_config: dict, batch: int, latent_side: int, dtype_bytes: int,
                        checkpointing: bool, adapted: frozenset[str] = frozenset(),
                        context_tokens: int = 77) -> tuple[int, int]:
    """(bytes autograd keeps, largest single kept tensor) for one training forward of this
    U-Net, on the meta device with frozen weights; a LoRA on the `adapted` layers (diffusers
    paths) keeps each one's input too (its down weight's gradient needs it)."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    dtype = {2: torch.float16, 4: torch.float32}[dtype_bytes]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    unet = unet.half() if dtype == torch.float16 else unet  # (.to() warns about fp32 modules)
    unet.requires_grad_(False).train()
    params = {id(p) for p in unet.parameters()}
    kept = {"total": 0, "largest": 0, "block": 0, "block_peak": 0}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in params and id(base) not in params:  # a frozen weight is no cost
            size = tensor.numel() * tensor.element_size()
            kept["total"] += size
            kept["block"] += size
            kept["largest"] = max(kept["largest"], size)
        return tensor

    class FusedAttention(torch.autograd.Function):
        """What flash / memory-efficient attention keeps on a GPU."""

        @staticmethod
        def forward(ctx, q, k, v):
            out = torch.empty_like(q)
            ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, grad):  # never run: the meta pass only counts
            return grad, grad, grad

    def attention(q, k, v, *args, **kwargs):
        return FusedAttention.apply(q, k, v)

    seen_inputs: dict[int, object] = {}  # held, so that no id is reused by a later tensor

    def lora_input(module, args):
        if not checkpointing and id(args[0]) not in seen_inputs:  # (checkpointed: recomputed)
            seen_inputs[id(args[0])] = args[0]
            pack(args[0].detach())  # a new tensor object: counted as an activation

    def block_start(module, args):
        kept["block"] = 0

    def block_end(module, args, output):
        kept["block_peak"] = max(kept["block_peak"], kept["block"])

    # The blocks diffusers checkpoints: measured unchecked, their largest is the recompute peak.
    blocks = [m for m in unet.modules()
              if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
    hooks = [h for m in blocks for h in (m.register_forward_pre_hook(block_start),
                                         m.register_forward_hook(block_end))]
    hooks += [m.register_forward_pre_hook(lora_input) for name, m in unet.named_modules()
              if name in adapted]
    sample = torch.empty(batch, unet_config.get("in_channels", 4), latent_side, latent_side,
                         device="meta", dtype=dtype, requires_grad=True)
    context = torch.empty(batch, context_tokens, unet_config["cross_attention_dim"],
                          device="meta", dtype=dtype)
    extra = {}
    if unet_config.get("addition_embed_type") == "text_time":
        time_ids = 6 * unet_config["addition_time_embed_dim"]
        extra = {"added_cond_kwargs": {
            "text_embeds": torch.empty(batch, unet_config["projection_class_embeddings_input_dim"]
                                       - time_ids, device="meta", dtype=dtype),
            "time_ids": torch.empty(batch, 6, device="meta", dtype=dtype)}}
    timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
    real_attention = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = attention
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            unet(sample, timesteps, context, **extra)
        if checkpointing:
            block_peak, largest = kept["block_peak"], kept["largest"]
            kept.update(total=0, largest=0)
            unet.enable_gradient_checkpointing()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                unet(sample, timesteps, context, **extra)
            return kept["total"] + block_peak, largest
        return kept["total"], kept["largest"]
    finally:
        F.scaled_dot_product_attention = real_attention
        for hook in hooks:
            hook.remove()


def estimate_for_config(config: TrainConfig) -> MemoryEstimate:
    """The peak GPU memory of one process of this run (batch and resolution are per process)."""
    from trainer.families.layout import (describe_model, network_parameter_count,
                                         selected_modules, text_encoder_modules)

    model = describe_model(config.model.path)
    if not model.usable:
        raise ValueError(model.message)
    half = config.precision.mixed_precision in ("fp16", "bf16")
    counts = parameter_counts(Path(config.model.path))
    weights = (counts["unet"] + counts["text"]) * (2 if half else 4) + counts["vae"] * 4
    layers = selected_modules(model.unet_config, config.network)
    text = (text_encoder_modules(model.family, config.model.path)
            if config.network.train_text_encoder else [])
    lora = network_parameter_count(layers + text, config.network)
    moments = 2 if config.optimizer.type == "AdamW8bit" else 8
    side = config.dataset.resolution // 8  # the VAE's downscale in every SD family
    activations, largest = measure_activations(model.unet_config, config.dataset.batch_size,
                                               side, 2 if half else 4,
                                               config.precision.gradient_checkpointing,
                                               frozenset(layer.name for layer in layers))
    return MemoryEstimate(weights=weights, training_state=lora * (4 + 4 + moments),
                          activations=activations, transient=2 * largest)


def cuda_devices() -> list[dict]:
    """Every CUDA GPU this process sees: index, name, free and total bytes ([] without)."""
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        devices.append({"index": index, "name": torch.cuda.get_device_name(index),
                        "free_bytes": free, "total_bytes": total})
    return devices


def preflight_note(config: TrainConfig, free_bytes: int) -> tuple[str, str]:
    """(log level, text) for a run about to start on a GPU with `free_bytes` free: a warning
    when the estimate does not fit, else the estimate as information. Never raises: an
    estimate that can't be made must not stop a run."""
    try:
        estimate = estimate_for_config(config)
    except Exception as error:  # noqa: BLE001 - a preflight is advice, never a failure
        return "info", f"no GPU memory estimate for this model ({type(error).__name__}: {error})"
    problem = estimate.problem(free_bytes)
    if problem:
        return "warning", problem
    return "info", f"this run needs {estimate.text()}; the GPU has {free_bytes / GIB:.1f} GB free"
