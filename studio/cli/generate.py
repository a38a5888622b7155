"""`python -m studio generate`: write PNGs with A1111 infotext and print one saved path per line."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.cli.common import add_config_options, config_from_args, parse_lora, quiet_libraries
from studio.generation.request import GenerationRequest
from studio.generation.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES


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
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
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
    )
    request.validate()
    check_before_loading(request, config)  # a mistyped model, LoRA or embedding is named before the heavy imports
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


def check_before_loading(request: GenerationRequest, config) -> None:
    """Everything a generation needs that can be checked from names and file headers, in about a second: the model
    (a Hub id must be cached or answer), the LoRAs (`--lora` and prompt tags) and the embeddings the prompts name."""
    from studio.generation.embeddings import usable_embeddings
    from studio.generation.infotext import split_lora_tags
    from studio.lora.kind_blends import usable_lora
    from studio.models.sources import resolve_model

    source = resolve_model(request.model, config)
    prompt, tag_loras = split_lora_tags(request.prompt)
    for name, _weight in [*request.loras, *tag_loras]:
        usable_lora(config.loras_dir, name, source.kind)
    usable_embeddings(config, source.kind, prompt, request.negative_prompt)
    if source.origin == "hub":
        from studio.hub.download import check_hub_repo

        check_hub_repo(
            source.location, what="Hub model", instead="put the model in the models folder", filename="model_index.json"
        )
