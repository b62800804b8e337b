"""Write the demo dataset: the demo-style scenes as PNGs with same-stem caption files."""

from __future__ import annotations

from pathlib import Path

from trainer.demo.scenes import Scene, demo_dataset_scenes, render


def picture_name(scene: Scene) -> str:
    return f"{scene.shape}-{scene.position.replace(' ', '-')}.png"


def write_demo_dataset(folder: Path, size: int = 64) -> list[Path]:
    """16 pictures like "a circle, top left"; the held-out scenes are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for scene in demo_dataset_scenes():
        path = folder / picture_name(scene)
        render(scene, size).save(path)
        path.with_suffix(".txt").write_text(scene.caption() + "\n", encoding="utf-8")
        paths.append(path)
    return paths
