"""`lora-train export | verify | inspect`: commands about LoRA files."""

from __future__ import annotations

import argparse


def add_lora_commands(commands: argparse._SubParsersAction) -> None:
    """Register the LoRA-file subcommands on the `lora-train` parser."""
