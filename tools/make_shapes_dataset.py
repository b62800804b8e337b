"""Write a small captioned dataset of coloured shapes (the quickstart's and the tests' data)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import make_shapes_dataset  # noqa: E402

if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "shapes")
    paths = make_shapes_dataset(folder, int(sys.argv[2]) if len(sys.argv) > 2 else 12)
    print(f"{len(paths)} images with captions in {folder}")
