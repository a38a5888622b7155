"""A training run as the app sees it: hold the GPU, release the generation pipeline, run the child.

`Studio.train_stream` gets its job from `training_job`, starts it and reads its events. The GPU lock is taken
in the job's own thread (a Gradio generator may resume on different threads, and a lock must be
released by the thread that took it); while it is held, generation is refused with a clear BusyError
instead of waiting for hours. The pipeline that was active returns to the GPU when the run ends.
"""

from __future__ import annotations

from pathlib import Path

from studio.config import StudioConfig
from studio.jobs import Job
from studio.models.manager import ModelManager
from studio.training.request import TrainingRequest
from studio.training.trainer import preflight
from studio.training.worker import run_in_child


def training_job(manager: ModelManager, config: StudioConfig, request: TrainingRequest) -> Job:
    """The run as a `Job` (not started yet); raises at once for a bad request, folder, name or resume."""
    # A bad folder, a taken name, nothing to resume: fail now, before a thread, a process or a model is involved.
    preflight(request, config)

    def work(job: Job) -> Path | None:
        previous = manager.active.name if manager.active is not None else None
        try:
            with manager.exclusive("training"):
                manager.release_accelerator()
                return run_in_child(request, config, on_event=job.emit, stop=job.cancel)
        finally:
            if previous is not None:
                # Bring the generation model back (from the RAM cache) so the next Generate starts at once.
                with manager.acquire(previous):
                    pass

    return Job(work, name="training")
