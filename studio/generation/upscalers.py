"""Upscalers for the hires fix, by their A1111 names: latent ones, PIL resamplers, and model files.

    names = list_upscalers(config)            # ["Latent", ..., "Lanczos", "Nearest", "4x-UltraSharp.safetensors"]
    upscaler = load_upscaler("Lanczos", config, device=torch.device("cpu"))
    big = upscaler.upscale_image(image, 1024, 1024)

- "Latent ..." resize the first pass's latents with `torch.nn.functional.interpolate`, the modes and antialias
  flags of A1111's `shared.latent_upscale_modes` ("Latent" = bilinear, no antialias).
- "Lanczos" and "Nearest" resize the decoded first-pass image with PIL.
- Any other name is a file in `models/upscalers/` (ESRGAN, RealESRGAN, SwinIR, ... as spandrel detects them),
  run on the decoded image, then resized to the exact size with Lanczos (A1111 does the same). `.safetensors`
  only, unless Studio runs with --allow-pickle: `.pth` files unpickle, which can run code.

Listing and checking are torch-free (the CLI checks a name before importing torch); torch and spandrel are
imported when an upscaler is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from PIL import Image

from studio.config import StudioConfig
from studio.errors import InvalidRequestError, UnsafeFileError, UnsupportedModelError
from studio.lora.folder import PICKLE_SUFFIXES

LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
RESAMPLERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
BUILTIN = (*LATENT_MODES, *RESAMPLERS)
FOLDER_NAME = "upscalers"
MODEL_TILE = 512
"""Model upscalers run on tiles of this many input pixels (plus an overlap), so a large image fits in memory."""

_TILE_OVERLAP = 16


def upscalers_dir(config: StudioConfig) -> Path:
    return config.models_dir / FOLDER_NAME


def list_upscalers(config: StudioConfig) -> list[str]:
    """Built-in names, then the model files of models/upscalers/ (pickle files only with --allow-pickle)."""
    folder = upscalers_dir(config)
    suffixes = (".safetensors", *PICKLE_SUFFIXES) if config.allow_pickle else (".safetensors",)
    files = []
    if folder.is_dir():
        files = sorted(
            (p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes), key=str.lower
        )
    return [*BUILTIN, *files]


def is_latent(name: str) -> bool:
    return name in LATENT_MODES


def check_upscaler(name: str, config: StudioConfig) -> Path | None:
    """Refuse an unknown or unsafe upscaler in one line; the model file's path (None for a built-in one)."""
    if name in BUILTIN:
        return None
    path = _model_file(upscalers_dir(config), name)
    if Path(name).name != name or path is None:
        known = list_upscalers(config)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidRequestError(
            f"hires_upscaler={name!r} is not a built-in upscaler or a file in {upscalers_dir(config)}; {hint}"
            f"use one of: {', '.join(known)}."
        )
    if path.suffix.lower() in PICKLE_SUFFIXES and not config.allow_pickle:
        raise UnsafeFileError(
            f"Upscaler {name} is a pickle file, which can run code when loaded. Use a .safetensors upscaler, "
            "or start Studio with --allow-pickle if you trust its source."
        )
    if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
        raise InvalidRequestError(f"Upscaler {name} is not a model file; use a .safetensors upscaler model.")
    return path


def _model_file(folder: Path, name: str) -> Path | None:
    """The file `name`, or `name` plus a model suffix: A1111's infotext names upscaler models without one."""
    for candidate in (name, *(name + suffix for suffix in (".safetensors", *PICKLE_SUFFIXES))):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


@dataclasses.dataclass
class Upscaler:
    name: str
    model: object = None
    """spandrel's `ImageModelDescriptor` for a model file, else None."""

    @property
    def latent(self) -> bool:
        return is_latent(self.name)

    def upscale_latents(self, latents, width: int, height: int):
        """Latents (B, C, h, w) resized to the latents of a width x height image, as A1111's latent upscalers do."""
        import torch

        mode, antialias = LATENT_MODES[self.name]
        resized = torch.nn.functional.interpolate(
            latents.float(), size=(height // 8, width // 8), mode=mode, antialias=antialias
        )
        return resized.to(latents.dtype)

    def upscale_image(self, image: Image.Image, width: int, height: int) -> Image.Image:
        if self.model is not None:
            image = _run_model(self.model, image, width, height)
        resample = RESAMPLERS.get(self.name, Image.Resampling.LANCZOS)
        return image if image.size == (width, height) else image.resize((width, height), resample)


def load_upscaler(name: str, config: StudioConfig, *, device=None) -> Upscaler:
    path = check_upscaler(name, config)
    if path is None:
        return Upscaler(name)
    spandrel = _import_spandrel(name)
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    except spandrel.UnsupportedModelError as error:
        raise UnsupportedModelError(
            f"Upscaler {name} is not an architecture spandrel knows ({error}); use an ESRGAN-type upscaler."
        ) from error
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise UnsupportedModelError(f"Upscaler {name} could not be read: {error}") from error
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3:
        raise UnsupportedModelError(f"Upscaler {name} is not an RGB image-to-image model; use an upscaler model.")
    return Upscaler(name, descriptor.eval())


def _import_spandrel(name: str):
    """spandrel, or one line saying what to install (it needs torchvision, which must match the torch build)."""
    try:
        import spandrel
    except (ImportError, OSError, RuntimeError) as error:
        import torch

        major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
        torchvision = f"0.{minor + 15}.*" if major == 2 else "<the release for your torch>"
        raise UnsupportedModelError(
            f"Upscaler {name} needs the spandrel package, which could not be imported ({error}). Install it with "
            f'pip install spandrel "torchvision=={torchvision}" (the torchvision built for torch {torch.__version__}, '
            "from the same package index), or pick Latent or Lanczos."
        ) from error
    return spandrel


def _run_model(descriptor, image: Image.Image, width: int, height: int) -> Image.Image:
    """Apply the model until the image reaches width x height (at most 3 times, as A1111 does)."""
    import numpy as np
    import torch

    parameter = next(descriptor.model.parameters())
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None]
    tensor = pixels.to(device=parameter.device, dtype=parameter.dtype) / 255
    for _ in range(3):
        if tensor.shape[-1] >= width and tensor.shape[-2] >= height:
            break
        tensor = _tiled(descriptor, tensor)
    out = tensor[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(out)


def _tiled(descriptor, tensor):
    """The model on overlapping tiles: each tile sees `_TILE_OVERLAP` pixels of context, its centre is kept."""
    import torch

    _, channels, height, width = tensor.shape
    if height <= MODEL_TILE and width <= MODEL_TILE:
        return descriptor(tensor)
    scale, pad = descriptor.scale, _TILE_OVERLAP
    out = torch.zeros((1, channels, height * scale, width * scale), dtype=tensor.dtype, device=tensor.device)
    for top in range(0, height, MODEL_TILE):
        for left in range(0, width, MODEL_TILE):
            bottom, right = min(top + MODEL_TILE, height), min(left + MODEL_TILE, width)
            y0, x0 = max(top - pad, 0), max(left - pad, 0)
            tile = descriptor(tensor[:, :, y0 : min(bottom + pad, height), x0 : min(right + pad, width)])
            dy, dx = (top - y0) * scale, (left - x0) * scale
            h, w = (bottom - top) * scale, (right - left) * scale
            out[:, :, top * scale : bottom * scale, left * scale : right * scale] = tile[:, :, dy : dy + h, dx : dx + w]
    return out
