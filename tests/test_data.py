"""trainer.data: scan, images, buckets, captions, batches. Every file is made here in tmp_path."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.config import DatasetConfig, DatasetFolder, TrainConfig
from trainer.data import (DatasetError, DatasetReport, DatasetSettings, ImageItem, Subset,
                          assign_bucket, base_caption, bucket_info, build_caption,
                          captions_are_static, dataset_dirs, epoch_batches, format_report,
                          image_to_tensor, load_image, make_buckets, parse_repeat_folder,
                          probe_image, sample_plan, sample_rng, scan_dataset, tag_frequency)


def save_image(path: Path, size=(96, 80), colour=(200, 30, 40), mode="RGB", **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **kwargs)
    return path


def noise_bytes(fmt: str, size=(128, 128)) -> bytes:
    array = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def config_for(*folders, **dataset) -> TrainConfig:
    specs = [f if isinstance(f, DatasetFolder) else DatasetFolder(path=f) for f in folders]
    return TrainConfig(dataset=DatasetConfig(folders=specs, **dataset))


def names(entries) -> set[str]:
    return {Path(e.path).name for e in entries}


def reasons(report: DatasetReport) -> dict[str, str]:
    return {e.path.name: e.reason for e in report.skipped}


# ---------------------------------------------------------------- scan and health report


@pytest.fixture
def messy(tmp_path) -> Path:
    folder = tmp_path / "photos"
    for i in range(11):
        save_image(folder / f"good{i:02d}.png", size=(64 + 16 * i, 96))
        (folder / f"good{i:02d}.txt").write_text(f"tag{i}, red", encoding="utf-8")
    # duplicate stem: dup.jpg (first in sorted order) is kept, dup.png skipped
    save_image(folder / "dup.jpg", size=(100, 100), format="JPEG")
    save_image(folder / "dup.png", size=(100, 100))
    (folder / "dup.txt").write_text("dup caption")
    (folder / "empty.png").write_bytes(b"")
    (folder / "empty.txt").write_text("x")
    (folder / "trunc.jpg").write_bytes(noise_bytes("JPEG")[:3000])
    (folder / "trunc.txt").write_text("x")
    data = noise_bytes("PNG")
    (folder / "truncpng.png").write_bytes(data[: len(data) // 2])
    (folder / "truncpng.txt").write_text("x")
    (folder / "text.png").write_text("this is not a picture")
    (folder / "text.txt").write_text("x")
    save_image(folder / "tiny.png", size=(8, 8))
    (folder / "tiny.txt").write_text("x")
    save_image(folder / "nocap.png")
    (folder / "orphan.txt").write_text("lonely caption")
    (folder / "anim.gif").write_bytes(b"GIF89a")
    (folder / "notes.json").write_text("{}")  # ignored silently
    (folder / ".DS_Store").write_bytes(b"\0")  # ignored silently
    return folder


def test_scan_uses_exactly_the_good_images_and_names_every_bad_one(messy):
    report = scan_dataset(config_for(messy))
    used = {item.path.name for item in report.items}
    assert used == {f"good{i:02d}.png" for i in range(11)} | {"dup.jpg"}
    why = reasons(report)
    assert set(why) == {"dup.png", "empty.png", "trunc.jpg", "truncpng.png", "text.png",
                        "tiny.png", "nocap.png", "orphan.txt", "anim.gif"}
    assert "duplicate name" in why["dup.png"] and "dup.jpg" in why["dup.png"]
    assert why["empty.png"] == "empty file (0 bytes)"
    assert why["trunc.jpg"].startswith("truncated")
    assert why["truncpng.png"].startswith("truncated")
    assert why["text.png"].startswith("not an image")
    assert why["tiny.png"].startswith("too small: 8x8")
    assert "64" in why["tiny.png"]
    assert why["nocap.png"].startswith("missing caption (no nocap.txt)")
    assert why["orphan.txt"].startswith("caption without an image")
    assert "not a supported image type (.gif)" in why["anim.gif"]
    assert names(report.warnings) == {"orphan.txt"}
    assert report.usable and report.num_images == 12 and report.num_reg_images == 0
    dup = next(i for i in report.items if i.path.name == "dup.jpg")
    assert dup.caption == "dup caption" and dup.caption_path.name == "dup.txt"
    good3 = next(i for i in report.items if i.path.name == "good03.png")
    assert (good3.width, good3.height, good3.caption) == (112, 96, "tag3, red")
    # order is stable: sorted file names
    assert [i.path.name for i in report.items] == sorted(used)

    text = format_report(report)
    assert "Images used: 12 for training" in text
    assert "Steps per epoch:" in text
    for name in why:
        assert name in text
    assert "truncated" in text and "too small: 8x8" in text


def test_missing_caption_is_fine_with_a_trigger_word(messy):
    report = scan_dataset(config_for(messy, trigger_word="sks"))
    nocap = next(i for i in report.items if i.path.name == "nocap.png")
    assert nocap.caption == "" and nocap.caption_path is None
    assert base_caption(nocap) == "sks"
    assert "nocap.png" not in reasons(report)


def test_empty_caption_uses_class_tokens_with_a_warning_else_is_skipped(tmp_path):
    folder = tmp_path / "set"
    save_image(folder / "a.png")
    (folder / "a.txt").write_text("  \n")
    skipped = scan_dataset(config_for(folder))
    assert skipped.items == [] and reasons(skipped)["a.png"].startswith("empty caption")
    assert not skipped.usable and "Nothing usable" in format_report(skipped)

    used = scan_dataset(config_for(DatasetFolder(path=folder, class_tokens="toy robot")))
    assert [base_caption(i) for i in used.items] == ["toy robot"]
    assert names(used.warnings) == {"a.txt"}


def test_non_utf8_and_overlong_captions_are_used_with_warnings(tmp_path):
    folder = tmp_path / "set"
    save_image(folder / "a.png")
    (folder / "a.txt").write_bytes("caf\xe9, tag".encode("latin-1"))
    save_image(folder / "b.png")
    (folder / "b.txt").write_text(", ".join(f"word{i}" for i in range(10_000)))
    report = scan_dataset(config_for(folder))
    items = {i.path.name: i for i in report.items}
    assert items["a.png"].caption == "caf\ufffd, tag"
    assert len(items["b.png"].caption) <= 4000 and items["b.png"].caption.startswith("word0, ")
    assert not items["b.png"].caption.endswith(",")
    why = reasons(report)
    assert "not UTF-8" in why["a.txt"] and "very long" in why["b.txt"]
    assert all(e.warning for e in report.skipped)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path):
    folder = tmp_path / "set"
    locked = save_image(folder / "locked.png")
    (folder / "locked.txt").write_text("x")
    locked.chmod(0)
    try:
        report = scan_dataset(config_for(folder))
    finally:
        locked.chmod(0o644)
    assert reasons(report)["locked.png"] == "unreadable (permission denied)"


def test_permission_error_reason_even_as_root(tmp_path, monkeypatch):
    path = save_image(tmp_path / "locked.png")
    import trainer.data.images as images

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.Image, "open", refuse)
    assert probe_image(path).reason == "unreadable (permission denied)"


def test_decompression_bombs_are_reported_not_decoded(tmp_path, monkeypatch):
    folder = tmp_path / "set"
    save_image(folder / "warn.png", size=(120, 100))  # over the limit: Pillow would warn
    save_image(folder / "error.png", size=(300, 300))  # over twice the limit: Pillow raises
    for stem in ("warn", "error"):
        (folder / f"{stem}.txt").write_text("x")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    report = scan_dataset(config_for(folder))
    why = reasons(report)
    assert report.items == []
    assert why["warn.png"].startswith("too large: 120x100")
    assert why["error.png"].startswith("too large")


def test_missing_folder_and_no_folders_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found: .*nowhere"):
        scan_dataset(config_for(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="no image folders"):
        scan_dataset(TrainConfig())
    assert issubclass(DatasetError, ValueError)


def test_empty_folder_scans_and_says_nothing_usable(tmp_path):
    (tmp_path / "empty").mkdir()
    report = scan_dataset(config_for(tmp_path / "empty"))
    assert report.items == [] and not report.usable
    assert "no images here" in format_report(report)


def test_symlink_loops_do_not_hang_and_are_not_followed(tmp_path):
    root = tmp_path / "root"
    save_image(root / "a.png")
    (root / "a.txt").write_text("x")
    (root / "5_loop").symlink_to(root, target_is_directory=True)
    (root / "5_loop2").mkdir()
    (root / "5_loop2" / "back").symlink_to(root / "5_loop2", target_is_directory=True)
    (root / "ghost.png").symlink_to(tmp_path / "missing.png")
    # links to themselves: Python's DirEntry.is_dir() raises ELOOP on these (#15)
    (root / "self.png").symlink_to(root / "self.png")
    (root / "a2.txt").symlink_to(root / "a2.txt")
    (root / "7_self").symlink_to(root / "7_self")
    report = scan_dataset(config_for(root))
    assert [i.path.name for i in report.items] == ["a.png"]
    found = reasons(report)
    assert found["ghost.png"].startswith("broken link")
    assert found["self.png"] == found["a2.txt"] == "symbolic link loop (it leads back to itself)"
    assert "symbolic link loop" in found["7_self"]


def test_kohya_repeat_folders(tmp_path):
    root = tmp_path / "train"
    save_image(root / "top.png")
    (root / "top.txt").write_text("top")
    save_image(root / "10_sks dog" / "d1.png")
    save_image(root / "10_sks dog" / "d2.png")
    (root / "10_sks dog" / "d2.txt").write_text("a dog, grass")
    save_image(root / "3_cat" / "c1.png")
    (root / "notes").mkdir()
    report = scan_dataset(config_for(DatasetFolder(path=root, repeats=2)))
    subsets = {s.name: s for s in report.subsets}
    assert {n: (s.num_repeats, s.class_tokens) for n, s in subsets.items()} == {
        "train": (2, ""), "10_sks dog": (10, "sks dog"), "3_cat": (3, "cat")}
    captions = {i.path.name: base_caption(i) for i in report.items}
    assert captions == {"top.png": "top", "d1.png": "sks dog", "d2.png": "a dog, grass",
                        "c1.png": "cat"}
    assert report.total_with_repeats == 2 + 20 + 3
    assert "subfolder ignored" in reasons(report)["notes"]
    assert dataset_dirs(report) == {"train": {"n_repeats": 2, "img_count": 1},
                                    "10_sks dog": {"n_repeats": 10, "img_count": 2},
                                    "3_cat": {"n_repeats": 3, "img_count": 1}}
    assert tag_frequency(report) == {"train": {"top": 1}, "10_sks dog": {"sks dog": 1, "a dog": 1,
                                                                         "grass": 1},
                                     "3_cat": {"cat": 1}}
    assert parse_repeat_folder("12_a_b") == (12, "a_b")
    assert parse_repeat_folder("0_x") is None and parse_repeat_folder("x_1") is None


def test_folder_named_n_name_gives_repeats_unless_set(tmp_path):
    folder = tmp_path / "4_style"
    save_image(folder / "a.png")
    report = scan_dataset(config_for(folder))
    assert (report.subsets[0].num_repeats, report.subsets[0].class_tokens) == (4, "style")
    assert report.items[0].repeats == 4


def test_regularisation_images_are_balanced_like_kohya(tmp_path):
    train, reg = tmp_path / "2_sks", tmp_path / "1_dog"
    for i in range(3):
        save_image(train / f"t{i}.png")
    for i in range(2):
        save_image(reg / f"r{i}.png")
    save_image(tmp_path / "1_many" / "x.png")
    report = scan_dataset(config_for(train, DatasetFolder(path=reg, is_reg=True)))
    assert report.num_images == 3 and report.num_reg_images == 2
    assert [i.repeats for i in report.items if i.is_reg] == [3, 3]  # 6 train samples
    assert report.total_with_repeats == 12
    assert report.steps_per_epoch(1) == 12


def test_steps_per_epoch_pinned(tmp_path):
    folder = tmp_path / "2_x"
    for i in range(3):
        save_image(folder / f"{i}.png", size=(100, 100))
    report = scan_dataset(config_for(folder, batch_size=2))
    assert report.bucket_counts == {(512, 512): 3}
    assert report.total_with_repeats == 6
    assert report.steps_per_epoch() == 3 and report.steps_per_epoch(4) == 2
    save_image(folder / "wide.png", size=(300, 100))
    report = scan_dataset(config_for(folder, batch_size=2))
    assert report.bucket_counts == {(512, 512): 3, (832, 256): 1}
    assert report.steps_per_epoch() == 3 + 1  # buckets are batched separately
    info = bucket_info(report)
    assert info["buckets"]["1"] == {"resolution": [832, 256], "count": 2}


def test_exif_rotated_jpeg_has_swapped_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save_image(tmp_path / "rot.jpg", size=(120, 80), format="JPEG", exif=exif.tobytes())
    probe = probe_image(path)
    assert (probe.width, probe.height) == (80, 120)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (80, 120)


def test_rgba_and_palette_transparency_flatten_on_the_background(tmp_path):
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 32, 64))  # left half fully transparent blue
    rgba.save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png")
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255) and image.getpixel((50, 5)) == (255, 0, 0)
    assert load_image(tmp_path / "rgba.png", background="#000000").getpixel((5, 5)) == (0, 0, 0)

    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    palette.paste(1, (0, 0, 8, 16))
    palette.save(tmp_path / "pal.png", transparency=1)
    image = load_image(tmp_path / "pal.png")
    assert image.getpixel((2, 2)) == (255, 255, 255) and image.getpixel((12, 2)) == (0, 255, 0)

    Image.new("LA", (8, 8), (10, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_png_keeps_its_grey(tmp_path):
    Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    image = load_image(tmp_path / "g16.png")
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (128, 128, 128)


def test_cmyk_jpeg_and_greyscale_are_converted(tmp_path):
    save_image(tmp_path / "cmyk.jpg", mode="CMYK", colour=(0, 255, 255, 0), format="JPEG",
               quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    red = load_image(tmp_path / "cmyk.jpg").getpixel((10, 10))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    save_image(tmp_path / "grey.bmp", mode="L", colour=77)
    assert load_image(tmp_path / "grey.bmp").getpixel((0, 0)) == (77, 77, 77)


def test_image_to_tensor_covers_crops_and_flips():
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, :150] = 255  # left half white, right half black
    image = Image.fromarray(array)
    tensor, (top, left) = image_to_tensor(image, (128, 64), flip=False)
    assert tuple(tensor.shape) == (3, 64, 128) and str(tensor.dtype) == "torch.float32"
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert top == 0 and left == (192 - 128) // 2  # resized to 192x64
    assert tensor[0, 32, 5] > 0.9 and tensor[0, 32, 120] < -0.9
    flipped, (_, flipped_left) = image_to_tensor(image, (128, 64), flip=True)
    assert flipped[0, 32, 5] < -0.9 and flipped[0, 32, 120] > 0.9
    assert flipped_left == 192 - (left + 128)
    small, crop = image_to_tensor(Image.new("RGB", (10, 20), (0, 0, 0)), (64, 64), flip=False)
    assert tuple(small.shape) == (3, 64, 64) and crop == (32, 0) and small.max() == -1


# ---------------------------------------------------------------- buckets


def test_bucket_list_for_512():
    buckets = make_buckets(512, 256, 1024, 64)
    for expected in [(512, 512), (576, 448), (448, 576), (640, 384), (384, 640)]:
        assert expected in buckets
    assert all(w * h <= 512 * 512 for w, h in buckets)
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(256 <= w <= 1024 and 256 <= h <= 1024 for w, h in buckets)
    assert buckets == sorted(set(buckets))
    assert make_buckets(128, 256, 1024) == [(128, 128)]  # below min_reso: the square only


def test_assign_bucket():
    buckets = make_buckets(512)
    assert assign_bucket(1000, 1000, buckets) == (512, 512)
    assert assign_bucket(1200, 800, buckets) == (640, 384)
    assert assign_bucket(800, 1200, buckets) == (384, 640)
    assert assign_bucket(576, 448, buckets) == (576, 448)  # exact size wins
    # no upscale: a small image gets a bucket no larger than itself
    assert assign_bucket(300, 200, buckets, no_upscale=True, resolution=512) == (256, 192)
    assert assign_bucket(2000, 1000, buckets, no_upscale=True, resolution=512) == (640, 320)
    big = assign_bucket(3000, 1000, buckets, no_upscale=True, resolution=512)
    assert big[0] * big[1] <= 512 * 512


def test_bucketing_off_puts_everything_in_the_square(tmp_path):
    save_image(tmp_path / "s" / "wide.png", size=(400, 100))
    report = scan_dataset(config_for(tmp_path / "s", trigger_word="t", enable_bucket=False,
                                     resolution=256))
    assert report.items[0].bucket == (256, 256) and report.buckets == [(256, 256)]


# ---------------------------------------------------------------- captions


def item_with(caption: str, **options) -> ImageItem:
    subset = Subset(image_dir=Path("x"), name="x", **options)
    return ImageItem(path=Path("x/a.png"), subset=subset, width=64, height=64, caption=caption,
                     caption_path=None, bucket=(512, 512), repeats=1)


def test_keep_tokens_keeps_the_first_tag_while_the_rest_permute():
    item = item_with("first, b, c, d, e", shuffle_caption=True, keep_tokens=1)
    seen = set()
    for seed in range(20):
        caption = build_caption(item, random.Random(seed))
        tags = caption.split(", ")
        assert tags[0] == "first" and sorted(tags[1:]) == ["b", "c", "d", "e"]
        seen.add(caption)
    assert len(seen) > 5


def test_trigger_word_counts_as_the_first_kept_tag():
    item = item_with("b, c, d", shuffle_caption=True, keep_tokens=1, trigger_word="sks")
    for seed in range(10):
        assert build_caption(item, random.Random(seed)).startswith("sks, ")
    assert base_caption(item_with("b, c", trigger_word="sks")) == "sks, b, c"
    assert base_caption(item_with("b, sks, c", trigger_word="sks")) == "sks, b, c"  # moved
    assert base_caption(item_with("a photo of sks dog", trigger_word="sks")) == "a photo of sks dog"
    assert base_caption(item_with("b,c", trigger_word="sks", is_reg=True)) == "b,c"
    assert base_caption(item_with("", class_tokens="dog", trigger_word="sks")) == "sks, dog"
    assert base_caption(item_with("b,  c")) == "b,  c"  # static: verbatim


def test_dropout():
    item = item_with("a, b, c", caption_dropout_rate=1.0)
    assert all(build_caption(item, random.Random(s)) == "" for s in range(10))
    tag_drop = item_with("a, b, c", keep_tokens=1, caption_tag_dropout_rate=1.0)
    assert build_caption(tag_drop, random.Random(0)) == "a"
    half = item_with(", ".join(map(str, range(100))), caption_tag_dropout_rate=0.5)
    kept = len(build_caption(half, random.Random(1)).split(", "))
    assert 30 < kept < 70


def test_keep_tokens_separator():
    item = item_with("sks, red ||| a, b, c", shuffle_caption=True, keep_tokens_separator="|||")
    for seed in range(10):
        tags = build_caption(item, random.Random(seed)).split(", ")
        assert tags[:2] == ["sks", "red"] and sorted(tags[2:]) == ["a", "b", "c"]
    assert base_caption(item) == "sks, red, a, b, c"


def test_captions_are_static():
    plain = Subset(image_dir=Path("x"), name="x")
    assert captions_are_static([plain, plain])
    assert not captions_are_static([plain, Subset(image_dir=Path("y"), name="y",
                                                  shuffle_caption=True)])
    assert not captions_are_static([Subset(image_dir=Path("y"), name="y",
                                           caption_tag_dropout_rate=0.1)])


# ---------------------------------------------------------------- batches


def test_epoch_batches_are_deterministic_and_cover_everything_once():
    items = [item_with("x") for _ in range(7)]
    items = [ImageItem(**{**vars(it), "bucket": (512, 512) if i < 4 else (576, 448),
                          "repeats": 1 + i % 3})
             for i, it in enumerate(items)]
    first = epoch_batches(items, 3, seed=42, epoch=0)
    assert first == epoch_batches(items, 3, seed=42, epoch=0)
    assert first != epoch_batches(items, 3, seed=42, epoch=1)
    assert first != epoch_batches(items, 3, seed=43, epoch=0)
    flat = sorted(i for batch in first for i in batch)
    assert flat == sorted(i for i, it in enumerate(items) for _ in range(it.repeats))
    for batch in first:
        assert 1 <= len(batch) <= 3 and len({items[i].bucket for i in batch}) == 1
    # a fresh interpreter (different hash salt) gives the same order
    code = ("import sys, json; sys.path.insert(0, '.');"
            "from trainer.data.batches import epoch_batches;"
            "from types import SimpleNamespace as N;"
            "items=[N(bucket=(512,512) if i<4 else (576,448), repeats=1+i%3) for i in range(7)];"
            "print(json.dumps(epoch_batches(items, 3, 42, 0)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert eval(out.stdout) == first


def test_sample_rng_and_plan_are_pure():
    assert sample_rng(1, 2, 3, 4).random() == sample_rng(1, 2, 3, 4).random()
    assert sample_rng(1, 2, 3, 4).random() != sample_rng(1, 2, 3, 5).random()
    item = item_with("a, b, c, d", shuffle_caption=True, flip_aug=True)
    plans = [sample_plan(item, 7, 0, b, 0) for b in range(30)]
    assert plans == [sample_plan(item, 7, 0, b, 0) for b in range(30)]
    assert {flip for _, flip in plans} == {True, False}
    assert all(not flip for _, flip in (sample_plan(item_with("a"), 7, 0, b, 0)
                                          for b in range(20)))


def test_data_package_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, '.'); import trainer.data;"
            "bad = [m for m in ('torch', 'PySide6', 'diffusers') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_settings_from_config():
    settings = DatasetSettings.from_config(DatasetConfig(resolution=768, batch_size=4))
    assert settings.resolution == (768, 768) and settings.batch_size == 4


def test_a_date_prefix_is_not_read_as_millions_of_repeats(tmp_path: Path) -> None:
    """`20240101_trip` was twenty million repeats (#15): kohya's rule holds within the config's
    own limit (1..10,000), and a prefix beyond it is reported, naming the folder."""
    from synthetic import make_shapes_dataset
    from trainer.config import DatasetConfig, DatasetFolder
    from trainer.data import folder_subsets, parse_repeat_folder

    assert parse_repeat_folder("10000_max") == (10000, "max")
    assert parse_repeat_folder("10001_over") is None and parse_repeat_folder("20240101_trip") is None
    trip = tmp_path / "20240101_trip"
    make_shapes_dataset(trip, 2)
    parent = tmp_path / "holiday"
    make_shapes_dataset(parent / "20240102_beach", 2)
    make_shapes_dataset(parent / "5_hotel", 2)
    resolved = folder_subsets(DatasetConfig(folders=[DatasetFolder(path=trip),
                                                     DatasetFolder(path=parent)]))
    repeats = {subset.name: subset.num_repeats for subset in resolved.subsets}
    assert repeats == {"20240101_trip": 1, "5_hotel": 5}
    notes = dict(resolved.notes)
    assert "prefix 20240101 of '20240101_trip' is not read as a repeat count" in notes[trip]
    assert "1 repeat" in notes[trip]
    beach = notes[parent / "20240102_beach"]
    assert beach.startswith("subfolder ignored (the prefix 20240102") and "rename it" in beach


def test_the_windows_thumbnail_listing_survives_a_link_loop(tmp_path):
    """#15: one link loop beside the images made the window's listing raise on is_dir() and
    show none of the folder's images."""
    from app.thumbnails import dataset_images

    save_image(tmp_path / "a.png")
    save_image(tmp_path / "5_sub" / "b.png")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "z.png").symlink_to(tmp_path / "z.png")
    images, count = dataset_images([tmp_path])
    assert [p.name for p in images] == ["a.png", "z.png", "b.png"] and count == 3
