"""`python -m studio train`: train a LoRA on a folder of images, headless, with a text progress bar.

Runs in this process, so `accelerate launch -m studio train ...` trains on several GPUs. The first
Ctrl+C stops cleanly at the next step (a checkpoint is saved; `--resume` continues); a second one aborts.
Prints the adapter folder on stdout when done; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from studio.cli.common import add_config_options, config_from_args, quiet_libraries
from studio.training.presets import PRESETS
from studio.training.request import LR_SCHEDULERS, MIXED_PRECISIONS, OPTIMIZERS

# Options that override the preset; None means "take the preset's (or the request's) default".
OVERRIDES = {
    "steps": int,
    "epochs": int,
    "rank": int,
    "alpha": float,
    "lr": float,
    "resolution": int,
    "batch": int,
    "grad_accum": int,
    "warmup": int,
    "seed": int,
    "min_snr_gamma": float,
    "noise_offset": float,
    "validation_every": int,
    "sample_size": int,
    "sample_steps": int,
    "checkpoint_every": int,
}
HELP = {
    "steps": "optimizer steps [500]",
    "epochs": "passes over the data set (overrides --steps)",
    "rank": "LoRA rank [16]",
    "alpha": "LoRA alpha; the strength scale is alpha/rank [16]",
    "lr": "learning rate [1e-4]",
    "resolution": "training size in pixels [512]",
    "batch": "images per step on each GPU [1]",
    "grad_accum": "micro-batches per optimizer step [1]",
    "warmup": "learning-rate warm-up steps [0]",
    "seed": "seed of LoRA init, data order and noise [42]",
    "min_snr_gamma": "Min-SNR loss weighting, e.g. 5 [off]",
    "noise_offset": "noise offset for very dark/bright images, e.g. 0.05 [0]",
    "validation_every": "draw a sample image every N steps [only at the end]",
    "sample_size": "side of the sample images in pixels [half the resolution]",
    "sample_steps": "sampling steps of the sample images [12]",
    "checkpoint_every": "save a resumable checkpoint every N steps [100]; always on Stop",
}
FIELD_NAMES = {
    "lr": "learning_rate",
    "batch": "batch_size",
    "grad_accum": "gradient_accumulation",
    "warmup": "warmup_steps",
    "sample_size": "validation_size",
    "sample_steps": "validation_steps",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a LoRA on a folder of images")
    parser.add_argument("--data", type=Path, required=True, help="folder of jpg/png/webp images (subfolders too)")
    parser.add_argument("--model", required=True, help="base model: demo-sd15, a models-folder entry, a path, a Hub id")
    parser.add_argument("--name", required=True, help="adapter name; the result lands in loras/NAME/")
    parser.add_argument("--caption", default=None, help="caption for images without metadata.jsonl or .txt")
    parser.add_argument("--caption-column", default="text", help="caption column of metadata.jsonl")
    parser.add_argument("--trigger", default=None, help="trigger word prepended to every caption")
    parser.add_argument(
        "--preset",
        default="auto",
        help=f"auto (from the GPU; the CPU preset without one), none, or one of: {', '.join(PRESETS)}",
    )
    settings = parser.add_argument_group(
        "training settings", "an explicit value overrides the preset's; defaults in brackets apply with --preset none"
    )
    for option, cast in OVERRIDES.items():
        settings.add_argument("--" + option.replace("_", "-"), type=cast, default=None, help=HELP[option])
    settings.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=None, help="[constant_with_warmup]")
    settings.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISIONS,
        default=None,
        help="[auto: fp16/bf16 on GPUs; bf16 on CPUs with native bf16, else fp32]",
    )
    settings.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=None, help="[auto: 8-bit AdamW where bitsandbytes works, else AdamW]"
    )
    settings.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None)
    settings.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    settings.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flip")
    settings.add_argument("--buckets", action=argparse.BooleanOptionalAction, default=None, help="aspect-ratio buckets")
    settings.add_argument(
        "--validation-prompt", default=None, help="prompt of the sample images (default: first caption)"
    )
    settings.add_argument(
        "--samples", action=argparse.BooleanOptionalAction, default=None, help="draw sample images [on]"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run NAME from its last checkpoint")
    parser.add_argument("--check", action="store_true", help="only check the data set and show the VRAM estimate")
    add_config_options(parser)
    parser.set_defaults(handler=run)


def build_request(args, config):
    """The request, its data set report and the note shown with it (preset, VRAM estimate).

    Everything that needs no torch is checked first (the name, the numbers, the preset name, the model, the data
    set, a taken adapter name), so a typo is reported in moments; only then may the auto preset probe the GPU."""
    from studio.models.sources import resolve_model
    from studio.training.presets import detected_vram_bytes, estimate_vram, get_preset, pick_preset
    from studio.training.request import TrainingRequest, check_dataset, check_name_free

    fields = dict(
        data=args.data,
        model=args.model,
        name=args.name,
        caption=args.caption,
        caption_column=args.caption_column,
        trigger=args.trigger,
        resume=args.resume,
    )
    explicit = _explicit_settings(args)
    draft = TrainingRequest(**fields, **explicit)
    draft.validate()  # the name, the folder and the numbers the user typed (preset values are valid)
    preset = get_preset(args.preset) if args.preset not in ("auto", "none") else None
    kind = resolve_model(args.model, config).kind
    report = check_dataset(draft)
    if not args.check:
        check_name_free(draft, config.loras_dir)
    if args.preset == "auto" and kind is not None:
        preset = pick_preset(kind, detected_vram_bytes(config.device))  # imports torch to ask CUDA
    request = TrainingRequest(**fields, **{**(preset.settings if preset else {}), **explicit})
    request.validate()
    note = f"Preset {preset.name}. " if preset else ""
    kind = preset.kind if preset else kind
    if kind is not None:
        note += estimate_vram(request, kind).summary() + " (full-size model, on a GPU)."
    return request, report, note


def _explicit_settings(args) -> dict:
    """Request fields set on the command line (they override the preset's)."""
    settings = {}
    for option in OVERRIDES:
        if getattr(args, option) is not None:
            settings[FIELD_NAMES.get(option, option)] = getattr(args, option)
    for field, option in (
        ("lr_scheduler", "lr_scheduler"),
        ("mixed_precision", "mixed_precision"),
        ("optimizer", "optimizer"),
        ("train_text_encoder", "train_text_encoder"),
        ("gradient_checkpointing", "gradient_checkpointing"),
        ("random_flip", "flip"),
        ("buckets", "buckets"),
        ("validation_prompt", "validation_prompt"),
        ("samples", "samples"),
    ):
        if getattr(args, option) is not None:
            settings[field] = getattr(args, option)
    return settings


def run(args) -> int:
    config = config_from_args(args)
    request, report, note = build_request(args, config)
    if args.check:
        print(report.summary(max_skipped=None) + "\n" + note, file=sys.stderr)
        return 0
    quiet_libraries(verbose=args.verbose)
    from tqdm import tqdm

    from studio.training.trainer import train

    stop = {"requested": False}

    def on_interrupt(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nStopping at the next step (Ctrl+C again to abort)...", file=sys.stderr)

    signal.signal(signal.SIGINT, on_interrupt)
    bar = None

    def on_event(event):
        nonlocal bar
        if event.kind == "step":
            if bar is None:
                bar = tqdm(
                    total=event.total_steps, initial=event.step - 1, desc="training", unit="step", file=sys.stderr
                )
            bar.update(event.step - bar.n)
            bar.set_postfix_str(f"loss {event.loss:.4f}, lr {event.lr:.2e}")
        elif event.kind == "dataset":  # the data set is fine: now the settings are worth showing
            print(event.message + "\n" + note, file=sys.stderr)
        elif event.kind == "phases":  # where the time went, after the last step
            (bar.write if bar is not None else print)("Time per phase:\n" + event.message, file=sys.stderr)
        elif event.kind in ("status", "sample", "checkpoint", "stopped"):
            text = f"{event.kind} at step {event.step}: {event.path}" if event.path else event.message
            if bar is not None:
                bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr)

    folder = train(request, config, on_event=on_event, should_stop=lambda: stop["requested"])
    if bar is not None:
        bar.close()
    if folder is None and stop["requested"]:
        print("Stopped; resume with the same command plus --resume.", file=sys.stderr)
        return 130
    if folder is not None:  # None on the other processes of a multi-GPU run
        print(folder)
    return 0
