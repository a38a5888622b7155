"""Resumable checkpoints of a training run, as safetensors + JSON (never pickle).

    runs/<name>/checkpoints/step-000100/
        lora.safetensors        trainable LoRA tensors, "<component>.<peft key>"
        optimizer.safetensors   optimizer state tensors, "<param index>.<state key>"
        state.json              step, settings fingerprint, optimizer scalars and param groups, fp16 loss scaler,
                                LR scheduler state, loss history and the samples made so far

With the data order and the noise derived from (seed, step) (see order.py, loop.py), these files are all a
run needs to continue exactly where it stopped. Each checkpoint is written under a temporary name and
renamed, so a crash mid-save leaves the previous one intact; older checkpoints are then deleted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from studio.atomic import disk_full_as_error
from studio.errors import TrainingError

KEEP = 1  # the last checkpoint is what Stop promises to keep; older ones only cost disk


@dataclasses.dataclass
class Checkpoint:
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict
    """torch optimizer state_dict()."""
    state: dict
    """fingerprint, scheduler, losses, samples."""


def save_checkpoint(folder: Path, step: int, *, lora: dict[str, torch.Tensor], optimizer: dict, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".tmp-"))
    with disk_full_as_error(folder):  # a full disk: one line naming the folder; the partial save is removed
        try:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in lora.items()}, tmp / "lora.safetensors")
            tensors, scalars = {}, {}
            for index, values in optimizer["state"].items():
                for key, value in values.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous()
                    else:
                        scalars[f"{index}.{key}"] = value
            save_file(tensors, tmp / "optimizer.safetensors")
            full_state = {
                **state,
                "step": step,
                "optimizer_scalars": scalars,
                "param_groups": optimizer["param_groups"],
            }
            (tmp / "state.json").write_text(json.dumps(full_state, indent=1), encoding="utf-8")
            final = folder / f"step-{step:06d}"
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for old in list_checkpoints(folder)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        lora = load_file(path / "lora.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"Checkpoint {path} is damaged ({error}); delete it and press Train to start the run over."
        ) from error
    per_param: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(state.pop("optimizer_scalars").items()):
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer = {"state": per_param, "param_groups": state.pop("param_groups")}
    return Checkpoint(step=state["step"], lora=lora, optimizer=optimizer, state=state)
