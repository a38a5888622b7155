"""Out-of-memory handling, with a real VAE that runs out of memory when it decodes without tiling."""

import pytest
import torch
from diffusers import AutoencoderKL

from studio.errors import OutOfMemoryError
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.manager import ModelManager
from tests.helpers import pixels


class VaeWithSmallGpu(AutoencoderKL):
    """Behaves like a card too small to decode the whole image at once: only tiled decoding fits."""

    def decode(self, z, *args, **kwargs):
        if not self.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().decode(z, *args, **kwargs)


def small_gpu_vae(vae: AutoencoderKL) -> VaeWithSmallGpu:
    replacement = VaeWithSmallGpu.from_config(vae.config)
    replacement.load_state_dict(vae.state_dict())
    return replacement


def test_decode_out_of_memory_is_retried_with_vae_tiling(studio_config):
    manager = ModelManager(studio_config)
    request = GenerationRequest(model="demo-sd15", prompt="mountains", steps=2, seed=1, width=64, height=64)
    with manager.acquire("demo-sd15") as model:
        model.pipe.vae.enable_tiling()
    tiled_reference = generate(manager, request).images[0]
    with manager.acquire("demo-sd15") as model:
        model.pipe.vae = small_gpu_vae(model.pipe.vae)
        model.pipe.vae.disable_tiling()
    result = generate(manager, request)
    assert (pixels(result.images[0]) == pixels(tiled_reference)).all()
    assert manager.active.pipe.vae.use_tiling  # later images decode tiled straight away


def test_out_of_memory_while_sampling_suggests_the_next_memory_mode(studio_config):
    manager = ModelManager(studio_config)
    request = GenerationRequest(model="demo-sd15", prompt="mountains", steps=2, seed=1, width=64, height=64)

    def exhaust_memory(info):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemoryError, match="--memory-mode model-offload"):
        generate(manager, request, on_step=exhaust_memory)
    assert generate(manager, request).images  # the app keeps working
