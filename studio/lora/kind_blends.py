"""A LoRA blend belongs to a model kind: an SD1.5 blend cannot run on SDXL, and should not be lost by trying.

The UI keeps one blend per kind (plain data, torch-free, so a Gradio State can hold it):

    {"sd15": [["alps", 0.8], ["watercolor", 0.5]], "sdxl": []}

Switching from an SD1.5 model to an SDXL one leaves the SD1.5 blend stored but not applied, and says so;
switching back restores it. `usable_lora` is the one check that an adapter can be used with a model kind.
"""

from __future__ import annotations

from pathlib import Path

from studio.errors import LoraError
from studio.lora.library import LoraEntry, find_lora
from studio.models.kinds import ModelKind

Blend = list  # [[name, weight], ...]


def usable_lora(loras_dir: Path, name: str, kind: ModelKind | None) -> LoraEntry:
    """The library entry of `name`, refusing one that cannot be used with `kind` (None: any kind it has)."""
    entry = find_lora(loras_dir, name)
    reason = entry.problem if kind is None else entry.incompatibility(kind)
    if reason:
        raise LoraError(f"Cannot use LoRA {entry.name!r}: {reason}")
    return entry


def remember(blends: dict | None, kind: ModelKind | None, blend) -> dict:
    """A copy of `blends` with `blend` stored as the blend of `kind` (an unknown kind stores nothing)."""
    blends = dict(blends or {})
    if kind is not None:
        blends[kind.value] = [[name, float(weight)] for name, weight in blend]
    return blends


def blend_of(blends: dict | None, kind: ModelKind | None) -> Blend:
    """The blend stored for `kind` ([] for none, or for an unknown kind)."""
    if kind is None:
        return []
    return [[name, float(weight)] for name, weight in (blends or {}).get(kind.value, [])]


def waiting(blends: dict | None, kind: ModelKind | None) -> list[tuple[ModelKind, Blend]]:
    """The blends stored for the other kinds: kept, but not applied to a model of `kind`."""
    return [(other, blend_of(blends, other)) for other in ModelKind if other is not kind and blend_of(blends, other)]


def blend_text(blend) -> str:
    return ", ".join(f"{name} {float(weight):g}" for name, weight in blend) or "no LoRA"


def summary(blends: dict | None, kind: ModelKind | None, model: str) -> str:
    """One line for a status: what the model in the picker generates with, and which blends wait for another kind."""
    if kind is None:
        line = f"{model}: its kind is known once it is loaded; no LoRA blend is applied yet."
    else:
        active = blend_of(blends, kind)
        line = f"LoRA blend on {model} ({kind.label}): {blend_text(active)}."
    for other, blend in waiting(blends, kind):
        line += (
            f" The {other.label} blend ({blend_text(blend)}) is not applied here; pick an {other.label} model for it."
        )
    return line
