"""What one Generate click asks for (a frozen `GenerationRequest`, checked by `validate()`) and what comes back.

Torch-free on purpose, like the training request: the CLI checks a request (and the UI could) before
torch and diffusers are imported, so a typo is reported in a moment, not after a ten-second import.
"""

from __future__ import annotations

import dataclasses

from PIL import Image

from studio.errors import InvalidRequestError
from studio.generation.schedulers import DEFAULT_SCHEDULER, check_scheduler_name
from studio.models.kinds import ModelKind
from studio.validation import check_path_text, check_range, check_text_length

MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    model: str
    """Model picker entry, path or Hub id (see `studio.models.sources.resolve_model`)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    cfg: float = 7.0
    seed: int = -1
    """-1 picks a random seed; the seed used is always reported."""

    width: int | None = None
    """None uses the model's native size (512 for SD1.5, 1024 for SDXL)."""

    height: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    batch_size: int = 1
    """Images per pipeline call (uses more memory)."""

    batch_count: int = 1
    """Pipeline calls in a row."""

    clip_skip: int = 1
    """A1111 meaning: 1 uses the last text-encoder layer, 2 the one before."""

    loras: tuple[tuple[str, float], ...] = ()
    """(adapter name, strength) pairs; `<lora:name:weight>` tags in the prompt are added to these."""

    def validate(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise InvalidRequestError("The prompt and the negative prompt must be text.")
        check_text_length("The prompt", self.prompt)
        check_text_length("The negative prompt", self.negative_prompt)
        check_path_text("Model name", self.model)
        for name, _weight in self.loras:
            check_path_text("LoRA name", name)
        checks = [
            ("steps", self.steps, 1, 150),
            ("cfg", self.cfg, 0.0, 30.0),
            ("batch_size", self.batch_size, 1, 16),
            ("batch_count", self.batch_count, 1, 100),
            ("clip_skip", self.clip_skip, 1, 12),
        ]
        for name, value, low, high in checks:
            check_range(name, value, low, high)
        check_range("seed", self.seed, -1, MAX_SEED, hint=f"-1 (random) or 0 to {MAX_SEED}")
        for name, value in (("width", self.width), ("height", self.height)):
            if value is None:
                continue
            if value % 8 or not 64 <= value <= 4096:
                raise InvalidRequestError(
                    f"{name}={value} must be a multiple of 8 between 64 and 4096 "
                    f"(e.g. {max(64, round(value / 8) * 8)})."
                )
        check_scheduler_name(self.scheduler)
        for name, weight in self.loras:
            check_range(f"LoRA {name!r} weight", weight, -4.0, 4.0)


@dataclasses.dataclass(frozen=True)
class StepInfo:
    image_index: int
    """Which pipeline call of `batch_count` is running (0-based)."""

    step: int
    total_steps: int
    elapsed: float
    preview: Image.Image | None

    @property
    def fraction(self) -> float:
        done = self.image_index * self.total_steps + self.step
        return done / max(1, self.total_steps)

    @property
    def eta(self) -> float:
        return self.elapsed / max(self.step, 1) * (self.total_steps - self.step)


@dataclasses.dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    model_name: str
    seconds: float
    interrupted: bool = False


# Sizes people pick: SD1.5 around 512 px; SDXL's training aspect-ratio buckets around 1024 px.
SIZE_PRESETS = {
    ModelKind.SD15: [(512, 512), (512, 768), (768, 512), (640, 448), (448, 640), (768, 768)],
    ModelKind.SDXL: [
        (1024, 1024),
        (1152, 896),
        (896, 1152),
        (1216, 832),
        (832, 1216),
        (1344, 768),
        (768, 1344),
        (1536, 640),
        (640, 1536),
    ],
}
