"""What one Generate click asks for (a frozen `GenerationRequest`, checked by `validate()`) and what comes back.

Torch-free on purpose, like the training request: the CLI checks a request (and the UI could) before
torch and diffusers are imported, so a typo is reported in a moment, not after a ten-second import.
"""

from __future__ import annotations

import dataclasses
import math

from PIL import Image

from studio.errors import InvalidRequestError
from studio.generation import images
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

    # --- image-to-image and inpainting (A1111 names; see studio.generation.images) ---
    init_image: Image.Image | None = None
    """Image-to-image / inpaint input; None is text-to-image."""

    strength: float = 0.75
    """A1111 "Denoising strength", (0, 1]: the share of the sampling steps run on the noised input."""

    resize_mode: str = "just resize"
    """How the input fits width x height: "just resize" | "crop and resize" | "resize and fill"."""

    mask: Image.Image | None = None
    """Inpaint mask, same picture as init_image: white = repaint, black = keep."""

    mask_blur: int = 4
    inpaint_not_masked: bool = False
    """A1111 "Mask mode: Inpaint not masked": repaint the black part instead."""

    masked_content: str = "original"
    """What the masked area starts from: "original" | "fill" | "latent noise" | "latent nothing"."""

    inpaint_full_res: bool = False
    """A1111 "Inpaint area: Only masked": work at full size on a padded box around the mask, paste back."""

    inpaint_full_res_padding: int = 32
    """Pixels added around the mask's box for "Only masked"."""

    @property
    def mode(self) -> str:
        if self.init_image is None:
            return "txt2img"
        return "img2img" if self.mask is None else "inpaint"

    # --- hires fix (A1111 names; see studio.generation.hires) ---
    hires_scale: float = 1.0
    """A1111 "Upscale by": 1 is off, unless hires_width/hires_height are set."""

    hires_width: int = 0
    """A1111 "Resize width to": 0 takes the width from hires_scale (or from hires_height and the aspect ratio)."""

    hires_height: int = 0
    hires_upscaler: str = "Latent"
    """"Latent" (and its A1111 variants), "Lanczos", "Nearest", or a file name in models/upscalers/."""

    hires_steps: int = 0
    """Sampling steps of the second pass; 0 uses `steps`."""

    hires_denoise: float = 0.7
    """A1111 "Denoising strength" of the second pass, (0, 1]."""

    @property
    def hires(self) -> bool:
        return self.hires_scale != 1.0 or bool(self.hires_width or self.hires_height)

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
        self._validate_images()
        self._validate_hires()

    def _validate_images(self) -> None:
        """The image-to-image and inpaint fields: pictures, ranges and choices, before any model loads."""
        if self.init_image is None:
            if self.mask is not None:
                raise InvalidRequestError("A mask needs an input image: give init_image too (or drop the mask).")
            return
        images.check_image("The input image", self.init_image)
        if not 0.0 < self.strength <= 1.0:
            raise InvalidRequestError(
                f"strength={self.strength} is out of range; use a denoising strength above 0 and at most 1."
            )
        if int(self.steps * self.strength) < 1:
            raise InvalidRequestError(
                f"strength={self.strength} with steps={self.steps} leaves no sampling step (image-to-image runs "
                f"steps x strength of them); use at least {math.ceil(1 / self.strength)} steps or a higher strength."
            )
        _check_choice("resize_mode", self.resize_mode, images.RESIZE_MODES)
        if self.mask is None:
            return
        images.check_image("The mask", self.mask)
        check_range("mask_blur", self.mask_blur, 0, 64)
        check_range("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, 256)
        _check_choice("masked_content", self.masked_content, images.MASKED_CONTENT)
        images.check_mask_area(self.mask, inverted=self.inpaint_not_masked)

    def _validate_hires(self) -> None:
        """The hires fix fields; whether the upscaler exists is checked against the folder (`upscalers.check`)."""
        if self.hires and self.init_image is not None:
            raise InvalidRequestError(
                "The hires fix is for text-to-image; for image-to-image set the size itself (hires_scale=1)."
            )
        check_range("hires_scale", self.hires_scale, 1.0, 8.0)
        for name, value in (("hires_width", self.hires_width), ("hires_height", self.hires_height)):
            if value and (value % 8 or not 64 <= value <= 8192):
                raise InvalidRequestError(
                    f"{name}={value} must be 0 (from the scale) or a multiple of 8 between 64 and 8192 "
                    f"(e.g. {max(64, round(value / 8) * 8)})."
                )
        check_range("hires_steps", self.hires_steps, 0, 150, hint="0 (same as steps) to 150")
        if not 0.0 < self.hires_denoise <= 1.0:
            raise InvalidRequestError(
                f"hires_denoise={self.hires_denoise} is out of range; use a denoising strength above 0 and at most 1."
            )
        if not isinstance(self.hires_upscaler, str) or not self.hires_upscaler.strip():
            raise InvalidRequestError("hires_upscaler is empty; use Latent, Lanczos or a file in models/upscalers/.")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise InvalidRequestError(f"{name}={value!r} is not known; use one of: {', '.join(map(repr, choices))}.")


@dataclasses.dataclass(frozen=True)
class StepInfo:
    image_index: int
    """Which pipeline call of `batch_count` is running (0-based)."""

    step: int
    total_steps: int
    elapsed: float
    preview: Image.Image | None
    stage: str = ""
    """"" while sampling; with the hires fix "first pass" (once: `preview` is the decoded first-pass image, the
    text-to-image result of the same seed) and then "hires" for the second pass's steps (`total_steps` is its own)."""

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
    notes: list[str] = dataclasses.field(default_factory=list)
    """Things the user should know that did not stop the run ("the mask was stretched to the picture's size")."""


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
