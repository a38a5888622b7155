"""`python -m studio generate`: write PNGs with A1111 infotext and print one saved path per line."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.cli.common import (
    add_config_options,
    add_sampling_options,
    config_from_args,
    quiet_libraries,
    sampling_request,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images from a prompt")
    parser.add_argument(
        "--model", required=True, help="demo-sd15, demo-sdxl, a models-folder entry, a path or a Hub id"
    )
    add_sampling_options(parser)
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--count", type=int, default=1, help="calls in a row (batch count)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the outputs folder)")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.models.sources import resolve_model

    config = config_from_args(args)
    request = sampling_request(args, args.model, batch_size=args.batch, batch_count=args.count)
    request.validate()
    resolve_model(request.model, config)  # a missing or mistyped model is named before the heavy imports
    quiet_libraries(verbose=args.verbose)
    from tqdm import tqdm

    from studio.generation import outputs
    from studio.generation.run import generate
    from studio.models.manager import ModelManager

    bar = tqdm(total=args.steps * args.count, desc="generating", unit="step", file=sys.stderr, leave=False)
    result = generate(ModelManager(config), request, on_step=lambda info: bar.update(1))
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
