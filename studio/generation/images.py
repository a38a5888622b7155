"""Image and mask preparation for image-to-image and inpainting, the way AUTOMATIC1111 does it.

Torch-free (Pillow and numpy), so it is tested and reasoned about on its own:

    job = prepare(request, width, height)      # what the pipeline gets: picture, mask, notes
    ... the pipeline draws `job.image` (and `job.mask`) at width x height ...
    final = job.finish(generated)              # "Only masked" paste back + the input's pixels outside the mask

A1111's order (modules/processing.py, StableDiffusionProcessingImg2Img.init): the mask is made binary
(alpha or gray > 128), inverted for "Inpaint not masked", blurred (a Gaussian of sigma `mask_blur`, kernel
2*int(2.5*sigma+0.5)+1, as its cv2 call); then either the whole picture is resized to the output size (the
overlay mask doubled so the seam stays soft), or, for "Only masked", a box around the mask plus padding,
widened to the output's aspect ratio, is cut out and resized to the output size. Masked content other than
"original" fills the masked area with blurred colors of the rest before encoding. Finally the input is
composited back over the result wherever the (blurred) overlay mask is below 255: pixels it does not touch
are the input's own, exactly.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from studio.errors import InvalidRequestError, UnreadableImageError

RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
"""In A1111's order (its `resize_mode` 0, 1, 2)."""

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
"""In A1111's order: the index is what its API calls `inpainting_fill`."""

MAX_SIDE = 8192
MAX_PIXELS = 8192 * 4096
"""Largest input or mask accepted: 32 Mpx (~100 MB as RGB), far past any output size; bigger is a mistake."""


# --- reading and checking ----------------------------------------------------------------------------------


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
    """An input picture from disk, upright per its EXIF orientation; non-images and bombs are refused in one line."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Our own size limit replaces Pillow's warning; its hard limit (DecompressionBombError) still holds.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS or max(image.size) > MAX_SIDE:
                    raise UnreadableImageError(
                        f"{path.name}: the {what} is {image.width}x{image.height}, larger than Studio reads "
                        f"({MAX_PIXELS // 1_000_000} megapixels, {MAX_SIDE} px a side); shrink it first."
                    )
                image.load()
                return ImageOps.exif_transpose(image)
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


def default_size(image: Image.Image, native: int) -> tuple[int, int]:
    """Output size when the request leaves it open: the input's shape, at most the model's native area.

    A 600x600 tile stays 600x600 on SD1.5; a 4000x3000 photo becomes 592x440 (not a 12 Mpx run).
    Multiples of 8, at least 64.
    """
    width, height = image.size
    scale = min(1.0, (native * native / (width * height)) ** 0.5)
    return tuple(max(64, int(side * scale) // 8 * 8) for side in (width, height))


# --- A1111's image operations -----------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """A1111's `flatten`: transparency composited on white; 16-bit and float pictures scaled, not clipped."""
    from studio.training.dataset import to_rgb as dataset_to_rgb

    return dataset_to_rgb(image)


def resize_image(mode: str, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's `images.resize_image` for "just resize", "crop and resize" and "resize and fill"."""
    if mode == "just resize":
        return _resize(image, width, height)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == "crop and resize":
        # Cover the output, cut what sticks out (centered).
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = _resize(image, src_w, src_h)
        result = Image.new(image.mode, (width, height))
        result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return result
    # "resize and fill": fit inside the output, then stretch the picture's edge rows/columns into the bands.
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = _resize(image, src_w, src_h)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(
                resized.resize((width, fill), box=(0, resized.height, width, resized.height)), (0, fill + src_h)
            )
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(
                resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), (fill + src_w, 0)
            )
    return result


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image.copy()
    return image.resize((width, height), Image.Resampling.LANCZOS)


