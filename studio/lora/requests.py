"""What the LoRA tab asks for: a live blend, a comparison grid, a blend saved as a new adapter.

Torch-free on purpose: the UI builds and checks these requests without importing torch; the work
is in blend.py, compare.py and merge.py.
"""

from __future__ import annotations

import dataclasses

from studio.errors import InvalidRequestError
from studio.generation.request import GenerationRequest
from studio.lora.folder import check_adapter_name
from studio.models.kinds import ModelKind
from studio.validation import check_range

MAX_CELLS = 64


@dataclasses.dataclass(frozen=True)
class BlendRequest:
    """The LoRA tab's blend, applied to a model right away (a slider move, a new adapter, fuse on/off)."""

    model: str
    loras: tuple[tuple[str, float], ...] = ()
    text_encoder_scale: float = 1.0
    """Text-encoder weight of each adapter = its weight times this (0 = UNet only)."""

    fuse: bool = False

    def validate(self) -> None:
        for name, weight in self.loras:
            check_range(f"LoRA {name!r} strength", weight, -2.0, 2.0)
        check_range("Text-encoder strength", self.text_encoder_scale, -2.0, 2.0)


@dataclasses.dataclass(frozen=True)
class CompareRow:
    label: str
    loras: tuple[tuple[str, float], ...] = ()
    """The row's blend at strength 1; empty = the base model ("no LoRA")."""


@dataclasses.dataclass(frozen=True)
class CompareRequest:
    model: str
    prompt: str
    rows: tuple[CompareRow, ...]
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    negative_prompt: str = ""
    seed: int = -1
    """One seed for every cell (-1 picks one at random, recorded in every infotext)."""

    steps: int = 20
    cfg: float = 7.0
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None

    def validate(self) -> None:
        if not self.rows:
            raise InvalidRequestError("A comparison needs at least one row (a LoRA, a blend or 'no LoRA').")
        if not self.strengths:
            raise InvalidRequestError("A comparison needs at least one strength column, e.g. 0, 0.5, 1.")
        if len(self.rows) * len(self.strengths) > MAX_CELLS:
            raise InvalidRequestError(
                f"{len(self.rows)} rows x {len(self.strengths)} strengths = {len(self.rows) * len(self.strengths)} "
                f"images; use at most {MAX_CELLS}."
            )
        for strength in self.strengths:
            if not -2.0 <= strength <= 2.0:
                raise InvalidRequestError(f"Strength {strength} is out of range; use -2 to 2.")
        for row in self.rows:
            self.cell(row, 1.0).validate()

    def cell(self, row: CompareRow, strength: float) -> GenerationRequest:
        extra = {"scheduler": self.scheduler} if self.scheduler else {}
        return GenerationRequest(
            model=self.model,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            cfg=self.cfg,
            seed=self.seed,
            width=self.width,
            height=self.height,
            loras=tuple((name, weight * strength) for name, weight in row.loras),
            **extra,
        )


@dataclasses.dataclass(frozen=True)
class SaveBlendRequest:
    name: str
    """Folder name of the new adapter in `loras/` (see `studio.lora.folder.check_adapter_name`)."""

    loras: tuple = ()
    """(name, weight) or (name, weight, text-encoder weight) of each adapter in the blend."""

    kind: ModelKind = ModelKind.SD15
    """Base kind of the blend (the loaded model's); every adapter must match it."""

    base_model: str = ""
    """What the user picked as the base (for the manifest and model card)."""

    text_encoder_scale: float = 1.0
    """Text-encoder weight of adapters without their own: weight times this."""

    overwrite: bool = False

    def validate(self) -> None:
        check_adapter_name(self.name)
        if not self.loras:
            raise InvalidRequestError("The blend is empty; add at least one LoRA before saving it.")
        for item in self.loras:
            check_range(f"LoRA {item[0]!r} weight", float(item[1]), -4.0, 4.0)
