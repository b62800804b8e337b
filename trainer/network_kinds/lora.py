"""LoRA, and LoCon when the conv group is picked: kohya's `lora_down` / `lora_up` / `alpha`,
what every loader reads (docs/lora-format.md, "Tensors")."""

from __future__ import annotations

from .kind import NetworkKind


class Lora(NetworkKind):
    name = "lora"
    label = "LoRA"
    summary = ("The standard: two small matrices per layer. Loads everywhere (A1111/Forge, "
               "ComfyUI, diffusers, Civitai); with convolutions picked it is a LoCon.")
    loads_in = ("Loads as trained in A1111/Forge, ComfyUI, diffusers and LyCORIS (a LoCon's "
                "conv layers too).")


KIND = Lora()
