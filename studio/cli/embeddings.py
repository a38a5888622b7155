"""`python -m studio embeddings`: the embeddings folder with name, kind, vector count, hash and problems."""

from __future__ import annotations

from studio.cli.common import add_config_options, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("embeddings", help="list the textual-inversion embeddings folder")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.generation.embeddings import embedding_rows

    config = config_from_args(args)
    rows = embedding_rows(config)
    if not rows:
        print(f"no embeddings in {config.embeddings_dir}")
        return 0
    print("name\tkind\tvectors\thash\tproblem")
    for name, kind, vectors, digest, problem in rows:
        print("\t".join([name, kind, str(vectors or "?"), digest, problem or "ok"]))
    return 0
