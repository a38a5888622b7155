"""Resume: where a run starts (a checkpoint or a clean slate), and what goes into a checkpoint and back.

A checkpoint holds the LoRA tensors, the optimizer, the LR scheduler, the fp16 loss scaler and the loss and
sample history (file format: `checkpoints.py`). The data order and the noise are functions of the seed and
the micro-batch index (`order.py`, `loop.py`), so nothing else is needed: a resumed run continues exactly
as if it had never stopped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from studio.errors import TrainingError
from studio.training.checkpoints import Checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from studio.training.events import TrainingEvent
from studio.training.request import TrainingRequest
from studio.training.setup import EventFn, Run


def resume_point(request: TrainingRequest, run_dir: Path, emit: EventFn) -> Checkpoint | None:
    """The checkpoint to continue from when resuming; otherwise None, and an earlier run's checkpoint goes."""
    found = list_checkpoints(run_dir / "checkpoints")
    if request.resume:  # preflight made sure there is one
        checkpoint = load_checkpoint(found[-1])
        if checkpoint.state["fingerprint"] != request.fingerprint():
            raise TrainingError(
                f"The checkpoint in {found[-1]} was made with other settings; resume with the same settings, "
                "or train under a new name."
            )
        return checkpoint
    if found:
        emit(TrainingEvent("status", message=f"Starting over: removed the earlier run's checkpoint {found[-1].name}"))
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # every process of a multi-GPU run tries
    return None


def restore(run: Run, checkpoint: Checkpoint) -> int:
    """Put the checkpoint's weights, optimizer, schedules and history back into the run; returns its step."""
    load_lora_params(run.trained, checkpoint.lora)
    run.optimizer.load_state_dict(checkpoint.optimizer)
    run.lr_scheduler.load_state_dict(checkpoint.state["scheduler"])
    restore_grad_scaler(run.accelerator.scaler, checkpoint.state.get("grad_scaler"))
    run.state.update(losses=checkpoint.state["losses"], samples=checkpoint.state["samples"])
    message = f"Resumed at step {checkpoint.step} of {run.total}"
    run.emit(TrainingEvent("status", message=message, losses=list(run.state["losses"])))  # the loss curve continues
    return checkpoint.step


def save(run: Run, step: int) -> Path | None:
    """Checkpoint the run after `step` steps; the main process writes it, the others wait for it."""
    run.accelerator.wait_for_everyone()
    if not run.main:
        return None
    run.data.latents.save()  # flips encoded since the last save: a resumed run finds them
    run.state["scheduler"] = run.lr_scheduler.state_dict()
    run.state["grad_scaler"] = grad_scaler_state(run.accelerator.scaler)
    path = save_checkpoint(
        run.run_dir / "checkpoints",
        step,
        lora=lora_params(run.trained),
        optimizer=run.optimizer.state_dict(),
        state=run.state,
    )
    run.emit(TrainingEvent("checkpoint", step=step, total_steps=run.total, path=str(path)))
    return path


def lora_params(trained: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The trainable tensors by "<component>.<parameter name>", the keys of a checkpoint's lora.safetensors."""
    return {f"{c}.{n}": p for c, m in trained.items() for n, p in m.named_parameters() if p.requires_grad}


def load_lora_params(trained: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    params = lora_params(trained)
    if set(params) != set(tensors):
        raise TrainingError("The checkpoint's LoRA layers do not match this model; train under a new name.")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key])


def grad_scaler_state(scaler) -> dict | None:
    """fp16 runs: the loss scale and its growth counter, so a resumed run scales exactly as before."""
    return scaler.state_dict() if scaler is not None else None  # plain numbers: fits state.json


def restore_grad_scaler(scaler, state: dict | None) -> None:
    if scaler is not None and state:
        scaler.load_state_dict(state)
