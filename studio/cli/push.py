"""`python -m studio push NAME --repo OWNER/NAME`: upload an adapter with its model card; prints the repo URL.

The token comes from HF_TOKEN or `hf auth login`; with neither, an interactive terminal is asked for one
(hidden input). There is deliberately no --token flag: command lines end up in `ps` and shell history.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from studio.config import ROOT


def register(subparsers) -> None:
    parser = subparsers.add_parser("push", help="share an adapter from loras/ on the Hugging Face Hub")
    parser.add_argument("name", help="adapter in the LoRA folder (a Studio folder or any .safetensors LoRA)")
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME", help="Hub repository (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", default="", help="commit message")
    parser.add_argument(
        "--tag",
        "--tags",
        action="append",
        default=[],
        metavar="TAG[,TAG...]",
        help="extra model card tags, e.g. remote-sensing (repeatable, or comma-separated)",
    )
    parser.add_argument("--license", default=None, help="model card license (default: the base model's)")
    parser.add_argument("--loras-dir", type=Path, default=ROOT / "loras", help="LoRA folder (default: loras)")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from studio.hub.adapters import PushRequest, push_adapter, resolve_token

    if not args.verbose:
        _quiet_hub()
    token = None
    if resolve_token(None) is None and sys.stdin.isatty():
        token = getpass.getpass("Hub token (write access; not stored): ") or None
    request = PushRequest(
        name=args.name,
        repo_id=args.repo,
        loras_dir=args.loras_dir,
        private=args.private,
        tags=tuple(tag.strip() for value in args.tag for tag in value.split(",") if tag.strip()),
        license=args.license,
        message=args.message,
        token=token,
        endpoint=args.endpoint,
    )
    url = push_adapter(request, on_progress=_print_progress)
    print(url)
    return 0


def _print_progress(fraction: float, message: str) -> None:
    print(f"{fraction:4.0%} {message}", file=sys.stderr, flush=True)


def _quiet_hub() -> None:
    """Our own progress lines replace huggingface_hub's bars and its notice about the plain-HTTP upload path."""
    from huggingface_hub.utils import disable_progress_bars, logging

    disable_progress_bars()
    logging.set_verbosity_error()
