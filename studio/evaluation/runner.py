"""Run an evaluation: embed the data, generate every candidate with the same seeds, score, rank, report.

    result = evaluate(manager, request, outputs_dir=config.outputs_dir, on_progress=print, cancel=stop)

The data folder and the feature model are checked before any image is generated. Each finished
candidate is scored and written at once (images, grid, table, chart, results.json), so Stop keeps every
finished candidate, and the running one too if it has at least 2 images.
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from studio.errors import InvalidRequestError
from studio.evaluation import metrics
from studio.evaluation.features import data_images, embed_files, load_feature_model
from studio.evaluation.report import neighbour_grid, save_image, write_report
from studio.evaluation.requests import Candidate, EvaluationRequest
from studio.evaluation.results import CandidateResult, EvaluationResult, Neighbour, Progress, ProgressFn
from studio.evaluation.shard import Shard, drawn_as, my_runs
from studio.generation import outputs
from studio.generation.infotext import parse_infotext, read_infotext
from studio.generation.request import GenerationResult, StepInfo
from studio.generation.run import generate
from studio.models.manager import ModelManager


def new_run_folder(outputs_dir: Path, kind: str = "evaluations") -> Path:
    """outputs/<kind>/<date>_<time>[-n]/, never reusing a folder."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    for n in range(1000):
        folder = Path(outputs_dir) / kind / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not make a new run folder under {Path(outputs_dir) / kind}.")


def evaluate(
    manager: ModelManager,
    request: EvaluationRequest,
    *,
    outputs_dir: Path,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    folder: Path | None = None,
    shard: Shard = Shard(),
) -> EvaluationResult | None:
    """With `folder` (the same on every process), images already there are kept and the missing ones are split
    across `shard`'s processes; the first process scores and writes the report (the others return None)."""
    request.validate()
    cancel = cancel or threading.Event()
    report = on_progress or (lambda progress: None)
    share = 0.1  # of the progress bar for loading the feature model and embedding the data

    paths = data_images(Path(request.data).expanduser())
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        _draw_missing(manager, request, Path(folder), shard, cancel)
        if not shard.main:
            return None
    features = load_feature_model(
        request.feature_model,
        device=manager.device,
        dtype=manager.dtype,
        on_progress=lambda f, message: report(Progress(share / 2 * f, message)),
    )
    data = embed_files(
        features, paths, cancel=cancel, on_progress=lambda f, message: report(Progress(share / 2 * (1 + f), message))
    )
    floor = {
        key: metrics.floor_score(data, metrics.METRICS[key], resamples=request.resamples) for key in request.metric_keys
    }
    result = EvaluationResult(
        folder=Path(folder) if folder is not None else new_run_folder(outputs_dir),
        data_folder=Path(request.data).expanduser(),
        data_images=len(paths),
        prompt=request.prompt,
        seeds=list(range(request.seed, request.seed + request.count)),
        feature_model=request.feature_model,
        floor=floor,
        candidates=[],
        data_closest=metrics.closest_pair(data),
    )
    total = len(request.candidates)
    for index, candidate in enumerate(request.candidates):
        if cancel.is_set():
            result.interrupted = True
            break

        def on_step(info: StepInfo, index=index, candidate=candidate):
            done = (index + (info.image_index + info.step / info.total_steps) / request.count) / total
            message = (
                f"{candidate.label} ({index + 1}/{total}): image {info.image_index + 1}/{request.count}, "
                f"step {info.step}/{info.total_steps}"
            )
            report(Progress(share + (1 - share) * done, message, info.preview))

        candidate_folder = result.folder / _candidate_folder(index, candidate)
        generation = _saved_generation(candidate_folder, request) or generate(
            manager,
            request.sampling.generation_request(
                candidate, prompt=request.prompt, seed=request.seed, count=request.count
            ),
            on_step=on_step,
            on_load=lambda f, message: report(Progress(share + (1 - share) * index / total, message)),
            cancel=cancel,
        )
        if len(generation.images) >= 2:
            result.candidates.append(
                _score_candidate(candidate, generation, candidate_folder, features, data, paths, request)
            )
            result.candidates.sort(key=lambda r: r.scores["cmmd"].value)
            write_report(result)
        if generation.interrupted:
            result.interrupted = True
            break
    write_report(result)
    report(Progress(1.0, "Stopped: partial results kept." if result.interrupted else "Done."))
    return result


