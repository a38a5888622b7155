"""`python -m studio plot`: an X/Y/Z plot; prints the grid's path, then one line per cell: its path and its values.

    python -m studio plot --model demo-sd15 --prompt mountains --seed 42 --lora alps:1 --lora alps-xl:1 \\
        --x "strength=0,0.5,1" --y "model=demo-sd15,demo-sdxl"
"""

from __future__ import annotations

import sys

from studio.cli.common import (
    add_config_options,
    add_sampling_options,
    config_from_args,
    quiet_libraries,
    sampling_request,
)
from studio.errors import InvalidRequestError
from studio.lora.plot_axes import parse_axis
from studio.lora.requests import PlotRequest

AXIS_HELP = (
    "TYPE=VALUES; types: model, strength (every adapter), lora:NAME, blend (off,on), prompt (search,replace...), "
    "seed, steps, cfg, sampler, size (WxH), clip_skip; values as A1111 writes them: 0,0.5,1 or 0-1 (+0.25) or 1-3 [5]"
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="X/Y/Z plot: the same prompt and seed across models, LoRAs, settings")
    # Parsed in run(), not by argparse: a bad axis is one `error:` line like every other user error.
    parser.add_argument("--x", required=True, help=AXIS_HELP)
    parser.add_argument("--y", default=None, help="a second axis (rows)")
    parser.add_argument("--z", default=None, help="a third axis (one grid block per value)")
    parser.add_argument("--model", default=None, help="base model (default: the first value of a model axis)")
    add_sampling_options(parser)
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.lora.library import find_lora
    from studio.models.sources import resolve_model

    config = config_from_args(args)
    axes = tuple(parse_axis(spec) if spec else None for spec in (args.x, args.y, args.z))
    models = [v for axis in axes if axis and axis.key == "model" for v in axis.values]
    model = args.model or (models[0] if models else None)
    if not model:
        raise InvalidRequestError("Name the base model: --model NAME, or an axis model=A,B.")
    base = sampling_request(args, model)
    request = PlotRequest(base, *axes)
    request.validate()
    # Every model and adapter is named before the heavy imports: a typo costs a moment, not a model load.
    for name in [model, *models]:
        resolve_model(name, config)
    adapters = {name for name, _w in base.loras} | {axis.adapter for axis in axes if axis and axis.adapter}
    for name in sorted(adapters):
        find_lora(config.loras_dir, name)
    quiet_libraries(verbose=args.verbose)
    from studio.lora.plot import plot
    from studio.models.manager import ModelManager

    def progress(fraction: float, message: str) -> None:
        print(f"\r{fraction:4.0%} {message[:70]:70}", end="", file=sys.stderr, flush=True)

    result = plot(ModelManager(config), request, outputs_dir=config.outputs_dir, on_progress=progress)
    print(file=sys.stderr)
    print(result.path)
    for path, label in zip(result.cell_paths, result.labels):
        print(f"{path}\t{label}")
    return 0
