"""What image-to-image and inpainting add to a pipeline call: the prepared pictures, the strength, the pipeline.

`run.generate` stays the one entry point; it asks `plan_images` for an `ImageJob` (None for text-to-image on an
ordinary model) and merges `job.pipeline_kwargs(...)` into the call. The preparation itself (resize modes, mask
blur, "Only masked", compositing) is torch-free in `studio.generation.images`.

Dedicated inpainting checkpoints (a UNet reading 9 channels: latents + mask + masked picture) run every mode
through the inpaint pipeline, as A1111 conditions them: text-to-image is an inpaint of a gray picture under an
all-white mask at strength 1, image-to-image an inpaint under an all-white mask.
"""

from __future__ import annotations

import dataclasses

import torch
from PIL import Image

from studio.generation import images
from studio.generation.request import GenerationRequest
from studio.models.manager import LoadedModel


@dataclasses.dataclass
class ImageJob:
    mode: str
    """The pipeline that runs it: "img2img" or "inpaint" (`LoadedModel.pipeline_for`)."""

    prepared: images.PreparedImages
    strength: float
    masked_content: str = "original"

    def sampling_steps(self, steps: int) -> int:
        """Steps the pipeline runs: diffusers (like A1111) skips the first (1 - strength) of the schedule."""
        return min(int(steps * self.strength), steps)

    def pipeline_kwargs(
        self, pipe, seeds: list[int], generators: list[torch.Generator], width: int, height: int
    ) -> dict:
        """The image arguments of the pipeline call. One picture per seed, so that each image is drawn from its own
        generator (diffusers encodes a lone picture with the first generator only) and can be redone alone."""
        batch = len(generators)
        kwargs = {"image": [self.prepared.image] * batch, "strength": self.strength}
        if self.mode == "img2img":
            return kwargs
        kwargs.update(mask_image=self.prepared.mask, width=width, height=height)
        if self.masked_content in ("latent noise", "latent nothing"):
            kwargs.update(_latent_start(pipe, self.prepared, self.masked_content, seeds, generators, width, height))
        return kwargs

    def finish(self, generated: list[Image.Image]) -> list[Image.Image]:
        return [self.prepared.finish(image) for image in generated]


def plan_images(model: LoadedModel, request: GenerationRequest, width: int, height: int) -> ImageJob | None:
    """The job for this request on this model (None: a plain text-to-image call)."""
    inpainting_model = is_inpainting_model(model)
    if request.mode == "txt2img":
        if not inpainting_model:
            return None
        gray = Image.new("RGB", (width, height), (127, 127, 127))
        white = Image.new("L", (width, height), 255)
        return ImageJob("inpaint", images.PreparedImages(image=gray, mask=white), strength=1.0)
    prepared = images.prepare(request, width, height)
    if request.mode == "img2img":
        if not inpainting_model:
            return ImageJob("img2img", prepared, request.strength)
        prepared.mask = Image.new("L", (width, height), 255)
        return ImageJob("inpaint", prepared, request.strength)
    return ImageJob("inpaint", prepared, request.strength, request.masked_content)


def is_inpainting_model(model: LoadedModel) -> bool:
    return model.pipe.unet.config.in_channels == 9


def output_size(model: LoadedModel, request: GenerationRequest) -> tuple[int, int]:
    """The processing size: as asked, else the model's native size (text) or the input's shape (pictures)."""
    if request.init_image is None or (request.width and request.height):
        native = model.kind.native_size
        return request.width or native, request.height or native
    width, height = images.default_size(request.init_image, model.kind.native_size)
    return request.width or width, request.height or height


def infotext_params(request: GenerationRequest) -> dict:
    """A1111's img2img/inpaint infotext keys (modules/processing.py writes them under these names)."""
    if request.init_image is None:
        return {}
    params = {"Denoising strength": f"{request.strength:g}"}
    if request.resize_mode != "just resize":
        params["Resize mode"] = request.resize_mode.capitalize()
    if request.mask is None:
        return params
    params["Mask blur"] = request.mask_blur or None
    if request.inpaint_not_masked:
        params["Mask mode"] = "Inpaint not masked"
    if request.masked_content != "original":
        params["Masked content"] = request.masked_content
    if request.inpaint_full_res:
        params["Inpaint area"] = "Only masked"
        params["Masked area padding"] = request.inpaint_full_res_padding
    return params


def _latent_start(pipe, prepared, masked_content, seeds, generators, width, height) -> dict:
    """ "latent noise" / "latent nothing": the masked area of the encoded picture becomes noise / zeros (A1111).

    The pipeline takes 4-channel `image` as latents as they are; the masked picture's latents (what a 9-channel
    UNet reads) are encoded here too, since the pipeline cannot mask latents itself.
    """
    device = pipe._execution_device
    dtype = pipe.unet.dtype
    batch = len(generators)
    pixels = pipe.image_processor.preprocess(prepared.image, height=height, width=width)
    pixels = pixels.to(device=device, dtype=dtype).repeat(batch, 1, 1, 1)
    mask = pipe.mask_processor.preprocess(prepared.mask, height=height, width=width).to(device=device, dtype=dtype)
    with torch.no_grad():
        latents = pipe._encode_vae_image(pixels, generator=generators)
        latent_mask = torch.nn.functional.interpolate(mask, size=latents.shape[-2:])
        if masked_content == "latent noise":
            noise = torch.stack(
                [torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(seed)) for seed in seeds]
            )
            latents = latents * (1 - latent_mask) + noise.to(device=device, dtype=dtype) * latent_mask
        else:
            latents = latents * (1 - latent_mask)
        if pipe.unet.config.in_channels == 9:
            masked = pipe._encode_vae_image(pixels * (mask < 0.5), generator=generators)
        else:
            masked = torch.zeros_like(latents)  # read only by 9-channel UNets
    return {"image": latents, "masked_image_latents": masked}
