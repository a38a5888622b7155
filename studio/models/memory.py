"""How to fit a pipeline on the user's device: a pure plan from numbers, easy to unit-test.

Modes, from fastest to leanest:
- `none`: the whole pipeline sits on the accelerator.
- `model-offload`: each component (text encoders, UNet, VAE) moves to the GPU only while it runs.
- `sequential-offload`: weights stream to the GPU layer by layer; slow, but SDXL fits in ~3 GB.
VAE tiling decodes large images in tiles, so decode memory no longer grows with image size.
"""

from __future__ import annotations

import dataclasses

from studio.models.kinds import ModelKind

GiB = 1024**3

# Memory needed on top of the weights while sampling at the native size (activations, attention,
# VAE decode), measured roughly on fp16 CUDA; the plan only has to be right about which side of a
# card's size a model lands on.
WORKING_MEMORY = {ModelKind.SD15: 1.5 * GiB, ModelKind.SDXL: 3.0 * GiB}
# With model offload only one component is resident, and the text encoders' activations are gone.
OFFLOAD_WORKING_MEMORY = {ModelKind.SD15: 1.0 * GiB, ModelKind.SDXL: 2.0 * GiB}
# Share of the weights that is the UNet: the largest piece that must fit at once with model offload.
UNET_SHARE = {ModelKind.SD15: 0.80, ModelKind.SDXL: 0.75}
OFFLOAD_MODES = ("model-offload", "sequential-offload")
NEXT_MODE = {"none": "model-offload", "model-offload": "sequential-offload", "sequential-offload": None}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    mode: str
    """`none`, `model-offload` or `sequential-offload`."""

    vae_tiling: bool
    reason: str
    """One sentence for the UI and logs: why this plan was chosen."""


def plan_memory(
    *,
    requested: str,
    device_type: str,
    kind: ModelKind,
    weights_bytes: int,
    free_bytes: int | None,
    vae_tiling: bool = False,
) -> MemoryPlan:
    """Choose a memory mode. `free_bytes` is the accelerator's free memory (None on CPU)."""
    if device_type == "cpu":
        note = "" if requested in ("auto", "none") else f" ({requested} needs a GPU; ignored)"
        return MemoryPlan("none", vae_tiling, f"CPU: everything in RAM{note}.")
    if requested != "auto":
        return MemoryPlan(requested, vae_tiling, f"{requested} chosen by the user.")
    if free_bytes is None:
        # MPS shares system memory and reports no free figure; offload buys nothing there.
        return MemoryPlan("none", vae_tiling, f"{device_type}: unified memory, no offload.")
    working = WORKING_MEMORY[kind]
    gib = lambda n: f"{n / GiB:.1f} GB"  # noqa: E731
    if free_bytes >= weights_bytes + working:
        return MemoryPlan(
            "none", vae_tiling, f"{gib(free_bytes)} free fits the {gib(weights_bytes)} model and working memory."
        )
    if free_bytes >= weights_bytes * UNET_SHARE[kind] + OFFLOAD_WORKING_MEMORY[kind]:
        return MemoryPlan(
            "model-offload",
            True,
            f"{gib(free_bytes)} free is less than the {gib(weights_bytes)} model plus working memory: "
            "components take turns on the GPU.",
        )
    return MemoryPlan(
        "sequential-offload",
        True,
        f"{gib(free_bytes)} free cannot hold the UNet: weights stream to the GPU layer by layer (slow).",
    )
