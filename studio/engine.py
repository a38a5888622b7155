"""The engine the front ends talk to: one object that holds the config and the model manager.

The Gradio UI must not import torch or diffusers, so everything it needs goes through `Studio`
methods that take request dataclasses and return plain data and PIL images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from studio.config import StudioConfig
from studio.generation import infotext, outputs
from studio.generation.request import GenerationRequest, GenerationResult, StepInfo
from studio.generation.run import generate
from studio.jobs import Job
from studio.models.manager import ModelManager
from studio.models.sources import ModelSource, list_models


@dataclasses.dataclass(frozen=True)
class LoadProgress:
    fraction: float
    message: str


@dataclasses.dataclass(frozen=True)
class Finished:
    result: GenerationResult
    paths: list[Path]


class Studio:
    def __init__(self, config: StudioConfig, manager: ModelManager | None = None):
        self.config = config
        self.manager = manager or ModelManager(config)
        self._current_job: Job | None = None

    def models(self) -> list[ModelSource]:
        return list_models(self.config)

    def generate_stream(self, request: GenerationRequest) -> Iterator[StepInfo | LoadProgress | Finished]:
        """Generate in a background thread, yielding progress, then `Finished` with the saved paths."""
        request.validate()  # fail fast, before a thread or a model is involved

        def work(job: Job) -> Finished:
            result = generate(
                self.manager,
                request,
                on_step=job.emit,
                on_load=lambda fraction, message: job.emit(LoadProgress(fraction, message)),
                cancel=job.cancel,
            )
            paths = outputs.save_images(result.images, result.infotexts, result.seeds, self.config.outputs_dir)
            return Finished(result, paths)

        job = Job(work, name="generate")
        self._current_job = job
        job.start()
        try:
            yield from job.events()
            yield job.result
        finally:
            # A closed page or a cancelled API call closes this generator: stop the work too, so it does not
            # hold the GPU for a result nobody will see. Harmless when the work has already finished.
            job.cancel.set()

    def stop(self) -> None:
        """Stop the running generation within one sampling step."""
        if self._current_job is not None:
            self._current_job.cancel.set()

    def train_stream(self, request) -> Iterator:
        """Train a LoRA in a child process (GPU released first); yields `TrainingEvent`s, last "done" or "stopped"."""
        from studio.training.session import train_in_background

        job = train_in_background(self.manager, self.config, request)
        self._training_job = job
        yield from job.events(latest_only=False)

    def stop_training(self) -> None:
        """Stop the training run at its next step; it saves a checkpoint that Resume continues from."""
        job = getattr(self, "_training_job", None)
        if job is not None:
            job.cancel.set()

    def history(self, limit: int = 60) -> list[Path]:
        return outputs.history(self.config.outputs_dir, limit=limit)

    def evaluate_stream(self, request) -> Iterator:
        """Score candidates against a data folder in a background thread: `Progress`, then the EvaluationResult."""
        from studio.evaluation.runner import evaluate

        request.validate()  # fail fast, before a thread or a model is involved
        kwargs = dict(outputs_dir=self.config.outputs_dir)
        return self._stream(
            "evaluate", lambda job: evaluate(self.manager, request, **kwargs, on_progress=job.emit, cancel=job.cancel)
        )

    def export_dataset_stream(self, request) -> Iterator:
        """Draw a synthetic imagefolder data set in a background thread: `Progress`, then the ExportResult."""
        from studio.evaluation.synthetic import export_dataset

        request.validate()
        return self._stream(
            "export", lambda job: export_dataset(self.manager, request, on_progress=job.emit, cancel=job.cancel)
        )

    def _stream(self, name: str, work) -> Iterator:
        job = Job(work, name=name)
        self._current_job = job  # the Stop button stops it
        job.start()
        yield from job.events()
        yield job.result

    def shareable_adapters(self) -> list[str]:
        """Adapter folders in loras/ that Studio wrote (with adapter.json), for the Share tab's picker."""
        from studio.hub.adapters import shareable_adapters

        return shareable_adapters(self.config.loras_dir)

    def push_stream(self, request) -> Iterator:
        """Push an adapter to the Hub in a background thread: `LoadProgress` events, then the repo URL (str)."""
        from studio.hub.adapters import push_adapter

        request.validate()
        job = Job(
            lambda job: push_adapter(request, on_progress=lambda f, m: job.emit(LoadProgress(f, m)), cancel=job.cancel),
            name="push",
        )
        self._push_job = job  # not `_current_job`: Generate's Stop must not cancel an upload
        job.start()
        yield from job.events()
        yield job.result

    def model_card_preview(self, request) -> str:
        """The README.md model card a push of `request` would upload; nothing is sent."""
        from studio.hub.adapters import model_card_text

        return model_card_text(request)

    def stop_push(self) -> None:
        """Stop an upload between chunks; the Hub repo keeps its previous commit."""
        job = getattr(self, "_push_job", None)
        if job is not None:
            job.cancel.set()

    # --- LoRA library, blending, comparison grids (studio.lora, studio.lora.compare) ---

    def loras(self) -> list:
        """Every adapter in loras/ with its kind, format, rank, hash and problem (read from headers only)."""
        from studio.lora.library import scan_loras

        return scan_loras(self.config.loras_dir)

    def model_kind(self, model: str):
        """SD1.5 or SDXL for a model picker entry (without loading it); None if unknown."""
        from studio.models.sources import resolve_model

        return resolve_model(model, self.config).kind

    def apply_blend(self, request) -> list[tuple[str, float, str]]:
        """Put a `BlendRequest` on its model now: loads new adapters once, then only changes weights."""
        from studio.lora.blend import apply_request

        return apply_request(self.manager, request)

    def save_blend(self, request) -> Path:
        """Merge a `SaveBlendRequest` into a new adapter folder in loras/."""
        from studio.lora.merge import save_blend

        return save_blend(request, loras_dir=self.config.loras_dir)

    def compare_stream(self, request) -> Iterator:
        """Render a `CompareRequest` grid in a background thread: `LoadProgress` events, then the CompareResult."""
        from studio.lora.compare import compare

        request.validate()
        return self._stream(
            "compare",
            lambda job: compare(
                self.manager,
                request,
                outputs_dir=self.config.outputs_dir,
                cancel=job.cancel,
                on_progress=lambda fraction, message: job.emit(LoadProgress(fraction, message)),
            ),
        )

    def import_lora_stream(self, repo_id: str, token: str | None = None) -> Iterator:
        """Download a LoRA repo from the Hub into loras/: `LoadProgress` events, then the folder (Path)."""
        from studio.hub.adapters import download_adapter

        return self._stream(
            "import",
            lambda job: download_adapter(
                repo_id=repo_id,
                loras_dir=self.config.loras_dir,
                token=token,
                on_progress=lambda fraction, message: job.emit(LoadProgress(fraction, message)),
            ),
        )

    @staticmethod
    def read_png_info(path) -> dict:
        """The generation parameters stored in a PNG, parsed like A1111's PNG Info tab ({} if none)."""
        text = infotext.read_infotext(path)
        return {} if text is None else {"infotext": text, **infotext.parse_infotext(text)}


