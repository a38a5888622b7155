"""Options shared by CLI commands: the folders and device settings of `StudioConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.config import DEVICES, DTYPES, MEMORY_MODES, ROOT, StudioConfig
from studio.errors import InvalidRequestError
from studio.generation.infotext import parse_lora_weight
from studio.generation.request import GenerationRequest
from studio.generation.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES


def add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("studio folders and device")
    group.add_argument(
        "--models-dir", type=Path, default=ROOT / "models", help="base models folder (default: models/ in the checkout)"
    )
    group.add_argument("--loras-dir", type=Path, default=ROOT / "loras", help="LoRA folder (default: loras)")
    group.add_argument("--outputs-dir", type=Path, default=ROOT / "outputs", help="outputs folder (default: outputs)")
    group.add_argument(
        "--embeddings-dir", type=Path, default=ROOT / "embeddings", help="embeddings folder (default: embeddings)"
    )
    group.add_argument("--device", choices=DEVICES, default="auto")
    group.add_argument("--dtype", choices=DTYPES, default="auto")
    group.add_argument("--memory-mode", choices=MEMORY_MODES, default="auto")
    group.add_argument("--vae-tiling", action="store_true", help="decode in tiles to save VRAM")
    group.add_argument("--allow-pickle", action="store_true", help="allow loading .ckpt/.bin pickle files (unsafe)")


def config_from_args(args: argparse.Namespace) -> StudioConfig:
    return StudioConfig(
        models_dir=args.models_dir,
        loras_dir=args.loras_dir,
        outputs_dir=args.outputs_dir,
        embeddings_dir=args.embeddings_dir,
        device=args.device,
        dtype=args.dtype,
        memory_mode=args.memory_mode,
        vae_tiling=args.vae_tiling,
        allow_pickle=args.allow_pickle,
    )


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """The prompt and sampler flags of one image (generate, plot); `sampling_request` reads them back."""
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=-1, help="-1 for random (the seed used is in the PNG)")
    parser.add_argument("--width", type=int, default=None, help="default: the model's native size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help=f"one of: {', '.join(SCHEDULER_NAMES)}")
    parser.add_argument("--clip-skip", type=int, default=1)
    parser.add_argument("--lora", type=parse_lora, action="append", default=[], metavar="NAME:WEIGHT")


def sampling_request(args: argparse.Namespace, model: str, **extra) -> GenerationRequest:
    return GenerationRequest(
        model=model,
        prompt=args.prompt,
        negative_prompt=args.negative,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        width=args.width,
        height=args.height,
        scheduler=args.scheduler,
        clip_skip=args.clip_skip,
        loras=tuple(args.lora),
        **extra,
    )


def parse_lora(text: str) -> tuple[str, float]:
    """argparse type for `--lora NAME:WEIGHT`; argparse shows an ArgumentTypeError's message (not a ValueError's)."""
    try:
        return parse_lora_weight(text)
    except InvalidRequestError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def quiet_libraries(*, verbose: bool = False) -> None:
    """Library progress bars and advice would bury the one line per saved image that scripts read.

    Commands call this once their request is checked, just before the heavy imports it triggers."""
    if verbose:
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
