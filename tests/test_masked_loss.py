"""Masked loss (`dataset.masked_loss`): which file is an image's mask, the dataset check's
messages, the mask's geometry (bucket crop, flip, latent grid), the cache, and the loss itself on
the tiny model: a half mask is the MSE over that half; a mask of ones is today's loss exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from synthetic import make_shapes_dataset, shape_image
from test_training import tiny_config
from trainer.caching import LatentCache, file_digest
from trainer.cli import main as cli
from trainer.conditioning import encode_prompts
from trainer.config import LossConfig
from trainer.data import DatasetError, MaskSource, format_report, image_to_array, scan_dataset
from trainer.data.report import report_counts
from trainer.events import read_events
from trainer.loop import train
from trainer.mask_files import mask_file_for, mask_files_in
from trainer.objective import diffusion_loss, per_sample_mse

SIZE = 64  # px; the tiny VAE makes an 8 x 8 latent of it


def half_mask(path: Path, size: tuple[int, int] = (SIZE, SIZE), white_until: int | None = None,
              right: bool = False) -> Path:
    """A mask white on the left (or right) of x = white_until (default: the middle)."""
    width, height = size
    split = width // 2 if white_until is None else white_until
    mask = Image.new("L", size, 0)
    mask.paste(255, (split, 0, width, height) if right else (0, 0, split, height))
    path.parent.mkdir(parents=True, exist_ok=True)
    mask.save(path)
    return path


@pytest.fixture(scope="module")
def base(tiny_model):
    from trainer.models import load_base_model

    return load_base_model(tiny_model[0])


# --- which file is the mask ---------------------------------------------------------------

def test_the_mask_file_is_the_same_stem_with_any_image_suffix(tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("cat.PNG", "dog.jpg", "dog.png", "bird.txt", ".hidden.png", "fox.webp"):
        (masks / name).write_bytes(b"x")
    (masks / "owl.png").mkdir()  # a folder is no mask
    assert mask_file_for(Path("/data/cat.jpg"), masks) == masks / "cat.PNG"
    assert mask_file_for(Path("/data/dog.webp"), masks) == masks / "dog.jpg"  # first by name
    assert mask_file_for(Path("/data/bird.png"), masks) is None  # .txt is no image
    assert mask_file_for(Path("/data/owl.png"), masks) is None
    assert mask_file_for(Path("/data/cat.png"), tmp_path / "nowhere") is None
    assert sorted(mask_files_in(masks)) == ["cat", "dog", "fox"]


def test_the_window_can_find_a_mask_without_loading_the_engine() -> None:
    from test_import_boundaries import loaded_after_import

    loaded = loaded_after_import("trainer.mask_files")
    assert not loaded & {"torch", "PIL", "numpy", "PySide6"}, sorted(loaded)


# --- the loss ------------------------------------------------------------------------------

def test_grey_masks_weigh_the_error_by_hand_computed_numbers() -> None:
    target = torch.zeros(1, 4, 8, 8)
    prediction = torch.ones(1, 4, 8, 8)
    prediction[..., 4:] = 3.0  # squared error 1 on the left half, 9 on the right
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1.0
    assert per_sample_mse(prediction, target).item() == 5.0
    assert per_sample_mse(prediction, target, left).item() == 1.0
    assert per_sample_mse(prediction, target, 1 - left).item() == 9.0
    assert per_sample_mse(prediction, target, torch.full((1, 1, 8, 8), 0.5)).item() == 5.0
    grey = 1 - 0.75 * left  # 0.25 on the left: (32 x 0.25 x 1 + 32 x 9) / (32 x 0.25 + 32)
    assert per_sample_mse(prediction, target, grey).item() == pytest.approx(296 / 40, rel=1e-7)
    leaf = prediction.clone().requires_grad_(True)
    black = per_sample_mse(leaf, target, torch.zeros(1, 1, 8, 8))
    (black * 65536.0).sum().backward()  # fp16's loss scale on top
    assert black.item() == 0.0 and torch.equal(leaf.grad, torch.zeros_like(leaf))  # not NaN
    with pytest.raises(ValueError, match="shape"):
        per_sample_mse(prediction, target, torch.ones(1, 1, 4, 4))


def _image_with_mask(tmp_path: Path) -> tuple[Path, Path]:
    image = tmp_path / "img" / "circle.png"
    image.parent.mkdir(parents=True)
    shape_image("red", "circle", (245, 245, 245), SIZE, seed=1).save(image)
    return image, half_mask(tmp_path / "masks" / "circle.png")


def test_a_half_mask_is_the_mse_over_that_halfs_latent_cells(base, tmp_path: Path) -> None:
    image, mask_file = _image_with_mask(tmp_path)
    cache = LatentCache(base.vae, background="#ffffff", disk_dir=None,
                        masks={image: MaskSource(mask_file)})
    latent = cache.get(image, (SIZE, SIZE), False)[None]
    mask = cache.mask(image, (SIZE, SIZE), False)
    assert mask.shape == (1, 8, 8) and latent.shape == (1, 4, 8, 8)
    assert torch.equal(mask[..., :4], torch.ones(1, 8, 4))
    assert torch.equal(mask[..., 4:], torch.zeros(1, 8, 4))
    context = encode_prompts(base, ["a red circle"]).context
    scheduler = base.noise_scheduler

    def loss(masks=None, gamma=None):
        with torch.no_grad():
            return diffusion_loss(base.unet, latent, context, scheduler,
                                  torch.Generator().manual_seed(5),
                                  LossConfig(min_snr_gamma=gamma), "epsilon",
                                  masks=masks).item()

    # the same step computed independently: the draws, the noising, the prediction
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn((1, 4, 8, 8), generator=generator)
    t = torch.randint(0, 1000, (1,), generator=generator)
    alpha_bar = scheduler.alphas_cumprod[t]
    with torch.no_grad():
        noisy = alpha_bar.sqrt() * latent + (1 - alpha_bar).sqrt() * noise
        squared = (base.unet(noisy, t, context).sample - noise) ** 2
    left, plain = loss([mask]), loss()
    right = loss([1 - mask])
    assert left == pytest.approx(squared[..., :4].mean().item(), rel=1e-6)
    assert right == pytest.approx(squared[..., 4:].mean().item(), rel=1e-6)
    assert plain == pytest.approx(squared.mean().item(), rel=1e-6)
    assert (left + right) / 2 == pytest.approx(plain, rel=1e-6)  # two equal halves
    # pinned on this fixed input (tiny model seed 0, image seed 1, noise seed 5)
    assert (left, right, plain) == pytest.approx((PINNED_LEFT, PINNED_RIGHT, PINNED_PLAIN),
                                                 rel=1e-4)
    assert abs(left - plain) > 0.01  # the mask changes the number
    # min-SNR weighting applies on top: the same factor for the masked and the plain loss
    assert loss([mask], 1.0) / left == pytest.approx(loss(None, 1.0) / plain, rel=1e-6)


PINNED_LEFT, PINNED_RIGHT, PINNED_PLAIN = 1.2011324, 1.1616879, 1.1814101  # torch 2.13 CPU


def test_a_mask_of_ones_is_todays_loss_bit_for_bit(base) -> None:
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    context = torch.randn((2, 77, 64), generator=torch.Generator().manual_seed(2))
    ones, half = torch.ones(1, 8, 8), torch.ones(1, 8, 8)
    half[..., 4:] = 0

    def loss(masks, rows=None):
        rows_ = slice(0, 2) if rows is None else rows
        extra = {} if rows is None else {"rows": rows, "global_count": 2}
        return diffusion_loss(base.unet, latents[rows_], context[rows_], base.noise_scheduler,
                              torch.Generator().manual_seed(3), LossConfig(min_snr_gamma=5.0),
                              "epsilon", masks=masks, **extra)

    with torch.no_grad():
        today = loss(None)
        assert torch.equal(loss([ones, ones]), today)
        assert torch.equal(loss([None, ones]), today)
        assert not torch.equal(loss([half, None]), today)
        # several processes: each rank's rows with their masks add up to the global batch's
        whole = loss([half, None])
        parts = loss([half], slice(0, 1)) + loss([None], slice(1, 2))
        assert parts.item() == pytest.approx(whole.item(), rel=1e-6)
    # and the gradients: a row without a real mask gets exactly the plain mean's
    prediction = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    target = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    grads = []
    for mask in (None, torch.stack([ones, half])):
        leaf = prediction.clone().requires_grad_(True)
        per_sample_mse(leaf, target, mask)[0].backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


# --- geometry: the mask follows the image's bucket crop and flip ---------------------------

def test_the_mask_follows_the_bucket_crop_and_the_flip(base, tmp_path: Path) -> None:
    """A 400 x 128 image (bucket 192 x 64: halved to 200 x 64, then 4 px cropped off each side)
    whose left 104 px are red and masked white: on the 24 x 8 latent grid the mask covers the
    first 6 columns (48 px of the crop), or the last 6 when flipped, exactly where the red is."""
    folder, masks = tmp_path / "wide", tmp_path / "masks"
    folder.mkdir()
    image = Image.new("RGB", (400, 128), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 104, 128))
    image.save(folder / "wide.png")
    (folder / "wide.txt").write_text("a red band")
    half_mask(masks / "wide.png", (400, 128), white_until=104)
    config = tiny_config(Path("unused"), folder, tmp_path / "run", dataset={
        "masked_loss": True, "flip_aug": True, "resolution": 128, "max_bucket_reso": 256,
        "folders": [{"path": str(folder), "mask_folder": str(masks)}]})
    report = scan_dataset(config)
    item = report.items[0]
    assert item.bucket == (192, 64) and item.mask == MaskSource(masks / "wide.png")
    cache = LatentCache(base.vae, background="#ffffff", disk_dir=None, masks=report.masks)
    for flip in (False, True):
        mask = cache.mask(item.path, item.bucket, flip)[0]
        assert mask.shape == cache.get(item.path, item.bucket, flip).shape[1:] == (8, 24)
        columns = mask.mean(dim=0)
        order = columns.flip(0) if flip else columns
        assert torch.equal(mask, mask[:1].expand(8, 24))  # the same in every row
        assert torch.equal(order[:5], torch.ones(5)) and torch.equal(order[7:], torch.zeros(17))
        assert order[5] > 0.95 and order[6] < 0.05  # resampling blurs the edge by a few px
        # the pixels went through the same crop and flip: red exactly where the mask is 1
        pixels, _ = image_to_array(Image.open(item.path).convert("RGB"), item.bucket, flip)
        red = torch.from_numpy((pixels[..., 1] < 0).reshape(8, 8, 24, 8).all(axis=(0, 1, 3)))
        assert torch.equal(red, columns > 0.95)
    # white only in the 4 px the crop cuts off: the caching pass leaves the image out, saying why
    half_mask(masks / "wide.png", (400, 128), white_until=8)
    edge = LatentCache(base.vae, background="#ffffff", disk_dir=None, masks=report.masks)
    reason = edge.fill([(item.path, item.bucket, False)])[item.path]
    assert reason == (f"its mask {masks / 'wide.png'} keeps less than one latent cell inside "
                      "the crop to its 192x64 bucket; widen the mask's white part")


# --- the cache -------------------------------------------------------------------------------

def test_the_mask_is_cached_with_the_latent_and_editing_it_misses(base, tmp_path: Path) -> None:
    image, mask_file = _image_with_mask(tmp_path)
    disk, slot = tmp_path / "cache", (image, (SIZE, SIZE), False)
    first = LatentCache(base.vae, background="#ffffff", disk_dir=disk,
                        masks={image: MaskSource(mask_file)})
    assert first.fill([slot]) == {} and first.misses == 1
    again = LatentCache(base.vae, background="#ffffff", disk_dir=disk,
                        masks={image: MaskSource(mask_file)})
    assert torch.equal(again.mask(*slot), first.mask(*slot)) and again.hits == 1
    entry = load_file(again._disk_path(*slot))
    assert torch.equal(entry["mask"], first.mask(*slot))  # on disk beside the latent
    # without a mask the key is what it always was, so existing caches stay valid
    plain = LatentCache(base.vae, background="#ffffff", disk_dir=disk)
    old = f"1|{file_digest(image)}|{SIZE}x{SIZE}|center|0|#ffffff|{plain.vae_id}"
    assert plain.key(*slot) == hashlib.sha256(old.encode()).hexdigest() != again.key(*slot)
    assert plain.mask(*slot) is None and plain.misses == 1
    half_mask(mask_file, right=True)  # the artist repaints the mask
    edited = LatentCache(base.vae, background="#ffffff", disk_dir=disk,
                         masks={image: MaskSource(mask_file)})
    mask = edited.mask(*slot)
    assert edited.misses == 1 and torch.equal(mask, 1 - first.mask(*slot))
    assert torch.equal(edited.get(*slot), first.get(*slot))  # the latent itself is the same
    # the alpha channel as the mask: keyed apart from the same image without a mask
    rgba = tmp_path / "img" / "cut.png"
    cut = Image.new("RGBA", (SIZE, SIZE), (200, 30, 30, 0))
    cut.paste((200, 30, 30, 255), (0, 0, SIZE // 2, SIZE))
    cut.save(rgba)
    alpha = LatentCache(base.vae, background="#ffffff", disk_dir=disk,
                        masks={rgba: MaskSource(None)})
    cut_slot = (rgba, (SIZE, SIZE), False)
    assert torch.equal(alpha.mask(*cut_slot), first.mask(*slot))
    assert alpha.key(*cut_slot) != plain.key(*cut_slot)


# --- training ----------------------------------------------------------------------------------

def test_training_with_masks(tiny_model, tmp_path: Path) -> None:
    """Six steps, one image held out for the validation loss: white masks train exactly what no
    masks train (LoRA tensors and both losses equal); half masks change the training and the
    validation loss, cached or not."""
    data = tmp_path / "data"
    paths = make_shapes_dataset(data, 4)
    white, halves = tmp_path / "white", tmp_path / "halves"
    for path in paths:
        half_mask(white / path.name, white_until=SIZE)
        half_mask(halves / path.name)

    def run(name: str, masks: Path | None, cache_latents: bool = True):
        folder = {"path": str(data), **({"mask_folder": str(masks)} if masks else {})}
        config = tiny_config(tiny_model[0], data, tmp_path / name,
                             schedule={"max_train_steps": 6, "seed": 1},
                             precision={"cache_latents": cache_latents, "threads": 1},
                             dataset={"masked_loss": masks is not None, "folders": [folder],
                                      "validation_split": 0.25, "batch_size": 2})
        lora = load_file(train(config, tmp_path / name))
        events = read_events(tmp_path / name)
        with safe_open(tmp_path / name / "tiny_lora.safetensors", "pt") as handle:
            flag = handle.metadata()["ss_masked_loss"]
        return (lora, [e.loss for e in events if e.type == "loss"],
                [e.loss for e in events if e.type == "validation"], flag)

    plain, ones, half, half_uncached = (run("plain", None), run("ones", white),
                                        run("half", halves), run("uncached", halves, False))
    assert plain[3] == "False" and ones[3] == half[3] == "True"
    assert plain[1:3] == ones[1:3]
    assert all(torch.equal(plain[0][k], ones[0][k]) for k in plain[0])
    assert half[2][0] != plain[2][0]  # the base model's validation loss, over the masked area
    assert half[1] != plain[1] and not all(torch.equal(plain[0][k], half[0][k]) for k in plain[0])
    assert half_uncached[1:3] == half[1:3]  # masks are applied when latents are not cached
    assert all(torch.equal(half[0][k], half_uncached[0][k]) for k in half[0])


# --- the dataset check ------------------------------------------------------------------------

def _masked_config(tmp_path: Path, data: Path, masks: Path, masked: bool = True):
    return tiny_config(Path("unused"), data, tmp_path / "run", dataset={
        "masked_loss": masked, "folders": [{"path": str(data), "mask_folder": str(masks)}]})


def test_a_mask_folder_that_is_missing_or_a_file_is_one_clear_error(tmp_path: Path,
                                                                       capsys) -> None:
    data = tmp_path / "data"
    make_shapes_dataset(data, 2)
    missing = tmp_path / "no-masks"
    with pytest.raises(DatasetError) as error:
        scan_dataset(_masked_config(tmp_path, data, missing))
    assert str(error.value).startswith(f"dataset.folders[0].mask_folder: mask folder not "
                                       f"found: {missing}")
    file = tmp_path / "masks.png"
    file.write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"mask_folder: .*masks.png is a file, not a folder"):
        scan_dataset(_masked_config(tmp_path, data, file))
    # the command line: one line naming the field and the path, exit 2, no traceback
    config = tmp_path / "job.toml"
    config.write_text(f"[dataset]\nmasked_loss = true\n[[dataset.folders]]\npath = '{data}'\n"
                      f"mask_folder = '{missing}'\n")
    assert cli(["validate", "--preset", "tiny-cpu", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "dataset.folders[0].mask_folder" in err.splitlines()[0] and str(missing) in err
    assert "Traceback" not in err
    # with masked loss off the folder is not used: a note, not an error
    report = scan_dataset(_masked_config(tmp_path, data, missing, masked=False))
    assert [w.reason for w in report.warnings] == [
        "dataset.folders[0].mask_folder is set but dataset.masked_loss is off: the masks are "
        "not used"]
    assert report.masks == {} and not report.masked_loss


def test_repeat_subfolders_find_their_masks_in_a_same_named_subfolder(tmp_path: Path) -> None:
    data, masks = tmp_path / "train", tmp_path / "masks"
    make_shapes_dataset(data / "10_cat", 1)
    make_shapes_dataset(data / "2_dog", 1)
    half_mask(masks / "10_cat" / "img00.png")  # laid out like the images
    half_mask(masks / "img00.png", right=True)  # the 2_dog image's, in the folder itself
    report = scan_dataset(_masked_config(tmp_path, data, masks))
    assert {item.subset.name: item.mask.file for item in report.items} == {
        "10_cat": masks / "10_cat" / "img00.png", "2_dog": masks / "img00.png"}


def test_the_dataset_check_counts_masks_and_names_every_problem(tmp_path: Path,
                                                                capsys) -> None:
    data, masks = tmp_path / "data", tmp_path / "data" / "masks"  # masks inside the folder
    paths = make_shapes_dataset(data, 6)
    half_mask(masks / "img00.png")
    half_mask(masks / "img01.webp")
    Image.new("L", (SIZE, SIZE), 0).save(masks / "img02.png")  # all black: trains nothing
    half_mask(masks / "img03.png", (128, 32))  # drawn for another shape
    cut = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    cut.paste((200, 30, 30, 255), (8, 8, 40, 40))
    cut.save(paths[4])  # no mask file, but an alpha channel
    Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    (tmp_path / "clear.png").rename(data / "clear.png")  # fully transparent: nothing to train
    (data / "clear.txt").write_text("nothing")
    config = tmp_path / "job.toml"
    config.write_text(f"[dataset]\nmasked_loss = true\n[[dataset.folders]]\npath = '{data}'\n"
                      f"mask_folder = '{masks}'\n")
    assert cli(["validate", "--preset", "tiny-cpu", "--config", str(config), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["masked_loss"] is True
    assert figures["masks"] == {"mask_file": 3, "alpha": 1, "none": 1}
    assert figures["folders"][str(data)]["masks"] == 4
    assert set(figures["skipped_files"]) == {str(data / "img02.png"), str(data / "clear.png")}
    assert f"its mask {masks / 'img02.png'} is all black" in figures["skipped_files"][
        str(data / "img02.png")]
    assert "fully transparent" in figures["skipped_files"][str(data / "clear.png")]
    text = figures["report"]
    assert (f"Masked loss: 4 of 5 images have a mask (3 from mask files in {masks}; 1 from "
            "their alpha channel); 1 trained on the whole image") in text
    lines = text.splitlines()
    assert any(str(paths[4]) in line and "no mask for it in" in line and "its alpha channel"
               in line for line in lines)
    assert any(str(paths[5]) in line and "trains on the whole image" in line for line in lines)
    assert any(str(paths[3]) in line and "128x32 px" in line and "stretched" in line
               for line in lines)
    assert "subfolder ignored" not in text  # the mask folder inside the image folder
    # without masked loss the same dataset trains every image whole and says nothing of masks
    report = scan_dataset(_masked_config(tmp_path, data, masks, masked=False))
    assert "Masked loss" not in format_report(report) and report.mask_counts()["none"] == 7
    assert report_counts(report, [data])["masked_loss"] is False


def test_kohya_conditioning_data_dir_and_alpha_mask(tmp_path: Path) -> None:
    from trainer.config import DatasetConfig
    from trainer.data import load_kohya_dataset

    make_shapes_dataset(tmp_path / "a", 1)
    make_shapes_dataset(tmp_path / "b", 1)
    (tmp_path / "a-masks").mkdir()
    toml = tmp_path / "d.toml"
    toml.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n"
                    "conditioning_data_dir = 'a-masks'\nalpha_mask = true\n"
                    "[[datasets.subsets]]\nimage_dir = 'b'\nconditioning_data_dir = 'a-masks'\n")
    first, second = load_kohya_dataset(toml, DatasetConfig()).subsets
    assert (first.masked_loss, first.mask_folder) == (True, tmp_path / "a-masks")
    assert not second.masked_loss  # kohya reads conditioning_data_dir only with masked loss
    notes = load_kohya_dataset(toml, DatasetConfig()).notes
    assert any("subsets[1].conditioning_data_dir" in text and "not used" in text
               for _, text in notes)
    both = load_kohya_dataset(toml, DatasetConfig(masked_loss=True)).subsets
    assert [s.masked_loss for s in both] == [True, True]  # kohya's --masked_loss
    toml.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n"
                    "conditioning_data_dir = 'gone'\nalpha_mask = true\n")
    with pytest.raises(DatasetError, match=r"datasets\[0\]\.subsets\[0\]\.conditioning_data_dir "
                                           r"in .*d\.toml: mask folder not found: .*gone"):
        load_kohya_dataset(toml, DatasetConfig())
    toml.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nalpha_mask = 'yes'\n")
    with pytest.raises(Exception, match="alpha_mask = 'yes': must be true or false"):
        load_kohya_dataset(toml, DatasetConfig())