def scheduler_names() -> tuple[str, ...]:
    from studio.generation.schedulers import SCHEDULER_NAMES

    return SCHEDULER_NAMES


def size_presets() -> list[str]:
    """ "WxH (SD1.5)" / "WxH (SDXL)" labels for the size picker."""
    from studio.generation.request import SIZE_PRESETS

    return [f"{w}x{h} ({kind.label})" for kind, sizes in SIZE_PRESETS.items() for w, h in sizes]


def form_from_png_info(info: dict) -> dict:
    """Generation-form values from parsed infotext, for "Send to Generate"; unknown fields are left out."""
    from studio.generation.schedulers import from_a1111

    form = {"prompt": info.get("Prompt", ""), "negative_prompt": info.get("Negative prompt", "")}
    numbers = {
        "steps": ("Steps", int),
        "cfg": ("CFG scale", float),
        "seed": ("Seed", int),
        "clip_skip": ("Clip skip", int),
    }
    for field, (key, cast) in numbers.items():
        try:
            form[field] = cast(info[key])
        except (KeyError, ValueError):
            pass
    if "Size" in info and "x" in info["Size"]:
        try:
            form["width"], form["height"] = (int(v) for v in info["Size"].split("x", 1))
        except ValueError:
            pass
    scheduler = from_a1111(info.get("Sampler", ""), info.get("Schedule type"))
    if scheduler:
        form["scheduler"] = scheduler
    if info.get("Model"):
        form["model"] = info["Model"]
    return form
