"""`network.init_from`: continue training from an existing file of the same kind and family.

A LoRA / LoCon file in any naming the reader understands (trainer.lora_reader) is normalised to
kohya tensors first; a DoRA, LoHa or LoKr file (LyCORIS' kohya names) is loaded tensor by tensor.
Anything that differs from the run (kind, family, modules, rank, alpha) is refused with both
sides named, before a step is trained.
"""

from __future__ import annotations

import math
from pathlib import Path

from trainer.lora_reader import LoraFileError, read_lora_file


def init_network_from(network, path: Path | str) -> None:
    """Copy an existing LoRA's weights into a freshly built LoraNetwork (`--init-from`).

    The file must adapt exactly the network's modules with the network's rank and alpha;
    any difference is refused with what differs named (NetworkError)."""
    import torch

    from trainer.network import NetworkError

    path = Path(path)
    try:
        lora = read_lora_file(path)
    except LoraFileError as error:
        raise NetworkError(f"network.init_from: {error}") from None
    kind = lora.network_kind
    if kind is not network.kind:
        raise NetworkError(f"network.init_from: {path.name} is a {kind.label} file but this run "
                           f"trains a {network.kind.label}; set network.kind = '{kind.name}' "
                           f"or pick a {network.kind.label} file")
    if kind.name != "lora":
        return _init_kind_from(network, lora, path)
    if not lora.modules:
        raise NetworkError(f"network.init_from: {path.name} holds no LoRA modules this trainer "
                           f"understands ({len(lora.unknown_keys)} other keys)")
    if lora.incomplete:
        raise NetworkError(f"network.init_from: {path.name} is incomplete: module "
                           f"{lora.incomplete[0]} lacks its down or up tensor")
    if lora.unknown_keys:
        raise NetworkError(f"network.init_from: {path.name} has keys this trainer does not "
                           f"understand, e.g. {lora.unknown_keys[0]}")
    if lora.family and lora.family != network.family:
        from trainer.families import get_family

        raise NetworkError(f"network.init_from: {path.name} is a LoRA for "
                           f"{get_family(lora.family).label} models but this run trains on an "
                           f"{get_family(network.family).label} model; pick a LoRA made for "
                           f"{get_family(network.family).label}")
    wanted, have = set(network.layers), set(lora.modules)
    file_te, net_te = bool(lora.text_encoder_modules), bool(network.text_encoder_layers)
    if file_te and not net_te:
        raise NetworkError(
            f"network.init_from: {path.name} adapts the text encoder "
            f"({len(lora.text_encoder_modules)} modules) but this run does not train it; "
            "set network.train_text_encoder = true")
    if net_te and not file_te:
        raise NetworkError(
            f"network.init_from: {path.name} has no text-encoder modules but this run trains the "
            "text encoder; set network.train_text_encoder = false")
    if wanted != have:
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        parts = []
        if missing:
            parts.append(f"the file lacks {len(missing)} of this run's modules "
                         f"(e.g. {missing[0]})")
        if extra:
            parts.append(f"the file adapts {len(extra)} modules this run does not "
                         f"(e.g. {extra[0]})")
        raise NetworkError(f"network.init_from: {path.name} targets other modules than this "
                           f"run: {'; '.join(parts)}; match network.blocks / attention / "
                           "projections to the file")
    # rank and alpha per module: a LoCon file's k x k convs have conv_rank / conv_alpha
    for label, field_of, file_value, run_value, same in (
            ("rank", "rank", lambda m: m.rank, network.rank_of, lambda a, b: a == b),
            ("alpha", "alpha", lambda m: m.effective_alpha, network.alpha_of,
             lambda a, b: math.isclose(a, b, rel_tol=1e-3))):
        wrong = [name for name in sorted(wanted)
                 if not same(file_value(lora.modules[name]), run_value(name))]
        if wrong:
            name = wrong[0]
            setting = f"network.conv_{field_of}" if network.is_conv(name) else f"network.{field_of}"
            found = file_value(lora.modules[name])
            raise NetworkError(
                f"network.init_from: {path.name} has {label} {found:g} but this run's {setting} "
                f"is {run_value(name):g} ({len(wrong)} modules, e.g. {name}); set {setting} = "
                f"{found:g}")
    try:
        tensors = {key: value.to(torch.float32) for key, value in lora.kohya_tensors().items()}
        network.load_state_dict(tensors)
    except (LoraFileError, NetworkError) as error:  # e.g. a tensor of the wrong shape
        message = str(error).removeprefix(f"{path.name}: ")
        raise NetworkError(f"network.init_from: {path.name}: {message}") from None


def _init_kind_from(network, lora, path: Path) -> None:
    """A DoRA / LoHa / LoKr file into a network of that kind: its family, every module's
    tensors (shapes checked by the network) and alpha."""
    import torch

    from trainer.families import get_family
    from trainer.network import NetworkError

    if lora.family and lora.family != network.family:
        raise NetworkError(f"network.init_from: {path.name} is a {lora.network_kind.label} for "
                           f"{get_family(lora.family).label} models but this run trains on an "
                           f"{get_family(network.family).label} model")
    # by kohya name, whatever naming the file uses (OneTrainer's dotted names included)
    tensors = {f"{name}.{part}": lora.tensors[key].to(torch.float32)
               for name, parts in lora.kind_modules.items() for part, key in parts.items()}
    try:
        network.load_state_dict(tensors)
    except NetworkError as error:
        raise NetworkError(f"network.init_from: {path.name}: {error}; match network.modules, "
                           "blocks, rank and conv_rank to the file") from None
    for name in network.layers:
        found = float(tensors[f"{name}.alpha"])
        if not math.isclose(found, network.alpha_of(name), rel_tol=1e-3):
            setting = "network.conv_alpha" if network.is_conv(name) else "network.alpha"
            raise NetworkError(f"network.init_from: {path.name} has alpha {found:g} but this "
                               f"run's {setting} is {network.alpha_of(name):g} (e.g. {name}); "
                               f"set {setting} = {found:g}")
