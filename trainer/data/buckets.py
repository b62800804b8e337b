"""Aspect-ratio buckets, compatible with kohya's sd-scripts.

A bucket is a (width, height) that every image in it is resized and centre-cropped to. The list
is kohya's `make_bucket_resolutions`: the square of the training resolution, plus every width
from `min_reso` to `max_reso` in `step`s paired with the tallest height (a multiple of `step`,
at most `max_reso`) whose area stays within resolution**2, and its transpose. An image goes to
the bucket whose aspect ratio is closest to its own (`assign_bucket`), again as kohya does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Bucket = tuple[int, int]


def as_size(resolution: int | Sequence[int]) -> Bucket:
    """512 -> (512, 512); (768, 512) stays as it is."""
    if isinstance(resolution, int):
        return (resolution, resolution)
    width, height = resolution
    return (int(width), int(height))


def make_buckets(resolution: int | Sequence[int], min_reso: int = 256, max_reso: int = 1024,
                 step: int = 64) -> list[Bucket]:
    """All buckets for a training resolution, sorted.

    Every bucket has w*h <= the resolution's area and both sides a multiple of `step`. Apart from
    the square one (always present, like kohya, so a resolution below `min_reso` still trains)
    every side lies within [min_reso, max_reso].
    """
    width, height = as_size(resolution)
    max_area = width * height
    side = max(step, int(math.sqrt(max_area) // step) * step)
    buckets = {(side, side)}
    candidate = max(step, -(-min_reso // step) * step)  # min_reso rounded up to the step
    while candidate <= max_reso:
        other = min(max_reso, int((max_area // candidate) // step) * step)
        if other >= min_reso:
            buckets.add((candidate, other))
            buckets.add((other, candidate))
        candidate += step
    return sorted(buckets)


def round_to_step(value: float, step: int) -> int:
    """kohya's round_to_steps: round to the nearest pixel, then down to a multiple of step."""
    rounded = int(value + 0.5)
    return max(step, rounded - rounded % step)


def assign_bucket(width: int, height: int, buckets: Sequence[Bucket], no_upscale: bool = False,
                  resolution: int | Sequence[int] = 512, step: int = 64) -> Bucket:
    """The bucket for a `width` x `height` image (its size after EXIF rotation).

    Normally: an exact size match, else the bucket with the closest aspect ratio (the first one
    in sorted order on a tie). With `no_upscale`: an image larger than the resolution's area is
    scaled down to that area keeping its aspect ratio, a smaller one keeps its size, and the
    bucket is that size rounded down to `step` - so it is never larger than the image.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    if not no_upscale:
        if (width, height) in buckets:
            return (width, height)
        if not buckets:
            raise ValueError("no buckets to choose from")
        best = min(range(len(buckets)),
                   key=lambda i: (abs(buckets[i][0] / buckets[i][1] - aspect), i))
        return tuple(buckets[best])  # type: ignore[return-value]

    res_w, res_h = as_size(resolution)
    max_area = res_w * res_h
    if width * height > max_area:
        resized_w = math.sqrt(max_area * aspect)
        resized_h = max_area / resized_w
        # Round the short or the long side to the step, whichever keeps the aspect closer.
        w_rounded = round_to_step(resized_w, step)
        h_in_w = round_to_step(w_rounded / aspect, step)
        ar_w = w_rounded / h_in_w
        h_rounded = round_to_step(resized_h, step)
        w_in_h = round_to_step(h_rounded * aspect, step)
        ar_h = w_in_h / h_rounded
        if abs(ar_w - aspect) < abs(ar_h - aspect):
            size = (w_rounded, int(w_rounded / aspect + 0.5))
        else:
            size = (int(h_rounded * aspect + 0.5), h_rounded)
    else:
        size = (width, height)
    bucket_w = max(step, size[0] - size[0] % step)
    bucket_h = max(step, size[1] - size[1] % step)
    return (bucket_w, bucket_h)


def aspect_error(width: int, height: int, bucket: Bucket) -> float:
    """Bucket aspect ratio minus image aspect ratio (kohya's ar_error, for ss_bucket_info)."""
    return bucket[0] / bucket[1] - width / height
