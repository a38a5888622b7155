"""`python -m studio generate`: write PNGs with A1111 infotext and print one saved path per line.

Text-to-image by default; `--init-image PATH` redraws a picture (image-to-image, `--strength`), `--mask PATH`
repaints part of it (inpainting), and `--init-images DIR` redraws every picture of a folder, each output
named after its input (`<name>-<seed>.png`). Notes (a mask stretched to fit, a file skipped) go to stderr.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path

from studio.cli.common import (
    add_config_options,
    add_sampling_options,
    config_from_args,
    quiet_libraries,
    sampling_request,
)
from studio.generation import images
from studio.generation.request import GenerationRequest
from studio.generation.upscalers import check_upscaler
from studio.models.hashes import CACHE_NAME, HashCache, weights_file


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images from a prompt (or redraw pictures)")
    parser.add_argument(
        "--model", required=True, help="demo-sd15, demo-sdxl, a models-folder entry, a path or a Hub id"
    )
    add_sampling_options(parser)
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--count", type=int, default=1, help="calls in a row (batch count)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the outputs folder)")
    group = parser.add_argument_group("image-to-image and inpainting (A1111 names)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--init-image", type=Path, default=None, help="a picture to redraw")
    source.add_argument("--init-images", type=Path, default=None, help="redraw every picture of this folder")
    group.add_argument("--strength", type=float, default=0.75, help="denoising strength, above 0 up to 1")
    group.add_argument("--resize-mode", default="just resize", choices=images.RESIZE_MODES)
    group.add_argument("--mask", type=Path, default=None, help="inpaint: white = repaint, black = keep")
    group.add_argument("--mask-blur", type=int, default=4)
    group.add_argument("--inpaint-not-masked", action="store_true", help="repaint the black part instead")
    group.add_argument("--masked-content", default="original", choices=images.MASKED_CONTENT)
    group.add_argument("--only-masked", action="store_true", help="work at full size on a box around the mask")
    group.add_argument("--only-masked-padding", type=int, default=32, help="pixels around the mask's box")
    _add_hires_options(parser)
    add_config_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from studio.errors import InvalidRequestError

    if args.mask is not None and args.init_image is None and args.init_images is None:
        raise InvalidRequestError("--mask needs a picture to repaint: add --init-image PATH (or --init-images DIR).")
    config = config_from_args(args)
    request = _request(args)
    inputs = images.folder_images(args.init_images) if args.init_images is not None else []
    # Every picture is opened now, before the heavy imports: a bad file is named in a moment.
    jobs, skipped = [], []
    for path in inputs:
        try:
            jobs.append((path, _with_image(request, images.load_image(path))))
        except InvalidRequestError as error:
            skipped.append(f"{path.name}: {error}")
        except OSError as error:  # UnreadableImageError names the file itself
            skipped.append(str(error))
    if args.init_images is None:
        request.validate()
        jobs = [(None, request)]
    elif not jobs:
        raise InvalidRequestError(f"No picture in {args.init_images} could be used ({skipped[0]}).")
    source = check_before_loading(request, config)  # a mistyped model, LoRA or embedding is named before torch loads
    # A1111's "Model hash" reads the whole checkpoint once (then it is cached): start it while torch imports.
    hashes = HashCache(config.models_dir / CACHE_NAME)
    hashes.start(weights_file(source.origin, source.location))
    if request.hires:
        check_upscaler(request.hires_upscaler, config)
    for line in skipped:
        print(f"note: skipped {line}", file=sys.stderr)
    quiet_libraries(verbose=args.verbose)
    from tqdm import tqdm

    from studio.generation.run import generate
    from studio.models.manager import ModelManager

    manager = ModelManager(config, hash_cache=hashes)
    per_call = _total_steps(request) if jobs[0][1].mode == "txt2img" else int(args.steps * args.strength) * args.count
    bar = tqdm(total=per_call * len(jobs), desc="generating", unit="step", file=sys.stderr, leave=False)
    for source, job in jobs:
        result = generate(manager, job, on_step=lambda info: bar.update(info.stage != "first pass"))
        for note in result.notes:
            bar.write(f"note: {source.name + ': ' if source else ''}{note}", file=sys.stderr)
        for path in _save(result, config, args.out, source, job.mode):
            bar.write(str(path), file=sys.stdout)
    bar.close()
    return 0


def _request(args) -> GenerationRequest:
    request = sampling_request(
        args,
        args.model,
        batch_size=args.batch,
        batch_count=args.count,
        strength=args.strength,
        resize_mode=args.resize_mode,
        mask=images.load_image(args.mask, what="mask") if args.mask is not None else None,
        mask_blur=args.mask_blur,
        inpaint_not_masked=args.inpaint_not_masked,
        masked_content=args.masked_content,
        inpaint_full_res=args.only_masked,
        inpaint_full_res_padding=args.only_masked_padding,
        **_hires_fields(args),
    )
    if args.init_image is not None:
        request = _with_image(request, images.load_image(args.init_image))
    return request


def _with_image(request: GenerationRequest, image) -> GenerationRequest:
    request = dataclasses.replace(request, init_image=image)
    request.validate()
    return request


def _save(result, config, out: Path | None, source: Path | None, mode: str) -> list[Path]:
    from studio.generation import outputs

    if source is not None:  # one picture of a folder: named after it
        folder = out if out is not None else config.outputs_dir / mode / datetime.date.today().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        return [
            outputs.save_png(image, text, folder / f"{source.stem}-{seed}.png")
            for image, text, seed in zip(result.images, result.infotexts, result.seeds)
        ]
    if out is None:
        return outputs.save_images(result.images, result.infotexts, result.seeds, config.outputs_dir, kind=mode)
    out.mkdir(parents=True, exist_ok=True)
    start = outputs._next_number(out)
    return [
        outputs.save_png(image, text, out / f"{start + i:05d}-{seed}.png")
        for i, (image, text, seed) in enumerate(zip(result.images, result.infotexts, result.seeds))
    ]


# --- hires fix -------------------------------------------------------------------------------------------------


def _add_hires_options(parser) -> None:
    group = parser.add_argument_group("hires fix (A1111): generate, upscale, then image-to-image at the big size")
    group.add_argument("--hires", type=float, default=1.0, metavar="SCALE", help="upscale by SCALE (1 = off)")
    group.add_argument("--hires-width", type=int, default=0, help="resize width to (0: from the scale)")
    group.add_argument("--hires-height", type=int, default=0, help="resize height to (0: from the scale)")
    group.add_argument("--hires-steps", type=int, default=0, help="second-pass steps (0: same as --steps)")
    group.add_argument("--hires-denoise", type=float, default=0.7, help="second-pass denoising strength")
    group.add_argument(
        "--upscaler", default="Latent", help="Latent, Lanczos, ... or a file in models/upscalers/ (see 'upscalers')"
    )


def _hires_fields(args) -> dict:
    return dict(
        hires_scale=args.hires,
        hires_width=args.hires_width,
        hires_height=args.hires_height,
        hires_steps=args.hires_steps,
        hires_denoise=args.hires_denoise,
        hires_upscaler=args.upscaler,
    )


def _total_steps(request: GenerationRequest) -> int:
    steps = request.steps
    if request.hires:
        from studio.generation.hires import pipeline_steps

        steps += pipeline_steps(request.hires_steps or request.steps, request.hires_denoise)[1]
    return steps * request.batch_count


def check_before_loading(request: GenerationRequest, config):
    """Everything a generation needs that can be checked from names and file headers, in about a second: the model
    (a Hub id must be cached or answer), the LoRAs (`--lora` and prompt tags) and the embeddings the prompts name."""
    from studio.generation.embeddings import usable_embeddings
    from studio.generation.infotext import split_lora_tags
    from studio.lora.kind_blends import usable_lora
    from studio.models.sources import resolve_model

    source = resolve_model(request.model, config)
    prompt, tag_loras = split_lora_tags(request.prompt)
    for name, _weight in [*request.loras, *tag_loras]:
        usable_lora(config.loras_dir, name, source.kind)
    usable_embeddings(config, source.kind, prompt, request.negative_prompt)
    if source.origin == "hub":
        from studio.hub.download import check_hub_repo

        check_hub_repo(
            source.location, what="Hub model", instead="put the model in the models folder", filename="model_index.json"
        )
    return source
