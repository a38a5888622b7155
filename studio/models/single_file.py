"""Load one SD1.5/SDXL checkpoint file (`v1-5-pruned-emaonly.safetensors`, `sd_xl_base_1.0.safetensors`...)
in the original A1111/CompVis layout, fully offline.

diffusers' `from_single_file` converts the weights itself, but it needs the diffusers-format configs
of the architecture, and by default it fetches them from the Hub. We give it a local folder instead:
`configs/sd15` and `configs/sdxl` hold the exact configs of stable-diffusion-v1-5 and
stable-diffusion-xl-base-1.0 (JSON only), and the tokenizers are built from the bundled CLIP BPE file.
A `config_dir` (any diffusers folder of the same architecture, e.g. a tiny test model) overrides them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.errors import StudioError, UnsafeFileError, UnsupportedModelError
from studio.lora.folder import PICKLE_SUFFIXES
from studio.models.kinds import ModelKind, is_inpainting_header, kind_of_checkpoint_keys, read_safetensors_header

CONFIGS = Path(__file__).resolve().parent / "configs"
BUNDLED_CONFIGS = {ModelKind.SD15: CONFIGS / "sd15", ModelKind.SDXL: CONFIGS / "sdxl"}
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1."


def load_single_file(
    path: Path,
    kind: ModelKind,
    *,
    dtype: torch.dtype,
    config_dir: Path | None = None,
    allow_pickle: bool = False,
):
    """An SD1.5 or SDXL pipeline (no safety checker) from one original-layout checkpoint file.

    Raises `UnsafeFileError` for pickle files unless `allow_pickle`, `UnsupportedModelError` for a
    corrupt, truncated or wrong-kind file, `ModelNotFoundError` if it does not exist.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    inpainting = _check_file(path, kind, allow_pickle=allow_pickle)
    config_dir = Path(config_dir) if config_dir is not None else BUNDLED_CONFIGS[kind]
    if not (config_dir / "model_index.json").is_file():
        raise UnsupportedModelError(
            f"{config_dir} has no model_index.json; pass a diffusers model folder as config_dir."
        )

    try:
        components = {"tokenizer": _tokenizer(config_dir, "tokenizer", pad_token="<|endoftext|>")}
        if kind is ModelKind.SDXL:
            pipeline_class = StableDiffusionXLPipeline
            components["tokenizer_2"] = _tokenizer(config_dir, "tokenizer_2", pad_token="!")
            components["text_encoder_2"] = _load_openclip_text_encoder(path, config_dir, dtype)
        else:
            pipeline_class = StableDiffusionPipeline
            components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        if inpainting:
            # The bundled configs are the 4-channel models'; an inpainting UNet is the same with 9 input channels.
            from diffusers import UNet2DConditionModel

            components["unet"] = UNet2DConditionModel.from_single_file(
                str(path), config=str(config_dir), subfolder="unet", in_channels=9, dtype=dtype, local_files_only=True
            )
        pipe = pipeline_class.from_single_file(
            str(path), config=str(config_dir), dtype=dtype, local_files_only=True, **components
        )
    except StudioError:
        raise
    except Exception as e:  # diffusers raises ValueError, OSError, RuntimeError, SafetensorError...
        if "meta tensor" in str(e):
            # Weights the file lacks stay empty ("meta") and diffusers fails when it casts them.
            raise UnsupportedModelError(
                f"{path.name} lacks some weights of the {kind.label} model; it does not match the model "
                "configuration or is incomplete. Use a complete SD1.5/SDXL checkpoint."
            ) from e
        raise UnsupportedModelError(
            f"{path.name} could not be loaded as an {kind.label} checkpoint ({type(e).__name__}: {e}). "
            "Check that it is a complete SD1.5/SDXL model file, or re-download it."
        ) from e
    _check_all_weights_loaded(pipe, path)
    return pipe


def _check_file(path: Path, kind: ModelKind, *, allow_pickle: bool) -> bool:
    """Refuse a file that is not a loadable checkpoint of `kind`; returns whether it is an inpainting model."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeFileError(
                f"{path.name} is a pickle checkpoint, which can run code when loaded. Convert it to "
                ".safetensors, or start Studio with --allow-pickle if you trust its source."
            )
        if not path.is_file():
            from studio.errors import ModelNotFoundError

            raise ModelNotFoundError(f"{path} does not exist. Check the path.")
        return False  # a pickle has no header to check without unpickling it
    if suffix != ".safetensors":
        raise UnsupportedModelError(
            f"{path.name} is not a .safetensors checkpoint; Studio loads .safetensors model files."
        )
    # Reads only the header: catches truncated downloads and non-safetensors files instantly.
    header = read_safetensors_header(path)
    found = kind_of_checkpoint_keys((k for k in header if k != "__metadata__"), name=path.name)
    if found is not kind:
        raise UnsupportedModelError(
            f"{path.name} is an {found.label} checkpoint, not {kind.label}; load it as {found.label}."
        )
    return is_inpainting_header(header)


def _tokenizer(config_dir: Path, subfolder: str, *, pad_token: str):
    """The config folder's own tokenizer if it has one (a tiny test model), else the real CLIP tokenizer."""
    if (config_dir / subfolder).is_dir():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(config_dir / subfolder, local_files_only=True)
    from studio.models.clip_tokenizer import clip_tokenizer

    return clip_tokenizer(pad_token=pad_token)


def _load_openclip_text_encoder(path: Path, config_dir: Path, dtype: torch.dtype):
    """SDXL's second text encoder, converted from only the `conditioner.embedders.1.` weights.

    diffusers picks the weights for `text_encoder_2` by comparing embedding widths with the first
    encoder; when both are equal (small models) it loads the wrong encoder and leaves the rest
    uninitialized. Handing it just the OpenCLIP weights removes the guess.
    """
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, load_single_file_checkpoint
    from transformers import CLIPTextModelWithProjection

    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            weights = {k: f.get_tensor(k) for k in f.keys() if k.startswith(SDXL_OPENCLIP_PREFIX)}
    else:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        weights = {k: v for k, v in checkpoint.items() if k.startswith(SDXL_OPENCLIP_PREFIX)}
    if not weights:
        raise UnsupportedModelError(f"{path.name} has no SDXL second text encoder ({SDXL_OPENCLIP_PREFIX}*).")
    return create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection,
        checkpoint=weights,
        subfolder="text_encoder_2",
        config=str(config_dir),
        torch_dtype=dtype,
        local_files_only=True,
    )


def _check_all_weights_loaded(pipe, path: Path) -> None:
    """diffusers leaves weights the file lacks as empty "meta" tensors; that would fail later, obscurely."""
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        missing = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if missing:
            raise UnsupportedModelError(
                f"{path.name} lacks {len(missing)} weights of the {name} (e.g. {missing[0]}); it does not match "
                "the model configuration. Use a complete SD1.5/SDXL checkpoint."
            )
