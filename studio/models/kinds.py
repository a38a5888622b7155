"""What kind of model a folder, checkpoint file or LoRA is, decided without loading tensors."""

from __future__ import annotations

import enum
import json
import struct
from pathlib import Path

from studio.errors import UnsupportedModelError


class ModelKind(str, enum.Enum):
    SD15 = "sd15"
    SDXL = "sdxl"

    @property
    def label(self) -> str:
        return {"sd15": "SD1.5", "sdxl": "SDXL"}[self.value]

    @property
    def native_size(self) -> int:
        return 1024 if self is ModelKind.SDXL else 512


# Largest header we accept: real checkpoints have headers of a few hundred KB.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a `.safetensors` file: {tensor name: {dtype, shape, data_offsets}, "__metadata__": {...}}.

    Reads only the first bytes, so it is instant even for a 7 GB checkpoint, and it checks that the
    file is long enough to hold every tensor the header names (a truncated download is caught here).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw_length = f.read(8)
            if len(raw_length) < 8:
                raise UnsupportedModelError(
                    f"{path.name} is not a safetensors file (only {len(raw_length)} bytes). Re-download it."
                )
            (length,) = struct.unpack("<Q", raw_length)
            if length == 0 or length > _MAX_HEADER_BYTES:
                raise UnsupportedModelError(
                    f"{path.name} is not a safetensors file (header length {length}). Re-download it."
                )
            header = json.loads(f.read(length))
    except FileNotFoundError:
        from studio.errors import ModelNotFoundError

        raise ModelNotFoundError(f"{path} does not exist. Check the path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UnsupportedModelError(
            f"{path.name} is not a safetensors file (its header is not JSON). Re-download it."
        ) from None
    if not isinstance(header, dict):
        raise UnsupportedModelError(f"{path.name} is not a safetensors file (unexpected header). Re-download it.")
    data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    expected = 8 + length + data_end
    actual = path.stat().st_size
    if actual < expected:
        raise UnsupportedModelError(
            f"{path.name} is truncated ({actual:,} of {expected:,} bytes). Re-download or re-export it."
        )
    return header


def kind_of_checkpoint_keys(keys, name: str = "checkpoint") -> ModelKind:
    """SD1.5 or SDXL from the tensor names of an original (A1111/CompVis-layout) checkpoint."""
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return ModelKind.SDXL
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return ModelKind.SD15
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise UnsupportedModelError(
            f"{name} looks like a Stable Diffusion 2.x checkpoint; Studio supports SD1.5 and SDXL."
        )
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise UnsupportedModelError(
            f"{name} has a UNet but no text encoder Studio recognizes; use an SD1.5 or SDXL checkpoint."
        )
    raise UnsupportedModelError(
        f"{name} is not a Stable Diffusion checkpoint (no UNet weights found). Pick an SD1.5 or SDXL model file."
    )


def kind_of_checkpoint(path: Path) -> ModelKind:
    return describe_checkpoint(path)[0]


# The UNet's first convolution: (320, 4, 3, 3) in ordinary SD1.5/SDXL checkpoints, (320, 9, 3, 3) in the dedicated
# inpainting ones (latents + mask + masked picture), e.g. sd-v1-5-inpainting and sd_xl_base_1.0_inpainting_0.1.
INPAINT_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
INPAINT_CHANNELS = 9


def describe_checkpoint(path: Path) -> tuple[ModelKind, bool]:
    """(SD1.5 or SDXL, whether it is an inpainting model) from the header of an original-layout checkpoint."""
    header = read_safetensors_header(path)
    kind = kind_of_checkpoint_keys((k for k in header if k != "__metadata__"), name=Path(path).name)
    return kind, is_inpainting_header(header)


def is_inpainting_header(header: dict) -> bool:
    shape = header.get(INPAINT_UNET_KEY, {}).get("shape", [])
    return len(shape) == 4 and shape[1] == INPAINT_CHANNELS


def is_inpainting_folder(folder: Path) -> bool:
    """Whether a diffusers folder's UNet reads 9 channels (its `unet/config.json`); False when that is unreadable."""
    try:
        config = json.loads((Path(folder) / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and config.get("in_channels") == INPAINT_CHANNELS


def kind_of_folder(folder: Path) -> ModelKind:
    """SD1.5 or SDXL from a diffusers folder's `model_index.json`."""
    index_path = Path(folder) / "model_index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnsupportedModelError(f"{folder} has no model_index.json; it is not a diffusers model folder.") from None
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"{index_path} is not valid JSON ({e}). Re-download the model.") from None
    pipeline_class = index.get("_class_name", "")
    if "XL" in pipeline_class:
        return ModelKind.SDXL
    if pipeline_class.startswith("StableDiffusion"):
        return ModelKind.SD15
    raise UnsupportedModelError(
        f"{folder} holds a {pipeline_class or 'unknown'} model; Studio supports SD1.5 and SDXL pipelines."
    )
