"""Comparison shortcuts, built as X/Y/Z plots (studio.lora.plot): A/B and "base vs fine-tuned". Torch-free.

ab_request(base)                                   # X = blend off / on: the base model next to the blend
finetune_request(base, ["demo-sd15", "demo-sdxl"])  # rows = models, columns = strength 0 / 0.5 / 1
"""

from __future__ import annotations

import dataclasses

from studio.errors import InvalidRequestError
from studio.generation.request import GenerationRequest
from studio.lora.plot_axes import Axis
from studio.lora.requests import PlotRequest
from studio.models.kinds import ModelKind

FINETUNE_STRENGTHS = (0.0, 0.5, 1.0)


def ab_request(base: GenerationRequest) -> PlotRequest:
    """A: the base model alone; B: the same seed and settings with the blend."""
    if not base.loras:
        raise InvalidRequestError("A/B compares the base model with a blend: pick a LoRA in the LoRA tab first.")
    return PlotRequest(base=base, x=Axis("blend", (False, True)))


def finetune_request(
    base: GenerationRequest, models: list[str], strengths: tuple[float, ...] = FINETUNE_STRENGTHS
) -> PlotRequest:
    """Rows = base models, columns = LoRA strengths; each row uses the adapters made for its model."""
    if not base.loras:
        raise InvalidRequestError(
            "Base vs fine-tuned needs adapters: pick an SD1.5 and an SDXL LoRA under 'Adapters' (or in the LoRA tab)."
        )
    return PlotRequest(
        base=dataclasses.replace(base, model=models[0]),
        x=Axis("strength", tuple(strengths)),
        y=Axis("model", tuple(models)),
    )


def finetune_models(current: str, sources) -> list[str]:
    """The current model plus the first listed model of the other kind (SD1.5 <-> SDXL), models-folder entries
    before the demos; just the current one when no other kind is available."""
    kinds = {source.name: source.kind for source in sources}
    kind = kinds.get(current)
    wanted = ModelKind.SDXL if kind is ModelKind.SD15 else ModelKind.SD15
    others = [s for s in sources if s.kind is wanted and not s.problem]
    others.sort(key=lambda s: s.origin == "demo")  # the user's own models first
    models = [current] + [others[0].name] if others else [current]
    return sorted(models, key=lambda name: kinds.get(name) is ModelKind.SDXL)  # SD1.5 row first
