"""Export a synthetic data set: N images for each of several prompts, fixed seeds, Hugging Face imagefolder layout.

    folder/00001-<seed>.png ...        PNGs with A1111 infotext (any image can be redrawn from it)
    folder/metadata.jsonl              {"file_name", "text", "seed", "model", "loras": [{"name", "weight"}], ...}

It loads with `datasets.load_dataset("imagefolder", data_dir=folder)` (captions in the `text` column) and
is a training folder for the studio's own trainer as it is. metadata.jsonl is rewritten (atomically)
after every prompt, so a stopped export is still a complete, loadable data set of what was drawn.

With `init_images` (a folder of real pictures, e.g. remote-sensing tiles) each picture is redrawn `count` times
by image-to-image instead: variations that keep its layout, captioned with the picture's own caption
(read as training reads it: metadata.jsonl, then .txt), named `<number>-<picture>-<seed>.png`, and the row
also names the source picture and the strength.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from studio.atomic import write_bytes
from studio.evaluation.requests import ExportRequest
from studio.evaluation.results import ExportResult, Progress, ProgressFn
from studio.generation import outputs
from studio.generation.request import StepInfo
from studio.generation.run import generate
from studio.models.manager import ModelManager


def export_dataset(
    manager: ModelManager,
    request: ExportRequest,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> ExportResult:
    request.validate()
    cancel = cancel or threading.Event()
    report = on_progress or (lambda progress: None)
    folder = Path(request.folder).expanduser()
    if request.init_images is not None:
        return _export_variations(manager, request, folder, report, cancel)
    folder.mkdir(parents=True, exist_ok=True)
    result = ExportResult(folder, folder / "metadata.jsonl", [])
    rows: list[dict] = []
    total = len(request.prompts)
    for index, prompt in enumerate(request.prompts):
        if cancel.is_set():
            result.interrupted = True
            break

        def on_step(info: StepInfo, index=index):
            done = (index + (info.image_index + info.step / info.total_steps) / request.count) / total
            message = f"Prompt {index + 1}/{total}, image {info.image_index + 1}/{request.count}, step {info.step}"
            report(Progress(done, message, info.preview))

        seed = request.seed + index * request.count
        generation = generate(
            manager,
            request.sampling.generation_request(request.candidate, prompt=prompt, seed=seed, count=request.count),
            on_step=on_step,
            on_load=lambda f, message: report(Progress(index / total, message)),
            cancel=cancel,
        )
        for image, infotext, image_seed in zip(generation.images, generation.infotexts, generation.seeds):
            path = outputs.save_png(image, infotext, folder / f"{len(rows) + 1:05d}-{image_seed}.png")
            result.images.append(path)
            rows.append(_row(path.name, prompt, image_seed, generation.model_name, request))
        write_bytes(result.metadata, "".join(json.dumps(row) + "\n" for row in rows).encode())
        if generation.interrupted:
            result.interrupted = True
            break
    report(Progress(1.0, f"Stopped: {len(rows)} images kept." if result.interrupted else f"Done: {len(rows)} images."))
    return result


def _row(file_name: str, prompt: str, seed: int, model_name: str, request: ExportRequest) -> dict:
    sampling = request.sampling
    return {
        "file_name": file_name,
        "text": prompt,
        "seed": seed,
        "model": model_name,
        "loras": [{"name": name, "weight": weight} for name, weight in request.candidate.loras],
        "negative_prompt": sampling.negative_prompt,
        "steps": sampling.steps,
        "cfg": sampling.cfg,
        "sampler": sampling.scheduler,
    }


def _export_variations(manager, request: ExportRequest, folder: Path, report, cancel) -> ExportResult:
    from studio.generation.images import load_image

    scan = request.source_pictures()  # DatasetError (one line) when nothing is usable, before any model loads
    folder.mkdir(parents=True, exist_ok=True)
    result = ExportResult(folder, folder / "metadata.jsonl", [])
    rows: list[dict] = []
    total = len(scan.samples)
    for index, sample in enumerate(scan.samples):
        if cancel.is_set():
            result.interrupted = True
            break

        def on_step(info: StepInfo, index=index):
            done = (index + (info.image_index + info.step / info.total_steps) / request.count) / total
            message = f"Picture {index + 1}/{total}, variation {info.image_index + 1}/{request.count}"
            report(Progress(done, message, info.preview))

        generation_request = request.sampling.generation_request(
            request.candidate, prompt=sample.caption, seed=request.seed + index * request.count, count=request.count
        )
        generation = generate(
            manager,
            dataclasses.replace(generation_request, init_image=load_image(sample.path), strength=request.strength),
            on_step=on_step,
            on_load=lambda f, message: report(Progress(index / total, message)),
            cancel=cancel,
        )
        source = sample.path.relative_to(scan.folder).as_posix()
        for image, infotext, seed in zip(generation.images, generation.infotexts, generation.seeds):
            path = outputs.save_png(image, infotext, folder / f"{len(rows) + 1:05d}-{sample.path.stem}-{seed}.png")
            result.images.append(path)
            row = _row(path.name, sample.caption, seed, generation.model_name, request)
            rows.append({**row, "init_image": source, "strength": request.strength})
        write_bytes(result.metadata, "".join(json.dumps(row) + "\n" for row in rows).encode())
        if generation.interrupted:
            result.interrupted = True
            break
    report(Progress(1.0, f"Stopped: {len(rows)} images kept." if result.interrupted else f"Done: {len(rows)} images."))
    return result
