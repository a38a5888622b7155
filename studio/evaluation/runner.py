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

from studio.evaluation import metrics
from studio.evaluation.features import data_images, embed_files, load_feature_model
from studio.evaluation.report import neighbour_grid, save_image, write_report
from studio.evaluation.requests import Candidate, EvaluationRequest
from studio.evaluation.results import CandidateResult, EvaluationResult, Neighbour, Progress, ProgressFn
from studio.generation import outputs
from studio.generation.request import StepInfo
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
) -> EvaluationResult:
    request.validate()
    cancel = cancel or threading.Event()
    report = on_progress or (lambda progress: None)
    share = 0.1  # of the progress bar for loading the feature model and embedding the data

    paths = data_images(Path(request.data).expanduser())
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
        folder=new_run_folder(outputs_dir),
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

        generation = generate(
            manager,
            request.sampling.generation_request(
                candidate, prompt=request.prompt, seed=request.seed, count=request.count
            ),
            on_step=on_step,
            on_load=lambda f, message: report(Progress(share + (1 - share) * index / total, message)),
            cancel=cancel,
        )
        if len(generation.images) >= 2:
            folder = result.folder / f"{index + 1:02d}-{_slug(candidate)}"
            result.candidates.append(_score_candidate(candidate, generation, folder, features, data, paths, request))
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
    saved = [
        outputs.save_png(image, text, folder / f"{i:05d}-{seed}.png")
        for i, (image, text, seed) in enumerate(zip(generation.images, generation.infotexts, generation.seeds))
    ]
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
