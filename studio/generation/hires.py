"""Hires fix (A1111 "Hires. fix"): text-to-image at the request's size, upscale, then image-to-image at the big size.

    fix = HiresFix.load(request, manager)           # checks and loads the upscaler before any model loads
    fix.prepare(model, encode, conditioning, width, height)
    images = fix.run(model, first_pass_images, first_pass_latents, seeds, call, on_step, cancel)

As A1111 (`StableDiffusionProcessingTxt2Img.sample_hr_pass`):
- The target is `hires_scale` x the first-pass size, or hires_width x hires_height ("Resize width/height to";
  with one of them 0 the other follows the aspect ratio; with both set the upscale covers the box and the
  latents are centre-cropped to it). Sizes are rounded down to multiples of 8 (the VAE's factor).
- Latent upscalers resize the first pass's latents; the others resize the decoded image, which the img2img
  pipeline encodes again.
- "Hires steps" are the steps the second pass runs: A1111 stretches the schedule to steps / denoise and runs
  the last `steps` of it. diffusers' img2img runs int(num_inference_steps * strength) steps, so
  num_inference_steps is the smallest count that gives exactly the hires steps.
- The second pass starts from fresh noise of the same seeds, with the same prompt, sampler and CFG scale.
The first pass is the text-to-image image of the same seed: it is shown as a preview (`StepInfo.stage ==
"first pass"`) before the second pass starts.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from PIL import Image

from studio.generation.request import GenerationRequest, StepInfo
from studio.generation.upscalers import Upscaler, load_upscaler


@dataclasses.dataclass(frozen=True)
class HiresSize:
    upscale: tuple[int, int]
    """(width, height) the first pass is upscaled to."""

    final: tuple[int, int]
    """(width, height) of the result: `upscale`, centre-cropped to "Resize width/height to" when both are set."""


def hires_size(request: GenerationRequest, width: int, height: int) -> HiresSize:
    target_w, target_h = request.hires_width, request.hires_height
    if not target_w and not target_h:
        size = (_down8(width * request.hires_scale), _down8(height * request.hires_scale))
        return HiresSize(size, size)
    if not target_h:
        size = (target_w, _down8(target_w * height / width))
        return HiresSize(size, size)
    if not target_w:
        size = (_down8(target_h * width / height), target_h)
        return HiresSize(size, size)
    # Both set: cover the box keeping the first pass's aspect ratio, then crop the overhang.
    if width / height < target_w / target_h:
        upscale = (target_w, math.ceil(target_w * height / width / 8) * 8)
    else:
        upscale = (math.ceil(target_h * width / height / 8) * 8, target_h)
    return HiresSize(upscale, (target_w, target_h))


def _down8(value: float) -> int:
    return max(64, int(value) // 8 * 8)


def pipeline_steps(hires_steps: int, denoise: float, limit: int = 1000) -> tuple[int, int]:
    """(num_inference_steps, steps run) for img2img so that `hires_steps` steps run at strength `denoise`.

    `limit` is the scheduler's training steps, the most a schedule can have (it caps very low strengths).
    """
    total = min(limit, max(hires_steps, math.ceil(hires_steps / denoise - 1e-9)))
    while total < limit and int(total * denoise) < hires_steps:
        total += 1
    return total, min(int(total * denoise), total)


@dataclasses.dataclass
class HiresFix:
    request: GenerationRequest
    upscaler: Upscaler
    size: HiresSize | None = None
    conditioning: object = None
    num_inference_steps: int = 0
    steps: int = 0

    @classmethod
    def load(cls, request: GenerationRequest, manager) -> HiresFix:
        """Check and load the upscaler (a model file goes to the manager's device): before the pipeline loads."""
        return cls(request, load_upscaler(request.hires_upscaler, manager.config, device=manager.device))

    def prepare(self, model, encode, conditioning, width: int, height: int) -> None:
        """`encode(steps=...)` re-encodes the prompts when their edits must be scheduled over the hires steps."""
        request = self.request
        self.size = hires_size(request, width, height)
        limit = model.pipe.scheduler.config.get("num_train_timesteps", 1000)
        self.num_inference_steps, self.steps = pipeline_steps(
            request.hires_steps or request.steps, request.hires_denoise, limit
        )
        self.conditioning = encode(steps=self.steps) if conditioning.changes else conditioning

    def run(self, model, images, latents, seeds, call, on_step, cancel) -> list[Image.Image]:
        """The second pass over one pipeline call's first-pass `images` (and their final `latents`)."""
        from studio.generation.run import Stopped, call_pipeline

        request, (width, height), (final_w, final_h) = self.request, self.size.upscale, self.size.final
        if on_step is not None:
            on_step(StepInfo(call, request.steps, request.steps, 0.0, images[0], stage="first pass"))
        if cancel.is_set():
            raise Stopped()
        if self.upscaler.latent:
            init = _crop_latents(self.upscaler.upscale_latents(latents, width, height), final_w, final_h)
        else:
            init = [_crop(self.upscaler.upscale_image(image, width, height), final_w, final_h) for image in images]
        return call_pipeline(
            model, model.pipeline_for("img2img"), self.conditioning, seeds,
            num_inference_steps=self.num_inference_steps, guidance_scale=request.cfg, total_steps=self.steps,
            call=call, on_step=on_step, cancel=cancel, size=(final_w, final_h), stage="hires",
            extra=lambda generators: dict(image=init, strength=request.hires_denoise),
        )  # fmt: skip


def _crop_latents(latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    h, w = height // 8, width // 8
    top, left = (latents.shape[-2] - h) // 2, (latents.shape[-1] - w) // 2
    return latents[..., top : top + h, left : left + w]


def _crop(image: Image.Image, width: int, height: int) -> Image.Image:
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image if image.size == (width, height) else image.crop((left, top, left + width, top + height))