def _score_candidate(
    candidate: Candidate,
    generation,
    folder: Path,
    features,
    data: np.ndarray,
    paths: list[Path],
    request: EvaluationRequest,
) -> CandidateResult:
    saved = []
    for i, (image, text, seed) in enumerate(zip(generation.images, generation.infotexts, generation.seeds)):
        path = folder / _file_name(i, seed)
        saved.append(path if path.is_file() else outputs.save_png(image, text, path))  # kept: resumed or shared
    generated = features.embed(generation.images)
    scores = {
        key: metrics.score(generated, data, metrics.METRICS[key], resamples=request.resamples)
        for key in request.metric_keys
    }
    index, similarity = metrics.nearest(generated, data)
    neighbours = [
        Neighbour(path, seed, paths[i], float(sim))
        for path, seed, i, sim in zip(saved, generation.seeds, index, similarity)
    ]
    grid = save_image(neighbour_grid(candidate.label, neighbours), folder / "nearest.png")
    copies = int((similarity >= metrics.MEMORIZED_SIMILARITY).sum())
    partial = len(saved) < request.count
    return CandidateResult(candidate, scores, neighbours, grid, copies, partial)


def _slug(candidate: Candidate) -> str:
    """A file-name-safe version of the label: model paths and hub ids contain slashes."""
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in candidate.label.replace(" + ", "+"))
    return text.strip("._")[:60] or "candidate"


def _candidate_folder(index: int, candidate: Candidate) -> str:
    return f"{index + 1:02d}-{_slug(candidate)}"


def _file_name(i: int, seed: int) -> str:
    return f"{i:05d}-{seed}.png"


def _draw_missing(manager: ModelManager, request: EvaluationRequest, folder: Path, shard: Shard, cancel) -> None:
    """Draw this process's share of the images missing in `folder`; returns once every process is done."""
    plan = [
        (index, candidate, i)
        for index, candidate in enumerate(request.candidates)
        for i in range(request.count)
        if not _kept(folder / _candidate_folder(index, candidate) / _file_name(i, request.seed + i), request, i)
    ]
    shard.wait_for_everyone()  # every process has seen the same folder before any of them writes to it
    for run in my_runs(plan, shard, group=lambda item: item[0], position=lambda item: item[2]):
        if cancel.is_set():
            break
        index, candidate, first = run[0]
        generation = generate(
            manager,
            request.sampling.generation_request(
                candidate, prompt=request.prompt, seed=request.seed + first, count=len(run)
            ),
            cancel=cancel,
        )
        for offset, (image, text) in enumerate(zip(generation.images, generation.infotexts)):
            i = first + offset
            path = folder / _candidate_folder(index, candidate) / _file_name(i, request.seed + i)
            path.parent.mkdir(parents=True, exist_ok=True)
            outputs.save_png(image, text, path)
    shard.wait_for_everyone()


def _kept(path: Path, request: EvaluationRequest, i: int) -> bool:
    if not path.is_file():
        return False
    if not drawn_as(path, request.prompt, request.seed + i):
        raise InvalidRequestError(
            f"{path} was drawn from another prompt or seed than this evaluation; use the same prompt, count and "
            "seed, or a new folder."
        )
    return True


def _saved_generation(folder: Path, request: EvaluationRequest) -> GenerationResult | None:
    """A candidate's images as drawn earlier (resumed) or by other processes, or None if some are missing."""
    seeds = [request.seed + i for i in range(request.count)]
    files = [folder / _file_name(i, seed) for i, seed in enumerate(seeds)]
    if not all(path.is_file() for path in files):
        return None
    images = []
    for path in files:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    texts = [read_infotext(path) or "" for path in files]
    return GenerationResult(images, seeds, texts, parse_infotext(texts[0]).get("Model", ""), 0.0)
