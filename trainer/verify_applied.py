"""Base-model rules of `verify` for every network kind, by the loaders' own arithmetic.

diffusers loads LoRA and LoCon only (it refuses LoHa / LoKr keys and drops DoRA's dora_scale),
so for every kind the file is also applied the way A1111 / ComfyUI / LyCORIS apply it
(`NetworkKind.merged`, written from docs/lora-format.md): each module must fit its base layer,
the U-Net's fixed-seed output must change, and, given the network that was trained (at the end
of a run), every module's merged weight must equal the trained model's, module by module.
"""

from __future__ import annotations

from trainer.lora_reader import LoraFile
from trainer.network_kinds import ADAPTER, NetworkKind
from trainer.verify_report import VerifyReport, few

# |file - trained| allowed, relative to the weight's magnitude, by the coarser of the file's
# dtype and the trained base weights' (a bf16 run merges into bf16 weights)
MERGED_RTOL = {"F16": 2e-3, "BF16": 1.6e-2, "F32": 1e-5}
BASE_RTOL = {"torch.float16": 2e-3, "torch.bfloat16": 1.6e-2}
DIFFUSERS_CANNOT = {
    "loha": "diffusers refuses LoHa keys (A1111/Forge, ComfyUI and LyCORIS load them)",
    "lokr": "diffusers refuses LoKr keys (A1111/Forge, ComfyUI and LyCORIS load them)",
    "dora": "diffusers drops dora_scale and would apply this file as a plain LoRA",
}


def module_parts(lora: LoraFile, parts: dict[str, str]):
    """(the module's tensors in fp64 by suffix, its alpha or None)."""
    import torch

    tensors = {part: lora.tensors[key].to(torch.float64) for part, key in parts.items()
               if part != "alpha"}
    alpha = float(lora.tensors[parts["alpha"]].float()) if "alpha" in parts else None
    return tensors, alpha


def check_applied(lora: LoraFile, modules: dict[str, dict[str, str]], kind: NetworkKind, base,
                  report: VerifyReport, trained=None) -> None:
    """Apply every module to `base` (its weights are restored after), check the shapes, the
    U-Net's output and, with `trained` (a LoraNetwork), the trained merged weights."""
    import torch

    from trainer.verify_base import _max_diff, _module_paths, _named, _unet_output

    paths, named = _module_paths(base, base.spec), _named(base, base.spec)
    before = _unet_output(base.unet)
    saved, problems, differ, worst = {}, [], [], (0.0, "")
    rtol = MERGED_RTOL.get(next(iter(lora.entries.values())).dtype, 2e-3)
    with torch.no_grad():
        for name, parts in sorted(modules.items()):
            if name not in paths:
                problems.append(f"{name} is not a layer of the base model")
                continue
            component, path = paths[name]
            weight = named[component][path].weight
            tensors, alpha = module_parts(lora, parts)
            try:
                merged = kind.merged(weight.double(), tensors, alpha)
            except RuntimeError as error:  # the factors do not make the layer's shape
                problems.append(f"{name}: the tensors do not make the base's "
                                f"{list(weight.shape)} ({str(error).splitlines()[0][:80]})")
                continue
            if trained is not None and name in trained.layers:
                layer = trained.layers[name]
                allowed = max(rtol, BASE_RTOL.get(str(layer.get_base_layer().weight.dtype), 0.0))
                error = _max_diff(merged, _trained_weight(layer))
                scale = max(1.0, float(merged.abs().max()))
                if error > allowed * scale:
                    differ.append(f"{name}: max |file - trained| = {error:.3g}")
                worst = max(worst, (error / scale, name))
            saved[(component, path)] = weight.detach().clone()
            weight.copy_(merged.to(weight.dtype))
        after = _unet_output(base.unet)
        for (component, path), weight in saved.items():
            named[component][path].weight.copy_(weight)
    report.add("modules fit the base model", not problems and bool(modules),
               f"{len(modules)} {kind.label} modules make their base layers' shapes"
               if not problems else few(problems, 2))
    changed = float((after - before).abs().max())
    unet = any(paths[n][0] == "unet" for n in modules if n in paths)
    if unet:
        report.add(f"U-Net output changes ({kind.label} applied as the loaders do)",
                   changed > 1e-5 * (float(before.abs().max()) or 1.0),
                   f"max |difference| {changed:.3g} from the base (fixed seed)")
    if trained is None:
        report.skipped.append("file = trained model, module by module: only at the end of a "
                              "run (the trained network is needed)")
        return
    report.add("file = trained model, module by module", not differ and not problems,
               f"{len(modules)} modules, max relative |error| {worst[0]:.2g} ({worst[1]})"
               if not differ else f"{len(differ)} modules differ: {few(differ, 2)}")


def _trained_weight(layer):
    """The trained layer's merged weight as peft merges it (the base weight is restored)."""
    import torch

    weight = layer.get_base_layer().weight
    original = weight.detach().clone()
    layer.merge(adapter_names=[ADAPTER])
    merged = weight.detach().to("cpu", dtype=torch.float64).clone()  # a GPU run: on the CPU
    layer.unmerge()
    weight.copy_(original)  # unmerging subtracts again: restore the exact bits
    return merged
