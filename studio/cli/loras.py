"""`python -m studio loras`: the LoRA library with kind, format, rank, components and problems."""

from __future__ import annotations

from studio.cli.common import add_config_options, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("loras", help="list the LoRA folder: kind, format, rank, problems")
    parser.add_argument("--kind", choices=["sd15", "sdxl"], default=None, help="only adapters for this base kind")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.lora.library import scan_loras

    config = config_from_args(args)
    entries = scan_loras(config.loras_dir)
    if args.kind:
        entries = [e for e in entries if e.kind is not None and e.kind.value == args.kind]
    if not entries:
        print(f"no LoRAs in {config.loras_dir}")
        return 0
    print("name\tkind\tformat\trank\tcomponents\thash\ttriggers\tproblem")
    for e in entries:
        kind = e.kind.label if e.kind else "?"
        fields = [
            e.name,
            kind,
            e.format,
            str(e.rank or "?"),
            ",".join(e.components) or "-",
            e.addnet_hash or "-",
            ", ".join(e.trigger_words) or "-",
            e.problem or "ok",
        ]
        print("\t".join(fields))
    return 0
