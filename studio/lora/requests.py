"""What the LoRA and Compare tabs ask for: a live blend, an X/Y/Z plot, a blend saved as a new adapter.

Torch-free on purpose: the UI and the CLI build and check these requests without importing torch; the work
is in blend.py, plot.py and merge.py.
"""

from __future__ import annotations

import dataclasses
import itertools

from studio.errors import InvalidRequestError
from studio.generation.request import GenerationRequest
from studio.lora.folder import check_adapter_name
from studio.lora.plot_axes import Axis
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
class PlotCell:
    position: tuple[int, int, int]
    """(x, y, z) index of the cell's values on the three axes."""

    request: GenerationRequest


@dataclasses.dataclass(frozen=True)
class PlotRequest:
    """An X/Y/Z plot: every setting not on an axis comes from `base` (the Generate tab's form and blend)."""

    base: GenerationRequest
    x: Axis | None = None
    y: Axis | None = None
    z: Axis | None = None

    @property
    def axes(self) -> tuple[Axis | None, Axis | None, Axis | None]:
        return self.x, self.y, self.z

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(axis.values) if axis else 1 for axis in self.axes)

    def validate(self) -> None:
        axes = [axis for axis in self.axes if axis]
        if not axes:
            raise InvalidRequestError("A plot needs at least one axis, e.g. X = LoRA strength 0, 0.5, 1.")
        keys = [axis.key for axis in axes]
        if len(set(keys)) < len(keys):
            raise InvalidRequestError(f"Two axes vary the same setting ({', '.join(keys)}); give each axis its own.")
        x, y, z = self.shape
        if x * y * z > MAX_CELLS:
            raise InvalidRequestError(f"{x} x {y} x {z} = {x * y * z} images; use at most {MAX_CELLS} cells.")
        for axis in axes:
            axis.check(self.base)
        for cell in self.cells():
            cell.request.validate()

    def cells(self, *, model_kind=None, adapter_kind=None) -> list[PlotCell]:
        """Every cell's request, z then y then x (x fastest).

        With `model_kind(name)` / `adapter_kind(name)` (ModelKind or None), a cell keeps only the adapters made for its
        model's kind (the tab's adapter list may hold SD1.5 and SDXL ones), and a model axis draws each model at its
        own scale (the base size times native(model) / native(base model): 512 px SD1.5 -> 1024 px SDXL) unless a
        size axis sets it.
        """
        axes = [(i, axis) for i, axis in enumerate(self.axes) if axis]
        axes.sort(key=lambda pair: pair[1].key != "model")  # the model first: the other axes override its size
        has_size = any(axis.key == "size" for _i, axis in axes)
        base = dataclasses.replace(self.base, batch_size=1, batch_count=1)
        cells = []
        for position in itertools.product(*(range(n) for n in reversed(self.shape))):
            position = tuple(reversed(position))
            request = base
            for i, axis in axes:
                request = axis.apply(request, axis.values[position[i]])
            if model_kind is not None:
                request = _fit_model(request, base, model_kind, adapter_kind, keep_size=has_size)
            cells.append(PlotCell(position, request))
        return cells


def _fit_model(request, base, model_kind, adapter_kind, *, keep_size: bool) -> GenerationRequest:
    kind, base_kind = model_kind(request.model), model_kind(base.model)
    if kind is None:
        return request
    if adapter_kind is not None:
        loras = tuple((n, w) for n, w in request.loras if adapter_kind(n) in (None, kind))
        request = dataclasses.replace(request, loras=loras)
    if keep_size or kind is base_kind or request.width is None or base_kind is None:
        return request
    scale = kind.native_size / base_kind.native_size
    width, height = (min(4096, max(64, round(side * scale / 8) * 8)) for side in (request.width, request.height))
    return dataclasses.replace(request, width=width, height=height)


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
