"""`python -m studio generate`: write PNGs with A1111 infotext and print one saved path per line."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.cli.common import add_config_options, config_from_args, parse_lora, quiet_libraries
from studio.generation.request import GenerationRequest
from studio.generation.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES
from studio.generation.upscalers import check_upscaler


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images from a prompt")
    parser.add_argument(
        "--model", required=True, help="demo-sd15, demo-sdxl, a models-folder entry, a path or a Hub id"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=-1, help="-1 for random (the seed used is in the PNG)")
    parser.add_argument("--width", type=int, default=None, help="default: the model's native size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help=f"one of: {', '.join(SCHEDULER_NAMES)}")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--count", type=int, default=1, help="calls in a row (batch count)")
    parser.add_argument("--clip-skip", type=int, default=1)
    parser.add_argument("--lora", type=parse_lora, action="append", default=[], metavar="NAME:WEIGHT")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the outputs folder)")
    _add_hires_options(parser)
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.models.sources import resolve_model

    config = config_from_args(args)
    request = GenerationRequest(
        model=args.model,
        prompt=args.prompt,
        negative_prompt=args.negative,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        width=args.width,
        height=args.height,
        scheduler=args.scheduler,
        batch_size=args.batch,
        batch_count=args.count,
        clip_skip=args.clip_skip,
        loras=tuple(args.lora),
        **_hires_fields(args),
    )
    request.validate()
    resolve_model(request.model, config)  # a missing or mistyped model is named before the heavy imports
    if request.hires:
        check_upscaler(request.hires_upscaler, config)
    quiet_libraries(verbose=args.verbose)
    from tqdm import tqdm

    from studio.generation import outputs
    from studio.generation.run import generate
    from studio.models.manager import ModelManager

    bar = tqdm(total=_total_steps(request), desc="generating", unit="step", file=sys.stderr, leave=False)
    result = generate(ModelManager(config), request, on_step=lambda info: bar.update(info.stage != "first pass"))
    bar.close()
    if args.out is not None:
        folder = args.out
        folder.mkdir(parents=True, exist_ok=True)
        start = outputs._next_number(folder)
        paths = [
            outputs.save_png(image, text, folder / f"{start + i:05d}-{seed}.png")
            for i, (image, text, seed) in enumerate(zip(result.images, result.infotexts, result.seeds))
        ]
    else:
        paths = outputs.save_images(result.images, result.infotexts, result.seeds, config.outputs_dir)
    for path in paths:
        print(path)
    return 0


# --- hires fix -------------------------------------------------------------------------------------------------


def _add_hires_options(parser) -> None:
    group = parser.add_argument_group("hires fix (A1111): generate, upscale, then image-to-image at the big size")
    group.add_argument("--hires", type=float, default=1.0, metavar="SCALE", help="upscale by SCALE (1 = off)")
    group.add_argument("--hires-width", type=int, default=0, help="resize width to (0: from the scale)")
    group.add_argument("--hires-height", type=int, default=0, help="resize height to (0: from the scale)")
    group.add_argument("--hires-steps", type=int, default=0, help="second-pass steps (0: same as --steps)")
    group.add_argument("--hires-denoise", type=float, default=0.7, help="second-pass denoising strength")
    group.add_argument(
        "--upscaler", default="Latent", help="Latent, Lanczos, ... or a file in models/upscalers/ (see 'upscalers')"
    )


def _hires_fields(args) -> dict:
    return dict(
        hires_scale=args.hires,
        hires_width=args.hires_width,
        hires_height=args.hires_height,
        hires_steps=args.hires_steps,
        hires_denoise=args.hires_denoise,
        hires_upscaler=args.upscaler,
    )


def _total_steps(request: GenerationRequest) -> int:
    steps = request.steps
    if request.hires:
        from studio.generation.hires import pipeline_steps

        steps += pipeline_steps(request.hires_steps or request.steps, request.hires_denoise)[1]
    return steps * request.batch_count
