"""Aspect-ratio bucketing: train on wide and tall images without squashing them into squares.

    buckets = make_buckets(1024)                     # [(704, 1408), ..., (1024, 1024), ..., (1408, 704)]
    bucket = nearest_bucket(1600, 800, buckets)      # (1408, 704): same 2:1 shape
    image, (top, left) = fit_to_bucket(image, bucket)

Every bucket holds about `resolution**2` pixels (never more, so the memory budget the user chose for
a square resolution still holds) and both sides are multiples of `step`, so the VAE (factor 8) and the
UNet's down-sampling (another factor 8 for SDXL/SD1.5 at 64) divide them evenly. Images in one batch
must share a bucket; the trainer groups them with `nearest_bucket`.
"""

from __future__ import annotations

import math

from PIL import Image

from studio.errors import InvalidRequestError

# Both sides must be divisible by the VAE's down-sampling factor.
VAE_FACTOR = 8


def make_buckets(resolution: int, step: int = 64, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets of at most `resolution**2` pixels, sides multiples of `step`.

    Sorted from the tallest to the widest; always contains the square (resolution, resolution).
    With the default step a 2:1 bucket exists at 1024 (1408x704) but not at 512, where the widest is
    640x384; pass `step=32` for finer shapes (704x352 at 512).
    """
    if step <= 0 or step % VAE_FACTOR:
        raise InvalidRequestError(f"Bucket step {step} must be a positive multiple of {VAE_FACTOR}; use 64 or 32.")
    if resolution < step or resolution % step:
        raise InvalidRequestError(
            f"Resolution {resolution} must be a positive multiple of the bucket step {step}; try "
            f"{max(step, round(resolution / step) * step)}."
        )
    if max_aspect < 1:
        raise InvalidRequestError(f"max_aspect={max_aspect} must be at least 1 (1 gives only the square bucket).")

    max_area = resolution * resolution
    buckets = set()
    # Walk the wide side up from the square; the short side is the largest multiple of `step` that
    # keeps the area within budget. Flooring (not rounding) is what keeps memory predictable.
    width = resolution
    while True:
        height = (max_area // width) // step * step
        if height < step or width / height > max_aspect:
            break
        buckets.add((width, height))
        buckets.add((height, width))
        width += step
    return sorted(buckets, key=lambda size: size[0] / size[1])


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width:height.

    Distance is measured on log(aspect), so 2:1 and 1:2 are equally far from square; ties go to
    the bucket with more pixels.
    """
    if width <= 0 or height <= 0:
        raise InvalidRequestError(f"Image size {width}x{height} must be positive.")
    if not buckets:
        raise InvalidRequestError("No buckets to choose from; build them with make_buckets(resolution).")
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Resize `image` to cover `bucket` keeping its aspect ratio, then center-crop the remainder.

    Returns the (width, height) == bucket image and the crop's top-left corner as (top, left) in the
    resized image: SDXL is conditioned on it (`crops_coords_top_left`), so the model learns that a
    crop happened and can be asked for (0, 0), uncropped, images at inference.
    """
    bucket_w, bucket_h = bucket
    if bucket_w <= 0 or bucket_h <= 0:
        raise InvalidRequestError(f"Bucket {bucket_w}x{bucket_h} must have positive sides.")
    width, height = image.size
    scale = max(bucket_w / width, bucket_h / height)
    # max() guards against rounding leaving the covering side one pixel short.
    new_w = max(bucket_w, round(width * scale))
    new_h = max(bucket_h, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left = (new_w - bucket_w) // 2
    top = (new_h - bucket_h) // 2
    if (new_w, new_h) != (bucket_w, bucket_h):
        image = image.crop((left, top, left + bucket_w, top + bucket_h))
    return image, (top, left)
