"""Export a synthetic data set: N images for each of several prompts, fixed seeds, Hugging Face imagefolder layout.

    folder/00001-<seed>.png ...        PNGs with A1111 infotext (any image can be redrawn from it)
    folder/metadata.jsonl              {"file_name", "text", "seed", "model", "loras": [{"name", "weight"}], ...}

It loads with `datasets.load_dataset("imagefolder", data_dir=folder)` (captions in the `text` column) and
is a training folder for the studio's own trainer as it is. metadata.jsonl is rewritten (atomically)
after every prompt, so a stopped export is still a complete, loadable data set of what was drawn.
"""

from __future__ import annotations

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
