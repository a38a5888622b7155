"""LoRA training on a folder of images, SD1.5 and SDXL: `train(request, config)` -> `loras/<name>/`.

nanoGPT style, in four phases, each in its own module:

    setup.py       scan the data set (errors before any model loads), load the base model through the
                   ModelManager, cache latents and text embeddings once (then the VAE and the text encoders
                   leave the GPU), put LoRA layers on the UNet attention (and optionally the text encoders),
                   make the optimizer and LR schedule, let accelerate prepare them
    resume.py      restore the last checkpoint of the run, or start over
    loop.py        for each step: draw noise and timesteps, predict, take the MSE (optionally min-SNR
                   weighted) against the noise or the velocity, step the optimizer; sample images
                   (validation.py) and save checkpoints every N steps, and a checkpoint on Stop
    finish (here)  a last sample, then the adapter folder (export.py), then the time per phase (phases.py)

Runs in-process (the CLI, also under `accelerate launch` for several GPUs) or in the training child
process of the UI (`studio.training.worker`). Determinism: the data order comes from (seed, epoch)
(`order.py`) and each micro-batch's noise from its own generator seeded with (seed, micro-batch), so a
run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from studio.atomic import check_free_space, check_writable
from studio.config import StudioConfig
from studio.errors import TrainingError
from studio.training.checkpoints import list_checkpoints
from studio.training.dataset import DatasetReport
from studio.training.events import TrainingEvent
from studio.training.loop import train_steps
from studio.training.phases import PhaseClock, phase_table
from studio.training.request import TrainingRequest, check_dataset, check_name_free
from studio.training.resume import grad_scaler_state, restore, restore_grad_scaler, resume_point
from studio.training.setup import UNET_TARGETS, EventFn, Run, setup
from studio.training.validation import sample

__all__ = ["UNET_TARGETS", "grad_scaler_state", "preflight", "restore_grad_scaler", "train"]


def train(
    request: TrainingRequest,
    config: StudioConfig,
    *,
    on_event: EventFn = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Path | None:
    """Train and export the adapter; returns `loras/<name>`, or None when stopped (a checkpoint is kept)."""
    clock = PhaseClock()
    report = preflight(request, config)
    run_dir = request.run_dir(config.outputs_dir)
    checkpoint = resume_point(request, run_dir, on_event)  # before the model loads: a wrong resume fails at once
    run = setup(request, config, report, run_dir, on_event, should_stop, clock)
    if run is None:  # stopped while caching
        return None
    with clock.phase("load"):
        start = restore(run, checkpoint) if checkpoint is not None else 0
    if not train_steps(run, start, should_stop):
        return None
    return finish(run, request.output_dir(config.loras_dir), num_images=len(report.samples))


def preflight(request: TrainingRequest, config: StudioConfig) -> DatasetReport:
    """The checks that need no model, so a bad folder, a taken name or nothing to resume fail in a moment;
    the UI runs them before it starts the training process (whose imports alone take seconds)."""
    request.validate()
    report = check_dataset(request)
    check_name_free(request, config.loras_dir)
    # A read-only or full folder fails now, not after the last step (an adapter is a few MB per rank unit).
    check_writable(config.loras_dir, "the LoRA folder")
    check_writable(config.outputs_dir, "the outputs folder")
    check_free_space(config.loras_dir, (64 + 8 * request.rank) * 1024**2, f"training {request.name!r}")
    run_dir = request.run_dir(config.outputs_dir)
    if request.resume and not list_checkpoints(run_dir / "checkpoints"):
        raise TrainingError(f"Nothing to resume: {run_dir} has no checkpoint for {request.name!r}; press Train.")
    return report


def finish(run: Run, output_dir: Path, *, num_images: int) -> Path | None:
    """The last sample, then the adapter folder; returns it (None on the other processes of a multi-GPU run).

    Then the time per phase, as an event (the CLI prints it, the Train tab shows it with the result)."""
    from studio.training.export import export_adapter

    run.accelerator.wait_for_everyone()
    if not run.main:
        return None
    total, clock = run.total, run.clock
    if run.request.samples:
        with clock.phase("samples"):
            run.state["samples"].append(sample(run, total))
    with clock.phase("caching"):
        run.data.latents.save()  # the flips drawn in this run: another run on the same images skips them
    with clock.phase("export"):
        run.emit(TrainingEvent("status", step=total, total_steps=total, message="Writing the adapter"))
        folder = export_adapter(
            output_dir,
            run_dir=run.run_dir,
            trained=run.trained,
            request=run.request,
            kind=run.kind,
            state=run.state,
            num_images=num_images,
            precision=run.precision,
        )
    seconds = clock.report()
    run.emit(TrainingEvent("phases", step=total, total_steps=total, phases=seconds, message=phase_table(seconds)))
    message = f"Adapter saved to {folder}"
    run.emit(TrainingEvent("done", step=total, total_steps=total, path=str(folder), message=message))
    return folder
