"""Network kinds: LoRA (and LoCon), DoRA, LoHa, LoKr. Each is one module (trainer/network_kinds/
<kind>.py) behind one interface (`kind.NetworkKind`): a new kind is a new module plus its entry
here. Torch-free at import: the window counts with them."""

from __future__ import annotations

from .dora import KIND as DORA
from .kind import ADAPTER, NetworkKind
from .loha import KIND as LOHA
from .lokr import KIND as LOKR
from .lora import KIND as LORA

KINDS: dict[str, NetworkKind] = {kind.name: kind for kind in (LORA, DORA, LOHA, LOKR)}
# every tensor suffix a module of any kind has in the file, alpha last
FILE_PARTS = tuple(dict.fromkeys(part for kind in KINDS.values()
                                 for part in (*kind.required, *kind.optional))) + ("alpha",)

__all__ = ["ADAPTER", "DORA", "FILE_PARTS", "KINDS", "LOHA", "LOKR", "LORA", "NetworkKind",
           "get_kind", "kind_of_suffixes"]


def get_kind(name: str) -> NetworkKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"no network kind {name!r}; kinds: {', '.join(KINDS)}") from None


def kind_of_suffixes(suffixes: set[str]) -> NetworkKind | None:
    """The kind a module's tensor suffixes show (DoRA before LoRA: it has LoRA's tensors too)."""
    for kind in (DORA, LOHA, LOKR, LORA):
        if set(kind.required) <= suffixes and (kind.required or suffixes & set(kind.optional)):
            return kind
    return None
