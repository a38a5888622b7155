"""Image and mask preparation for image-to-image and inpainting, the way AUTOMATIC1111 does it.

Torch-free (Pillow and numpy): resize modes, mask blur, the "Only masked" crop and paste back, and the
final composite that puts the input's pixels back outside the (blurred) mask.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from studio.errors import InvalidRequestError, UnreadableImageError

RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
"""In A1111's order: the index is what its API calls `inpainting_fill`."""

MAX_SIDE = 8192
MAX_PIXELS = 8192 * 4096
"""Largest input or mask accepted: 32 Mpx (~100 MB as RGB), far past any output size; bigger is a mistake."""


def check_image(what: str, image) -> None:
    """Refuse something that is not a picture or is too large to hold: "The mask is 20000x20000 ..."."""
    if not isinstance(image, Image.Image):
        raise InvalidRequestError(f"{what} must be a picture (got {type(image).__name__}); open it as an image.")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidRequestError(f"{what} is empty ({width}x{height}); pick another picture.")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise InvalidRequestError(
            f"{what} is {width}x{height}; use one of at most {MAX_SIDE} px a side and "
            f"{MAX_PIXELS // 1_000_000} megapixels (shrink it first)."
        )


def load_image(path: Path | str, *, what: str = "image") -> Image.Image:
    """Open an input picture from disk, refusing non-images and decompression bombs in one line."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS or max(image.size) > MAX_SIDE:
                    raise UnreadableImageError(
                        f"{path.name}: the {what} is {image.width}x{image.height}, larger than Studio reads "
                        f"({MAX_PIXELS // 1_000_000} megapixels, {MAX_SIDE} px a side); shrink it first."
                    )
                image.load()
                return image.copy()
    except FileNotFoundError:
        raise UnreadableImageError(f"{path}: no such {what} file; check the path.") from None
    except IsADirectoryError:
        raise UnreadableImageError(f"{path} is a folder, not an {what} file.") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(f"{path.name} is not an image Studio can read; use a PNG, JPEG or WebP.") from None
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(f"{path.name}: decompression bomb ({error}); use a smaller image.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"{path.name} is a corrupt or truncated image ({error}); re-save it.") from None
