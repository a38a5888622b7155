"""`python -m studio export-dataset`: N images per prompt, fixed seeds, as a Hugging Face imagefolder data set.

    python -m studio export-dataset --model demo-sd15 --lora mountains:0.8 --prompt "snowy peaks" \
        --prompt "a glacier valley" --count 8 --seed 0 --out datasets/synthetic-mountains

    python -m studio export-dataset --model demo-sd15 --init-images tiles/ --strength 0.4 --count 4 \
        --out datasets/tile-variations

The second form redraws every picture of a folder `--count` times (image-to-image), captions carried over from
the folder's metadata.jsonl (or .txt files; `--prompt` captions the rest).
The folder loads with `datasets.load_dataset("imagefolder", data_dir=...)` and trains with the studio's trainer.
Prints the folder on the last line. `--resume` finishes an export stopped in that folder (the images there are kept).
`accelerate launch -m studio export-dataset ...` splits the missing images across the processes (and GPUs); the
first process writes metadata.jsonl once all are drawn, and the folder is the one a single process would write.
"""

from __future__ import annotations

from pathlib import Path

from studio.cli.common import add_config_options, config_from_args, quiet_libraries
from studio.cli.evaluate import add_sampling_options, progress_bar, sampling_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("export-dataset", help="generate a synthetic imagefolder data set")
    add_sampling_options(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", type=Path, default=None, help="a text file with one prompt per line")
    parser.add_argument("--count", type=int, default=4, help="images per prompt or picture (default 4)")
    parser.add_argument("--init-images", type=Path, default=None, help="redraw the pictures of this folder instead")
    parser.add_argument("--strength", type=float, default=0.75, help="denoising strength of those redraws")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for the data set")
    parser.add_argument("--resume", action="store_true", help="keep the images already in --out, draw the rest")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.errors import InvalidRequestError
    from studio.evaluation.requests import Candidate, ExportRequest

    prompts = list(args.prompt)
    if args.prompts_file is not None:
        try:
            text = args.prompts_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidRequestError(f"Cannot read --prompts-file {args.prompts_file} ({e}); use UTF-8 text.") from e
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    config = config_from_args(args)
    request = ExportRequest(
        candidate=Candidate(args.model, tuple(args.lora)),
        prompts=tuple(prompts),
        folder=args.out,
        count=args.count,
        seed=args.seed,
        sampling=sampling_from_args(args),
        init_images=args.init_images,
        strength=args.strength,
        resume=args.resume,
    )
    request.validate()
    if request.init_images is not None:
        _print_skipped(request)
    quiet_libraries(verbose=args.verbose)
    from studio.evaluation.shard import process_shard
    from studio.evaluation.synthetic import export_dataset
    from studio.models.manager import ModelManager

    update, close = progress_bar()
    try:
        shard = process_shard(args.device)
        result = export_dataset(ModelManager(config), request, on_progress=update, shard=shard)
    finally:
        close()
    if shard.main:  # one report for a multi-process export
        stopped = " (stopped early)" if result.interrupted else ""
        rows = len(result.metadata.read_text().splitlines()) if result.metadata.exists() else 0
        print(f"{rows} images and {result.metadata.name} written{stopped}")
        print(result.folder)
    return 0


def _print_skipped(request) -> None:
    """Pictures of --init-images that will not be redrawn, each with its reason, before the long part starts."""
    import sys

    for skip in request.source_pictures().skipped:
        print(f"note: skipped {skip.path.name}: {skip.reason}", file=sys.stderr)
