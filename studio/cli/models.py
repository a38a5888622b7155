"""`python -m studio models`: the models Studio can use, with their kind."""

from __future__ import annotations

from studio.cli.common import add_config_options, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list demo models and the models folder")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.models.sources import list_models

    for source in list_models(config_from_args(args)):
        kind = source.kind.label if source.kind else "?"
        problem = f"\t{source.problem}" if source.problem else ""
        print(f"{source.name}\t{kind}\t{source.origin}{problem}")
    return 0
