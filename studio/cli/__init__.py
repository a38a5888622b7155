"""`python -m studio <command>`: the studio's operations without the UI.

Each command lives in its own module with `register(subparsers)`; its handler returns an exit code.
User errors (`StudioError`) are caught here, once: one line on stderr, exit code 2, no traceback.
Handlers check their request before they import torch and diffusers (seconds), so a typo is reported at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from studio.atomic import clean_leftovers, studio_folders
from studio.cli import embeddings, evaluate, export_dataset, generate, loras, models, plot, push, train, upscalers
from studio.errors import StudioError

COMMANDS = [generate, models, evaluate, export_dataset, push, train, loras, embeddings, plot, upscalers]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="Studio: SD1.5 and SDXL, headless.")
    parser.add_argument("--verbose", action="store_true", help="show library logs and tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        clean_leftovers(studio_folders(args))  # what a killed earlier run left, before this command writes
        return args.handler(args)
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
