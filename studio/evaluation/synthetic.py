"""Export a synthetic data set: N images for each of several prompts, fixed seeds, Hugging Face imagefolder layout.

    folder/00001-<seed>.png ...        PNGs with A1111 infotext (any image can be redrawn from it)
    folder/metadata.jsonl              {"file_name", "text", "seed", "model", "loras": [{"name", "weight"}], ...}

It loads with `datasets.load_dataset("imagefolder", data_dir=folder)` (captions in the `text` column) and
is a training folder for the studio's own trainer as it is. metadata.jsonl is rewritten (atomically)
after every prompt, so a stopped export is still a complete, loadable data set of what was drawn.

With `init_images` (a folder of real pictures, e.g. remote-sensing tiles) each picture is redrawn `count` times
by image-to-image instead: variations that keep its layout, captioned with the picture's own caption
(read as training reads it: metadata.jsonl, then .txt), named `<number>-<picture>-<seed>.png`, and the row
also names the source picture and the strength. (Not yet split across
processes nor resumable.)

Every image has a fixed place: image j of prompt i is number i * count + j + 1 with seed seed + i * count + j.
So an export can resume (`ExportRequest.resume`: images already in the folder are kept, after checking that
their infotext has the planned prompt and seed), and can be split across processes (`Shard`, from
`accelerate launch`): each draws its share of the missing images, and the first writes metadata.jsonl once all
are done. The folder is the same, byte for byte, however many processes drew it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from studio.atomic import write_bytes
from studio.errors import InvalidRequestError
from studio.evaluation.requests import ExportRequest
from studio.evaluation.results import ExportResult, Progress, ProgressFn
from studio.evaluation.shard import Shard, drawn_as, my_runs
from studio.generation import outputs
from studio.generation.infotext import parse_infotext, read_infotext
from studio.generation.request import StepInfo
from studio.generation.run import generate
from studio.models.manager import ModelManager


@dataclasses.dataclass(frozen=True)
class Planned:
    number: int
    prompt_index: int
    prompt: str
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.number:05d}-{self.seed}.png"


def plan_images(request: ExportRequest) -> list[Planned]:
    """Every image of the export, in order: its number, prompt and seed."""
    return [
        Planned(index * request.count + j + 1, index, prompt, request.seed + index * request.count + j)
        for index, prompt in enumerate(request.prompts)
        for j in range(request.count)
    ]


def existing_models(folder: Path, plan: list[Planned]) -> dict[str, str]:
    """{file name: model name} of the planned images already in `folder` (a resumed export keeps them).

    An image whose infotext has another prompt or seed belongs to another export: refused, nothing is overwritten.
    """
    found = {}
    for image in plan:
        path = folder / image.file_name
        if not path.is_file():
            continue
        if not drawn_as(path, image.prompt, image.seed):
            raise InvalidRequestError(
                f"{path} was drawn from another prompt or seed than this export plans; resume with the same prompts, "
                "count and seed, or export to a new folder."
            )
        found[image.file_name] = parse_infotext(read_infotext(path) or "").get("Model", "")
    return found


def export_dataset(
    manager: ModelManager,
    request: ExportRequest,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    shard: Shard = Shard(),
) -> ExportResult:
    request.validate()
    cancel = cancel or threading.Event()
    report = on_progress or (lambda progress: None)
    folder = Path(request.folder).expanduser()
    if request.init_images is not None:
        if shard.count > 1:
            raise InvalidRequestError(
                "Variations of --init-images run in one process for now; start export-dataset without accelerate."
            )
        return _export_variations(manager, request, folder, report, cancel)
    folder.mkdir(parents=True, exist_ok=True)
    result = ExportResult(folder, folder / "metadata.jsonl", [])
    plan = plan_images(request)
    models = existing_models(folder, plan)
    todo = [image for image in plan if image.file_name not in models]
    shard.wait_for_everyone()  # every process has seen the same folder before any of them writes to it
    runs = my_runs(todo, shard, group=lambda i: i.prompt_index, position=lambda i: i.number)
    total = max(1, sum(len(run) for run in runs))
    done = 0
    for run in runs:
        if cancel.is_set():
            result.interrupted = True
            break
        first = run[0]

        def on_step(info: StepInfo, first=first, done=done):
            fraction = (done + info.image_index + info.step / info.total_steps) / total
            message = (
                f"Prompt {first.prompt_index + 1}/{len(request.prompts)}, "
                f"image {first.number - first.prompt_index * request.count + info.image_index}/{request.count}, "
                f"step {info.step}"
            )
            report(Progress(fraction, message, info.preview))

        sampling = request.sampling
        generation = generate(
            manager,
            sampling.generation_request(request.candidate, prompt=first.prompt, seed=first.seed, count=len(run)),
            on_step=on_step,
            on_load=lambda f, message, done=done: report(Progress(done / total, message)),
            cancel=cancel,
        )
        for image, infotext, planned in zip(generation.images, generation.infotexts, run):
            result.images.append(outputs.save_png(image, infotext, folder / planned.file_name))
            models[planned.file_name] = generation.model_name
        done += len(run)
        if shard.main:
            _write_metadata(result.metadata, plan, models, request)
        if generation.interrupted:
            result.interrupted = True
            break
    shard.wait_for_everyone()
    if shard.main:  # the others' images are on disk now: one metadata.jsonl for all of them
        models.update(existing_models(folder, [image for image in plan if image.file_name not in models]))
        _write_metadata(result.metadata, plan, models, request)
    kept = f"{len(result.images)} images drawn" + (f", {len(plan) - len(todo)} kept" if len(todo) < len(plan) else "")
    report(Progress(1.0, f"Stopped: {kept}." if result.interrupted else f"Done: {kept}."))
    return result


def _write_metadata(path: Path, plan: list[Planned], models: dict[str, str], request: ExportRequest) -> None:
    rows = [_row(i.file_name, i.prompt, i.seed, models[i.file_name], request) for i in plan if i.file_name in models]
    write_bytes(path, "".join(json.dumps(row) + "\n" for row in rows).encode())


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
