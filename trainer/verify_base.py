"""Base-model rules of `verify_lora_file`: shapes against the base, and diffusers' own loader.

diffusers' `load_lora_weights` reads the file into the family's pipeline of the base model
(StableDiffusionXLPipeline for SDXL); for every module the fused weight must equal
W0 + (alpha / r) * up @ down, and fixed-seed U-Net and text-encoder outputs must change at
strength 1 and equal the base at strength 0.
"""

from __future__ import annotations

from pathlib import Path

from trainer.lora_reader import LoraFile
from trainer.verify_report import ADAPTER, WEIGHT_RTOL, VerifyReport, few


def _module_paths(owner, family=None) -> dict[str, tuple[str, str]]:
    """kohya name -> (component, module path) for every Linear / Conv2d of a base model or
    pipeline (`owner`), in its family's naming (default SD 1.x)."""
    from torch import nn

    from trainer.families import get_family
    from trainer.families.lora_names import kohya_name, unet_kohya_names

    family = family or get_family("sd1")
    found = {}
    unet_paths = [path for path, module in owner.unet.named_modules()
                  if isinstance(module, (nn.Linear, nn.Conv2d))]
    for path, name in unet_kohya_names(family, owner.unet.config, unet_paths).items():
        found[name] = ("unet", path)
    for spec in family.text_encoders:
        encoder = getattr(owner, spec.component, None)
        if encoder is None:
            continue
        for path, module in encoder.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                found[kohya_name(spec.kohya_prefix, path)] = (spec.component, path)
    return found


def _named(owner, family) -> dict[str, dict]:
    parts = {"unet": dict(owner.unet.named_modules())}
    for spec in family.text_encoders:
        parts[spec.component] = dict(getattr(owner, spec.component).named_modules())
    return parts


def check_base(lora: LoraFile, modules: dict[str, dict[str, str]], base,
                report: VerifyReport, shapes: bool = True) -> None:
    """The base version keys, and (`shapes`, LoRA's tensors) every module's shapes."""
    from trainer.metadata import base_model_metadata

    meta = lora.metadata
    try:
        expected = base_model_metadata(base.family, base.prediction_type)
    except ValueError as error:
        report.add("base model version", False, str(error))
    else:
        wrong = [f"{key} = {meta.get(key)!r} (the base needs {expected[key]!r})"
                 for key in ("ss_base_model_version", "ss_v2", "modelspec.architecture")
                 if meta.get(key) != expected[key]]
        report.add("base model version", not wrong,
                   f"{expected['ss_base_model_version']} / {expected['modelspec.architecture']} "
                   f"matches the {base.family} base" if not wrong else few(wrong, 3))
    if shapes:
        _check_shapes(lora, modules, base, report)


def _check_shapes(lora: LoraFile, modules: dict[str, dict[str, str]], owner,
                  report: VerifyReport) -> None:
    from torch import nn

    paths = _module_paths(owner, owner.spec)
    named = _named(owner, owner.spec)
    problems = []
    for name, parts in sorted(modules.items()):
        if name not in paths:
            problems.append(f"{name} is not a Linear or Conv2d of the base model")
            continue
        component, path = paths[name]
        layer = named[component][path]
        down = lora.entries.get(parts.get("lora_down.weight", ""))
        up = lora.entries.get(parts.get("lora_up.weight", ""))
        if down is None or up is None:
            continue
        r = down.shape[0]
        if isinstance(layer, nn.Linear):
            want_down, want_up = (r, layer.in_features), (layer.out_features, r)
        else:
            k = tuple(layer.kernel_size)
            want_down, want_up = (r, layer.in_channels, *k), (layer.out_channels, r, 1, 1)
        if tuple(down.shape) != want_down:
            problems.append(f"{parts['lora_down.weight']} is {list(down.shape)}, the base needs "
                            f"{list(want_down)}")
        if tuple(up.shape) != want_up:
            problems.append(f"{parts['lora_up.weight']} is {list(up.shape)}, the base needs "
                            f"{list(want_up)}")
    report.add("shapes match the base model", not problems and bool(modules),
               f"{len(modules)} modules fit {lora.path.name}'s base" if not problems and modules
               else "no modules" if not modules else few(problems, 2))


def _build_pipeline(base_model_path: Path, base):
    """diffusers' own pipeline of the base: `from_pretrained` for a folder, the components our
    loader built for a single file (diffusers would need the hub for its configs)."""
    import torch

    from trainer.pipelines import build_pipeline, pipeline_class, pipeline_extras

    family = base.spec
    cls = pipeline_class(family)
    if Path(base_model_path).is_dir():
        try:
            pipe = cls.from_pretrained(base_model_path, dtype=torch.float32, **pipeline_extras(family))
            return pipe, f"{cls.__name__}.from_pretrained"
        except Exception as error:  # a folder diffusers cannot read alone: use our loader
            note = f"from_pretrained failed ({type(error).__name__}); LoRA Studio's loader"
    else:
        note = "LoRA Studio's single-file loader"
    if base.unet is None:
        from trainer.models import load_base_model

        base = load_base_model(Path(base_model_path))
    return build_pipeline(base), f"{cls.__name__} from {note}"


