"""Splitting image drawing across processes (`accelerate launch` / torchrun), as export-dataset and evaluate do.

Each image has a fixed place (file name and seed), so any process can draw it and a stopped run can resume. The
missing images are cut into contiguous shares, the way accelerate's `split_between_processes` cuts a list, and each
share into runs of consecutive seeds of one prompt or candidate (one `generate` call each).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of a multi-process run: process `index` of `count`."""

    index: int = 0
    count: int = 1
    wait_for_everyone: Callable[[], None] = lambda: None
    share: Callable[[object], object] = lambda value: value
    """The first process's `value`, on every process."""

    @property
    def main(self) -> bool:
        return self.index == 0


def process_shard(device: str) -> Shard:
    """This process's share under `accelerate launch` / torchrun (WORLD_SIZE > 1), else all of the work.

    accelerate's PartialState joins the process group (NCCL on GPUs, gloo on CPUs) and puts each process on its
    own GPU, which the model manager's "cuda" device then means.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=device == "cpu")

    def share(value):
        return broadcast_object_list([value], from_process=0)[0]

    return Shard(state.process_index, state.num_processes, state.wait_for_everyone, share)


def my_runs(todo: Sequence[Item], shard: Shard, *, group: Callable[[Item], object], position: Callable[[Item], int]):
    """This process's contiguous share of `todo`, as runs of items of one `group` with consecutive `position`s."""
    per, extra = divmod(len(todo), shard.count)  # the first `extra` processes take one more, as accelerate splits
    start = shard.index * per + min(shard.index, extra)
    runs: list[list[Item]] = []
    for item in todo[start : start + per + (shard.index < extra)]:
        last = runs[-1][-1] if runs else None
        if last is not None and group(last) == group(item) and position(last) + 1 == position(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def drawn_as(path: Path, prompt: str, seed: int) -> bool:
    """The PNG's infotext has this prompt (LoRA tags may follow it) and seed: a resumed run may keep it."""
    from studio.generation.infotext import parse_infotext, read_infotext

    info = parse_infotext(read_infotext(path) or "")
    return info.get("Seed") == str(seed) and info.get("Prompt", "").startswith(prompt)
