"""`python -m studio embeddings`: the embeddings folder with name, kind, vector count, hash and problems."""

from __future__ import annotations

from studio.cli.common import add_config_options, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("embeddings", help="list the textual-inversion embeddings folder")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.generation.embeddings import scan_embeddings

    config = config_from_args(args)
    entries = scan_embeddings(config.embeddings_dir, allow_pickle=config.allow_pickle)
    if not entries:
        print(f"no embeddings in {config.embeddings_dir}")
        return 0
    print("name\tkind\tvectors\thash\tproblem")
    for e in entries:
        kind = e.kind.label if e.kind else "?"
        print("\t".join([e.name, kind, str(e.vectors or "?"), e.hash, e.problem or "ok"]))
    return 0
