"""Image-to-image, inpainting and hires fix on the full-size SD1.5 architecture (random weights, 64 px, few steps).

Tiny models can hide what only shows at real size (the real VAE's 8x downscale and channel counts, the real UNet's
attention resolutions); these checks repeat the tiny-model ones where they matter most: the same seed gives the
same pixels, strength moves the result away from the input in order, inpainting keeps every pixel outside the
blurred mask, and the hires fix's first pass is the text-to-image picture of the same seed.
"""

import dataclasses

import numpy as np
import pytest
import torch

from studio.generation.request import GenerationRequest
from studio.generation.run import generate, latent_preview
from studio.models.manager import ModelManager
from tests.helpers import mean_abs_diff, pixels
from tests.test_img2img import picture
from tests.test_inpaint import assert_kept, outside, square_mask

pytestmark = pytest.mark.slow  # loads the full-size SD1.5 architecture


@pytest.fixture(scope="module")
def manager(full_size_sd15, tmp_path_factory):
    from tests.helpers import make_config

    return ModelManager(make_config(tmp_path_factory.mktemp("studio")))


def request(model, **overrides) -> GenerationRequest:
    fields = dict(model=str(model), prompt="satellite image of mountains", steps=4, seed=11, width=64, height=64)
    return GenerationRequest(**{**fields, **overrides})


def test_img2img_is_reproducible_and_strength_orders_the_distance_to_the_input(manager, full_size_sd15):
    first = generate(manager, request(full_size_sd15, init_image=picture(), strength=0.5)).images[0]
    again = generate(manager, request(full_size_sd15, init_image=picture(), strength=0.5)).images[0]
    assert (pixels(first) == pixels(again)).all()

    with manager.acquire(str(full_size_sd15)) as loaded:
        pipe = loaded.pipe
        with torch.no_grad():
            image = pipe.image_processor.preprocess(picture()).to(pipe.vae.dtype)
            encoded = pipe.vae.encode(image).latent_dist.mode()
        reference = latent_preview(encoded * pipe.vae.config.scaling_factor, loaded.kind)
    distance = {}
    for strength in (0.25, 1.0):
        steps = []
        generate(manager, request(full_size_sd15, init_image=picture(), strength=strength), on_step=steps.append)
        distance[strength] = mean_abs_diff(steps[-1].preview, reference)
    assert distance[0.25] < distance[1.0], distance


def test_inpainting_keeps_every_pixel_outside_the_blurred_mask(manager, full_size_sd15):
    result = generate(manager, request(full_size_sd15, init_image=picture(), mask=square_mask(), strength=0.75))
    out = result.images[0]
    assert_kept(out, picture(), outside((24, 24, 40, 40)))
    assert np.abs(pixels(out)[26:38, 26:38] - pixels(picture())[26:38, 26:38]).mean() > 5


def test_hires_fix_first_pass_is_the_text_to_image_picture_and_the_result_is_upscaled(manager, full_size_sd15):
    plain = generate(manager, request(full_size_sd15)).images[0]
    events = []
    hires = dataclasses.replace(request(full_size_sd15), hires_scale=2, hires_steps=1, hires_denoise=0.5)
    result = generate(manager, hires, on_step=events.append)
    assert result.images[0].size == (128, 128)
    first = next(event.preview for event in events if event.stage == "first pass")
    assert (pixels(first) == pixels(plain)).all()
