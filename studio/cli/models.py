"""`python -m studio models`: the models Studio can use, with their kind."""

from __future__ import annotations

from studio.cli.common import add_config_options, config_from_args
from studio.config import ROOT


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list demo models and the models folder")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.errors import ModelNotFoundError
    from studio.models.sources import list_models

    config = config_from_args(args)
    # The default folder may not exist yet (a fresh checkout lists the demo models); a folder the user named must.
    if config.models_dir != ROOT / "models" and not config.models_dir.is_dir():
        raise ModelNotFoundError(f"Models folder {config.models_dir} does not exist; check --models-dir.")
    for source in list_models(config):
        kind = source.kind.label if source.kind else "?"
        problem = f"\t{source.problem}" if source.problem else ""
        print(f"{source.name}\t{kind}\t{source.origin}{problem}")
    return 0
