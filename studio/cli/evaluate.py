"""`python -m studio evaluate`: how close do generated images come to a folder of images?

    python -m studio evaluate --model demo-sd15 --lora mountains:1 --data ~/aid-mountains \
        --prompt "satellite image of mountains" --count 16 --seed 0 --compare demo-sd15

Prints the ranked table (CMMD and KID on CLIP features with 95% intervals, the data set's own floor)
and, on the last line, the folder with the images, nearest-neighbour grids, chart and results.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studio.cli.common import add_config_options, config_from_args, parse_lora, quiet_libraries
from studio.evaluation.requests import DEFAULT_FEATURE_MODEL
from studio.generation.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Model, LoRAs and how each image is drawn: shared with `export-dataset`."""
    parser.add_argument("--model", required=True, help="demo-sd15, demo-sdxl, a models-folder entry, path or Hub id")
    parser.add_argument("--lora", type=parse_lora, action="append", default=[], metavar="NAME:WEIGHT")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    group = parser.add_argument_group("sampling")
    group.add_argument("--negative", default="", help="negative prompt")
    group.add_argument("--steps", type=int, default=25)
    group.add_argument("--cfg", type=float, default=7.0)
    group.add_argument("--width", type=int, default=None, help="default: each model's native size")
    group.add_argument("--height", type=int, default=None)
    group.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help=f"one of: {', '.join(SCHEDULER_NAMES)}")


def sampling_from_args(args):
    from studio.evaluation.requests import SamplingSettings

    return SamplingSettings(
        negative_prompt=args.negative,
        steps=args.steps,
        cfg=args.cfg,
        width=args.width,
        height=args.height,
        scheduler=args.scheduler,
    )


def progress_bar():
    """A tqdm bar on stderr driven by `Progress` events; returns (callback, close)."""
    from tqdm import tqdm

    bar = tqdm(total=1000, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def update(progress) -> None:
        bar.set_description_str(progress.message[:60], refresh=False)
        bar.update(max(0, round(progress.fraction * 1000) - bar.n))

    return update, bar.close


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="score generated images against a folder of images (CMMD)")
    add_sampling_options(parser)
    parser.add_argument("--data", type=Path, required=True, help="folder of the images to compare with")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--count", type=int, default=16, help="images per candidate (default 16)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: a new one under outputs/evaluations); images already there are kept (resume)",
    )
    parser.add_argument(
        "--strengths",
        default=None,
        metavar="W,W,...",
        help="one candidate per strength of the single --lora, e.g. 0,0.5,1",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="'MODEL + NAME:W'",
        help="another candidate, generated with the same prompt and seeds (repeatable)",
    )
    parser.add_argument("--feature-model", default=DEFAULT_FEATURE_MODEL, help="CLIP image encoder: Hub id or folder")
    parser.add_argument("--no-kid", action="store_true", help="report CMMD only")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples for the intervals")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def candidates_from_args(args) -> tuple:
    from studio.errors import InvalidRequestError
    from studio.evaluation.requests import Candidate, parse_candidate

    if args.strengths is None:
        main = [Candidate(args.model, tuple(args.lora))]
    else:
        if len(args.lora) != 1:
            raise InvalidRequestError(f"--strengths needs exactly one --lora (got {len(args.lora)}).")
        name = args.lora[0][0]
        try:
            weights = [float(w) for w in args.strengths.split(",") if w.strip()]
        except ValueError:
            raise InvalidRequestError(f"--strengths {args.strengths!r} must be numbers like 0,0.5,1.") from None
        main = [Candidate(args.model, ((name, w),)) for w in weights]
    return tuple(main + [parse_candidate(text) for text in args.compare])


def run(args) -> int:
    from studio.evaluation.requests import EvaluationRequest

    config = config_from_args(args)
    request = EvaluationRequest(
        candidates=candidates_from_args(args),
        data=args.data,
        prompt=args.prompt,
        count=args.count,
        seed=args.seed,
        sampling=sampling_from_args(args),
        feature_model=args.feature_model,
        kid=not args.no_kid,
        resamples=args.resamples,
    )
    request.validate()
    quiet_libraries(verbose=args.verbose)
    from studio.evaluation.report import markdown_table
    from studio.evaluation.runner import evaluate
    from studio.models.manager import ModelManager

    update, close = progress_bar()
    try:
        shard, folder = run_folder(args.out, args.device, config.outputs_dir)
        manager = ModelManager(config)
        result = evaluate(
            manager, request, outputs_dir=config.outputs_dir, on_progress=update, folder=folder, shard=shard
        )
    finally:
        close()
    if result is None:  # another process of `accelerate launch` writes the report
        return 0
    print(markdown_table(result.table()))
    print(result.folder)
    return 0


def run_folder(out: Path | None, device: str, outputs_dir: Path):
    """(this process's Shard, the run folder): `--out`, or under `accelerate launch` one new folder made by the
    first process for all; None (a new folder per run) otherwise."""
    from studio.evaluation.runner import new_run_folder
    from studio.evaluation.shard import process_shard

    shard = process_shard(device)
    if out is None and shard.count > 1:
        out = Path(shard.share(str(new_run_folder(outputs_dir)) if shard.main else None))
    return shard, out
