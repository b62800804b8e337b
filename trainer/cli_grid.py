"""`lora-train grid`: prompts x checkpoints x strengths on one labelled sheet (trainer.grid).

    lora-train grid RUN_DIR [RUN_DIR|CHECKPOINT ...] --prompt "a cat, my_style" --prompt ...
                    [--strength 0 0.5 0.8 1] [--sampler euler_a] --out grid.png [--json]

Exit codes: 0 written, 2 bad input (a folder that is no run, runs of different bases, a bad
prompt line). `--json` prints one line per picture ({"done", "total", "cached"}) and a last
line {"grid": file, "rendered": n, "cached": n, "cells": [[[png, ...]]]}: the window reads it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.samplers import SAMPLERS


def default_grid_cache() -> Path:
    """Beside the latent cache: `~/.cache/lora-studio/grid` (or under $XDG_CACHE_HOME)."""
    from trainer.caching import default_cache_dir

    return default_cache_dir().parent / "grid"


def cmd_grid(args: argparse.Namespace) -> int:
    from trainer.grid import checkpoints_in, make_request, render_cells
    from trainer.grid_image import compose, save_sheet
    from trainer.samplers import get_sampler

    checkpoints = [c for path in args.paths for c in checkpoints_in(path)]
    request = make_request(checkpoints, args.prompt, args.strength, args.sampler,
                           steps=args.steps, guidance=args.guidance, seed=args.seed,
                           model=args.model)
    counts = {"rendered": 0, "cached": 0}

    def progress(done: int, total: int, cached: bool) -> None:
        counts["cached" if cached else "rendered"] += 1
        print(json.dumps({"done": done, "total": total, "cached": cached}) if args.json
              else f"picture {done}/{total}{' (cached)' if cached else ''}", flush=True)

    cells = render_cells(request, args.cache or default_grid_cache(), progress)
    rows = [(prompt, checkpoint) for prompt in request.prompts for checkpoint in checkpoints]
    row_labels = [f"{checkpoint.label}: {prompt.prompt}" for prompt, checkpoint in rows]
    column_labels = [f"strength {s:g}" for s in request.strengths]
    first = request.prompts[0]
    settings = (f"{get_sampler(request.sampler).label}, {first.steps} steps, guidance "
                f"{first.scale:g}, seed {first.seed}, {first.width}x{first.height}, base "
                f"{request.model.name}")
    flat = [row for prompt_rows in cells for row in prompt_rows]
    sheet = compose(flat, row_labels, column_labels, settings)
    save_sheet(sheet, args.out, {"rows": row_labels, "columns": column_labels,
                                 "settings": settings,
                                 "checkpoints": [str(c.folder) for c in checkpoints]})
    if args.json:
        print(json.dumps({"grid": str(args.out), **counts,
                          "cells": [[[str(p) for p in row] for row in prompt_rows]
                                    for prompt_rows in cells]}))
    else:
        print(f"grid written to {args.out} ({counts['rendered']} rendered, "
              f"{counts['cached']} from the cache)")
    return 0


def add_grid_command(commands) -> None:
    grid = commands.add_parser("grid", help="compare checkpoints: prompts x checkpoints x "
                                            "strengths on one labelled PNG")
    grid.add_argument("paths", nargs="+", type=Path,
                      help="run folders (every checkpoint they kept) or checkpoint folders")
    grid.add_argument("--prompt", action="append", required=True,
                      help="a prompt line (repeatable; --n --w --h --s --l --d as in previews)")
    grid.add_argument("--strength", type=float, nargs="+", default=[0.0, 0.5, 0.8, 1.0],
                      help="LoRA strengths, the columns (default 0 0.5 0.8 1)")
    grid.add_argument("--sampler", choices=tuple(SAMPLERS), default="ddim")
    grid.add_argument("--steps", type=int, default=20)
    grid.add_argument("--guidance", type=float, default=7.0)
    grid.add_argument("--seed", type=int, default=1234)
    grid.add_argument("--model", type=Path, help="render on this base instead of the runs' own")
    grid.add_argument("--out", type=Path, required=True, help="the PNG to write")
    grid.add_argument("--cache", type=Path, default=None,
                      help="where the pictures are kept (default ~/.cache/lora-studio/grid)")
    grid.add_argument("--json", action="store_true", help="progress and result as JSON lines")
    grid.set_defaults(func=cmd_grid)
