"""The engine the front ends talk to: one object that holds the config, the model manager and the jobs.

The Gradio UI must not import torch or diffusers, so everything it needs goes through `Studio`
methods that take request dataclasses (from torch-free modules) and return plain data and PIL images.
This module imports the heavy modules inside the methods that use them, so importing it stays light.

Every background job lives in `self.jobs` under a slot, and each Stop button stops its own slot:

    "generate"  Generate tab          "evaluate"  Evaluate tab          "export"   data set export
    "plot"      Compare tab X/Y/Z     "import"    LoRA import from Hub  "push"     Share tab upload
    "training"  Train tab

Closing a stream (a closed page, a cancelled API call) cancels its job, except training: a run of hours
survives a closed browser tab, and the Train tab's Stop still reaches it from a reloaded page.

The web app starts its engine lazily (`Studio(config, lazy=True)`, then `start_engine()` once the page is
served): creating the model manager imports torch and diffusers, seconds that need not delay the first page.
Whatever needs the manager waits for it; a generation says "Loading the engine" meanwhile.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from studio.config import StudioConfig
from studio.errors import CancelledError
from studio.generation import infotext, outputs
from studio.generation.request import GenerationRequest, GenerationResult, StepInfo
from studio.jobs import Job, JobBoard
from studio.models.sources import ModelSource, list_models

if TYPE_CHECKING:
    from studio.models.manager import ModelManager

SLOTS = ("generate", "evaluate", "export", "plot", "import", "push", "training")


@dataclasses.dataclass(frozen=True)
class LoadProgress:
    fraction: float
    message: str


@dataclasses.dataclass(frozen=True)
class Finished:
    result: GenerationResult
    paths: list[Path]


ENGINE_LOADING = "Loading the engine (torch, diffusers)"


class Studio:
    def __init__(self, config: StudioConfig, manager: ModelManager | None = None, *, lazy: bool = False):
        """`lazy`: create the model manager later, in `start_engine()` or on first use, not now."""
        self.config = config
        self.jobs = JobBoard()
        self._engine: Future = Future()
        self._engine_started = threading.Lock()
        if manager is not None:
            self._engine.set_running_or_notify_cancel()
            self._engine.set_result(manager)
        elif not lazy:
            self.start_engine(background=False)

    def start_engine(self, *, background: bool = True) -> None:
        """Create the model manager (imports torch and diffusers); in a thread with `background`. Idempotent."""
        if not self._engine_started.acquire(blocking=False):
            return  # started already (or given a manager)
        if not self._engine.set_running_or_notify_cancel():
            return
        if background:
            threading.Thread(target=self._build_engine, name="engine-start", daemon=True).start()
        else:
            self._build_engine()

    def _build_engine(self) -> None:
        try:
            from studio.models.manager import ModelManager

            manager = ModelManager(self.config)
            _ = manager.device, manager.dtype  # probe the hardware now, not in the first click
            import studio.generation.run  # noqa: F401  (diffusers' pipelines: the first click would wait for them)
        except BaseException as error:  # re-raised to whoever asks for the manager
            self._engine.set_exception(error)
            raise
        self._engine.set_result(manager)

    @property
    def engine_ready(self) -> bool:
        return self._engine.done()

    @property
    def manager(self) -> ModelManager:
        """The model manager; waits while the engine starts (and starts it if nobody did)."""
        self.start_engine(background=False)
        return self._engine.result()

    def models(self) -> list[ModelSource]:
        return list_models(self.config)

    def upscalers(self) -> list[str]:
        """Hires fix upscalers: the built-in ones, then the files of models/upscalers/."""
        from studio.generation.upscalers import list_upscalers

        return list_upscalers(self.config)

    def stop(self, slot: str = "generate") -> None:
        """Stop the running job(s) of one slot (default: the generation, within one sampling step)."""
        if slot not in SLOTS:
            raise ValueError(f"Unknown job slot {slot!r}; one of {', '.join(SLOTS)}.")
        self.jobs.stop(slot)

    def _follow(self, slot: str, work) -> Iterator:
        """Run `work(job)` in a background thread as the job of `slot`: its events, then its result."""
        return self.jobs.follow(slot, Job(work, name=slot))

    def generate_stream(self, request: GenerationRequest) -> Iterator[StepInfo | LoadProgress | Finished]:
        """Generate in a background thread, yielding progress, then `Finished` with the saved paths."""
        request.validate()  # fail fast, before a thread or a model is involved

        def work(job: Job) -> Finished:
            if not self.engine_ready:
                job.emit(LoadProgress(0.0, f"{ENGINE_LOADING}…"))
            manager = self.manager
            from studio.generation.run import generate

            result = generate(
                manager,
                request,
                on_step=job.emit,
                on_load=lambda fraction, message: job.emit(LoadProgress(fraction, message)),
                cancel=job.cancel,
            )
            paths = outputs.save_images(result.images, result.infotexts, result.seeds, self.config.outputs_dir)
            return Finished(result, paths)

        return self._follow("generate", work)

    def train_stream(self, request) -> Iterator:
        """Train a LoRA in a child process (GPU released first); yields `TrainingEvent`s, last "done" or "stopped"."""
        from studio.training.session import training_job

        job = training_job(self.manager, self.config, request)  # checks the request and the folder first
        return self.jobs.follow("training", job, latest_only=False, with_result=False, cancel_on_close=False)

    def training_preset(self, kind, *, wait: bool = True):
        """The largest training preset for a model kind that fits this machine's GPU (the smallest without one).

        Asking CUDA imports torch: without `wait`, before the engine has started, the preset for no GPU.
        """
        from studio.training.presets import detected_vram_bytes, pick_preset

        if not wait and not self.engine_ready:
            return pick_preset(kind, None)
        _ = self.manager  # torch is imported by the engine's start, not by this call
        return pick_preset(kind, detected_vram_bytes())

    def training_progress(self) -> str | None:
        """How far the running training run is ("step 40/500 · ... · ETA 4m00s"), or None when no run holds the GPU."""
        for job in self.jobs.running("training"):
            event = job.latest
            if event is None:
                return "starting"
            if event.kind == "step":
                return event.progress_text()
            return f"step {event.step}" if event.step else (event.message.splitlines() or [event.kind])[0]
        return None

    def stop_training(self) -> None:
        """Stop the training run at its next step; it saves a checkpoint that Resume continues from."""
        self.stop("training")

    def history(self, limit: int = 60) -> list[Path]:
        return outputs.history(self.config.outputs_dir, limit=limit)

    def evaluate_stream(self, request) -> Iterator:
        """Score candidates against a data folder in a background thread: `Progress`, then the EvaluationResult."""
        from studio.evaluation.runner import evaluate

        request.validate()  # fail fast, before a thread or a model is involved
        outputs_dir = self.config.outputs_dir
        return self._follow(
            "evaluate",
            lambda job: evaluate(
                self.manager, request, outputs_dir=outputs_dir, on_progress=job.emit, cancel=job.cancel
            ),
        )

    def export_dataset_stream(self, request) -> Iterator:
        """Draw a synthetic imagefolder data set in a background thread: `Progress`, then the ExportResult."""
        from studio.evaluation.synthetic import export_dataset

        request.validate()
        return self._follow(
            "export", lambda job: export_dataset(self.manager, request, on_progress=job.emit, cancel=job.cancel)
        )

    def shareable_adapters(self) -> list[str]:
        """Every pushable adapter in loras/ (Studio folders and LoRA files made elsewhere), scanned fresh each call."""
        from studio.hub.adapters import shareable_adapters

        return shareable_adapters(self.config.loras_dir)

    def push_stream(self, request) -> Iterator:
        """Push an adapter to the Hub in a background thread: `LoadProgress` events, then the repo URL (str)."""
        from studio.hub.adapters import push_adapter

        request.validate()
        return self._follow(
            "push",
            lambda job: push_adapter(request, on_progress=lambda f, m: job.emit(LoadProgress(f, m)), cancel=job.cancel),
        )

    def model_card_preview(self, request) -> str:
        """The README.md model card a push of `request` would upload; nothing is sent."""
        from studio.hub.adapters import model_card_text

        return model_card_text(request)

    def stop_push(self) -> None:
        """Stop an upload between chunks; the Hub repo keeps its previous commit."""
        self.stop("push")

    # --- LoRA library, blending, X/Y/Z plots (studio.lora, studio.lora.plot) ---

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

    def plot_stream(self, request) -> Iterator:
        """Render a `PlotRequest` (X/Y/Z plot, A/B) in a background thread: `LoadProgress`, then the PlotResult."""
        from studio.lora.plot import plot

        request.validate()
        return self._follow(
            "plot",
            lambda job: plot(
                self.manager,
                request,
                outputs_dir=self.config.outputs_dir,
                cancel=job.cancel,
                on_progress=lambda fraction, message: job.emit(LoadProgress(fraction, message)),
            ),
        )

    def import_lora_stream(self, repo_id: str, token: str | None = None) -> Iterator:
        """Download a LoRA repo from the Hub into loras/: `LoadProgress` events, then the folder (Path).

        Its own slot: an import runs beside a generation (it needs no GPU) and Generate's Stop leaves it alone.
        """
        from studio.hub.adapters import download_adapter

        def work(job: Job) -> Path:
            def on_progress(fraction: float, message: str) -> None:
                if job.cancel.is_set() and fraction < 1.0:  # the page closed: stop, nothing lands in loras/
                    raise CancelledError(f"Import of {repo_id} stopped; loras/ is unchanged.")
                job.emit(LoadProgress(fraction, message))

            on_progress(0.0, f"Importing {repo_id}")
            return download_adapter(
                repo_id=repo_id, loras_dir=self.config.loras_dir, token=token, on_progress=on_progress
            )

        return self._follow("import", work)

    def embeddings(self) -> list[list]:
        """The embeddings folder as table rows: [name, base, vectors, hash, problem] (headers only, no torch)."""
        from studio.generation.embeddings import embedding_rows

        return embedding_rows(self.config)

    def count_tokens(self, model: str, text: str) -> str:
        """A1111's token counter for a prompt box: `32/75`, `80/150` once a second 75-token chunk starts.

        Counted with the real CLIP tokenizer (SD1.5 and SDXL read prompts with it); needs no torch and no model.
        An embedding of the embeddings folder named in the text counts its vectors.
        """
        from studio.errors import StudioError
        from studio.generation.embeddings import counter_embeddings
        from studio.generation.prompts import token_counter

        try:
            kind = self.model_kind(model)
        except StudioError:
            kind = None  # a model name still being typed: count with every embedding
        return token_counter(text or "", counter_embeddings(self.config, kind))

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
    image = infotext.image_fields(info)
    if any(key.startswith("Hires") for key in info):
        image.pop("strength", None)  # on a hires image "Denoising strength" is the second pass's, read by hires_fields
    form.update(image)
    form.update(infotext.hires_fields(info))
    return form