def binary_mask(mask: Image.Image) -> Image.Image:
    """A1111's `create_binary_mask`: the alpha channel of a partly transparent mask, else its gray; > 128 is white."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        gray = mask.getchannel("A")
    else:
        gray = to_rgb(mask).convert("L") if mask.mode not in ("L", "1") else mask.convert("L")
    return gray.point(lambda value: 255 if value > 128 else 0)


def repaint_mask(mask: Image.Image, *, inverted: bool) -> Image.Image:
    """The binary mask of what to repaint (white), "Inpaint not masked" applied."""
    mask = binary_mask(mask)
    return ImageOps.invert(mask) if inverted else mask


def check_mask_area(mask: Image.Image, *, inverted: bool) -> None:
    """Refuse a mask that leaves nothing to repaint (all black, or all white for "Inpaint not masked")."""
    if repaint_mask(mask, inverted=inverted).getbbox() is None:
        color, other = ("white", "black") if inverted else ("black", "white")
        raise InvalidRequestError(
            f"The mask is all {color}, so there is nothing to repaint; paint the area to redraw {other}, "
            "or drop the mask for image-to-image."
        )


def gaussian_blur(mask: Image.Image, sigma: int) -> Image.Image:
    """The blur of A1111's cv2 call (kernel 2*int(2.5*sigma+0.5)+1, edges mirrored without repeating), in numpy.

    Pillow's own GaussianBlur approximates with box blurs of another reach; this keeps the soft seam, and so the
    area of untouched input pixels, the size A1111 users expect.
    """
    if sigma <= 0:
        return mask
    radius = int(2.5 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    values = np.asarray(mask, dtype=np.float32)
    for axis in (1, 0):
        values = _convolve(values, kernel, radius, axis)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _convolve(values: np.ndarray, kernel: np.ndarray, radius: int, axis: int) -> np.ndarray:
    length = values.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    # numpy's "reflect" is cv2's default border (BORDER_REFLECT_101); it needs a side longer than the radius.
    padded = np.pad(values, pad, mode="reflect" if length > radius else "symmetric" if length > 1 else "edge")
    out = np.zeros_like(values)
    for index, weight in enumerate(kernel):
        out += weight * (padded[:, index : index + length] if axis == 1 else padded[index : index + length])
    return out


def masked_fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's `masking.fill` ("Masked content: fill"): the masked area takes blurred colors of the rest."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """A1111's `get_crop_region_v2`: the box around the mask's non-black pixels plus `padding`, or None."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_crop_region(region, width: int, height: int, image_width: int, image_height: int):
    """A1111's `expand_crop_region`: widen the box to the output's aspect ratio, staying inside the picture."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _expand(y1, y2, int((x2 - x1) * height / width - (y2 - y1)), image_height)
    else:
        x1, x2 = _expand(x1, x2, int((y2 - y1) * width / height - (x2 - x1)), image_width)
    return x1, y1, x2, y2


def _expand(low: int, high: int, grow: int, limit: int) -> tuple[int, int]:
    low -= grow // 2
    high += grow - grow // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


# --- one request's preparation ----------------------------------------------------------------------------


@dataclasses.dataclass
class PreparedImages:
    """What the pipeline draws from, and how its output becomes the final picture."""

    image: Image.Image
    """RGB at the output (processing) size: the picture to redraw, masked area filled if asked."""

    mask: Image.Image | None = None
    """L at the processing size: white = repaint (after inversion and blur). None for image-to-image."""

    original: Image.Image | None = None
    """The input at the size of the final picture, composited back outside the mask."""

    overlay_mask: Image.Image | None = None
    """L at the final size: where the result is kept (255 -> all result, 0 -> all input)."""

    paste_box: tuple[int, int, int, int] | None = None
    """"Only masked": (x, y, w, h) of the box the result is pasted into."""

    notes: list[str] = dataclasses.field(default_factory=list)

    def finish(self, generated: Image.Image) -> Image.Image:
        """The final picture: pasted back into its box ("Only masked"), then the input composited over it."""
        if self.overlay_mask is None:
            return generated
        if self.paste_box is not None:
            x, y, w, h = self.paste_box
            canvas = self.original.copy()
            canvas.paste(resize_image("crop and resize", generated.convert("RGB"), w, h), (x, y))
            generated = canvas
        # Exactly the input where the overlay mask is 0, a soft blend along the blurred seam.
        alpha = np.asarray(self.overlay_mask, dtype=np.float32)[..., None] / 255.0
        result = np.asarray(generated.convert("RGB"), dtype=np.float32)
        original = np.asarray(self.original, dtype=np.float32)
        mixed = np.rint(result * alpha + original * (1.0 - alpha)).astype(np.uint8)
        keep = alpha[..., 0] == 0  # no rounding may touch the pixels the mask leaves alone
        mixed[keep] = np.asarray(self.original)[keep]
        return Image.fromarray(mixed, mode="RGB")


def prepare(request, width: int, height: int) -> PreparedImages:
    """Turn a request's input picture (and mask) into a `PreparedImages` for a width x height run.

    Raises `InvalidRequestError` for a mask that leaves nothing to repaint.
    """
    image = to_rgb(request.init_image)
    if request.mask is None:
        return PreparedImages(image=resize_image(request.resize_mode, image, width, height))

    notes = []
    mask = repaint_mask(request.mask, inverted=request.inpaint_not_masked)
    if mask.size != image.size:
        notes.append(
            f"The mask is {mask.width}x{mask.height} but the picture is {image.width}x{image.height}; "
            "the mask was stretched to the picture's size."
        )
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
    mask = gaussian_blur(mask, request.mask_blur)

    if request.inpaint_full_res:
        region = crop_region(mask, request.inpaint_full_res_padding)
        region = expand_crop_region(region, width, height, mask.width, mask.height)
        x1, y1, x2, y2 = region
        work_image = resize_image("resize and fill", image.crop(region), width, height)
        work_mask = resize_image("resize and fill", mask.crop(region), width, height)
        prepared = PreparedImages(
            image=work_image,
            mask=work_mask,
            original=image,
            overlay_mask=mask,
            paste_box=(x1, y1, x2 - x1, y2 - y1),
            notes=notes,
        )
    else:
        image = resize_image(request.resize_mode, image, width, height)
        mask = resize_image(request.resize_mode, mask, width, height)
        # Doubled, as A1111 does: the blurred seam reaches full strength halfway, so the repainted area is kept whole.
        overlay = Image.fromarray(np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8), mode="L")
        prepared = PreparedImages(image=image, mask=mask, original=image, overlay_mask=overlay, notes=notes)
    if request.masked_content != "original":
        prepared.image = masked_fill(prepared.image, prepared.mask)
    return prepared
