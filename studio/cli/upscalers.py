"""`python -m studio upscalers`: the names `generate --upscaler` takes (built-in ones, then models/upscalers/)."""

from __future__ import annotations

import sys

from studio.cli.common import add_config_options, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("upscalers", help="list the hires fix upscalers")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.generation.upscalers import list_upscalers, upscalers_dir

    config = config_from_args(args)
    for name in list_upscalers(config):
        print(name)
    if not upscalers_dir(config).is_dir():
        print(f"(no folder {upscalers_dir(config)}: put .safetensors upscaler models there)", file=sys.stderr)
    return 0