def _unet_output(unet):
    """A fixed-seed U-Net output (with SDXL's pooled embedding and size ids when it has them)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    size = 8
    sample = torch.randn(1, unet.config.in_channels, size, size, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = (unet.config.projection_class_embeddings_input_dim
                  - 6 * unet.config.addition_time_embed_dim)
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=generator),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), context, **extra).sample


def _text_output(text_encoder, tokenizer):
    import torch

    ids = tokenizer(["a painting of a lighthouse at dusk"], padding="max_length",
                    max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids, output_hidden_states=True).hidden_states[-1]


def _max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def _check_strengths(report: VerifyReport, pipe, part: str, note: str, before, output) -> None:
    """At strength 1 the output must move away from the base; at strength 0 it must be the base."""
    pipe.set_adapters([ADAPTER], adapter_weights=[1.0])
    full = output()
    pipe.set_adapters([ADAPTER], adapter_weights=[0.0])
    zero = output()
    scale = float(before.abs().max()) or 1.0
    changed, same = _max_diff(full, before), _max_diff(zero, before)
    report.add(f"{part} output changes at strength 1", changed > 1e-5 * scale,
               f"max |difference| {changed:.3g} from the base{note}" if changed > 1e-5 * scale
               else f"max |difference| {changed:.3g}: the LoRA does nothing to the {part}")
    report.add(f"{part} output equals the base at strength 0", same <= 1e-6 * scale,
               f"max |difference| {same:.3g}")


def check_diffusers(lora: LoraFile, modules: dict[str, dict[str, str]], base_model_path: Path,
                     base, report: VerifyReport) -> None:
    import torch
    from peft.tuners.lora import LoraLayer

    family = base.spec
    pipe, how = _build_pipeline(base_model_path, base)
    paths = _module_paths(pipe, family)
    named = _named(pipe, family)
    targets = {name: paths[name] for name in modules if name in paths}
    with torch.no_grad():
        originals = {name: named[c][p].weight.detach().clone() for name, (c, p) in targets.items()}
    has_unet = any(c == "unet" for c, _ in targets.values())
    encoders = [s for s in family.text_encoders if any(c == s.component for c, _ in targets.values())]
    labels = {s.component: "text-encoder" if len(family.text_encoders) == 1
              else f"text-encoder {i + 1}" for i, s in enumerate(family.text_encoders)}

    def text_output(spec):
        return _text_output(getattr(pipe, spec.component), getattr(pipe, spec.tokenizer_component))

    unet_before = _unet_output(pipe.unet) if has_unet else None
    text_before = {s.component: text_output(s) for s in encoders}

    try:
        pipe.load_lora_weights(str(lora.path), adapter_name=ADAPTER)
    except Exception as error:
        report.add("diffusers loads the file", False,
                   f"{how}.load_lora_weights raised {type(error).__name__}: "
                   f"{str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}")
        return
    named = _named(pipe, family)
    layers = {name: named[c].get(p) for name, (c, p) in targets.items()}
    not_loaded = sorted(n for n, layer in layers.items()
                        if not (isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A))
    counts = {c: sum(1 for n, (cc, _) in targets.items() if cc == c and n not in not_loaded)
              for c in ("unet", *(s.component for s in family.text_encoders))}
    text_note = ""
    if not_loaded and all(targets[n][0] != "unet" for n in not_loaded):
        import transformers

        text_note = (f" (diffusers did not apply the text-encoder keys to this transformers "
                     f"{transformers.__version__} text encoder)")
    text_counts = " and ".join(f"{counts[s.component]} {labels[s.component]}"
                               for s in family.text_encoders)
    report.add("diffusers loads every module", not not_loaded and bool(targets),
               f"{how}: load_lora_weights put adapters on {counts['unet']} U-Net and "
               f"{text_counts} modules" if not not_loaded else
               f"{len(not_loaded)} of {len(targets)} modules were not loaded by diffusers: "
               f"{few(not_loaded)}{text_note}")

    loaded = [n for n in targets if n not in not_loaded]
    if has_unet:
        _check_strengths(report, pipe, "U-Net", " (fixed seed)", unet_before,
                         lambda: _unet_output(pipe.unet))
    for spec in encoders:
        _check_strengths(report, pipe, labels[spec.component], "", text_before[spec.component],
                         lambda spec=spec: text_output(spec))
    pipe.set_adapters([ADAPTER], adapter_weights=[1.0])

    if not loaded:
        return
    components = [c for c in counts if counts[c]]
    pipe.fuse_lora(components=components, lora_scale=1.0, adapter_names=[ADAPTER])
    worst_name, worst, failures = "", 0.0, []
    for name in loaded:
        component, path = targets[name]
        layer = layers[name]
        fused = (layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer).weight
        module = lora.modules.get(name)
        if module is None or module.down is None or module.up is None:
            failures.append(f"{name}: the file's tensors cannot be read back")
            continue
        expected = originals[name].double() + module.delta(torch.float64).reshape(
            originals[name].shape)
        error = _max_diff(fused.detach(), expected)
        tolerance = WEIGHT_RTOL * max(1.0, float(expected.abs().max()))
        if error > tolerance:
            failures.append(f"{name}: max |fused - (W0 + alpha/r * up @ down)| = {error:.3g} "
                            f"(alpha {module.effective_alpha:g}, r {module.rank})")
        if error >= worst:
            worst_name, worst = name, error
    report.add("fused weights = W0 + (alpha/r) up @ down", not failures,
               f"{len(loaded)} modules, max |error| {worst:.2g} ({worst_name})" if not failures
               else f"{len(failures)} of {len(loaded)} modules differ: {few(failures, 2)}")


