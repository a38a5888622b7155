"""Training on the full-size SD1.5 architecture: the real 860M-parameter UNet, CLIP-L and VAE (random weights,
built from the bundled configs, so nothing is downloaded). Tiny models can hide what only shows at real
size: LoRA target names, parameter counts, the kohya key mapping of every real layer, memory and dtype handling.

Random weights draw noise, so the check is the same as for the demo models: the validation image the trained
model drew is redrawn by a fresh pipeline with the saved file loaded, and differs from the base model's image.
"""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open

from tests.helpers import draw, make_config, make_photo_folder, pixels, quick_request, run_training

pytestmark = pytest.mark.slow  # trains the full-size SD1.5 architecture


def test_full_size_sd15_adapter_reloads_in_both_formats_to_the_trained_image(full_size_sd15, tmp_path):
    config = make_config(tmp_path)
    photos = make_photo_folder(tmp_path / "photos")
    request = quick_request(
        photos,
        model=str(full_size_sd15),
        name="alps-full",
        steps=2,
        batch_size=1,
        learning_rate=1e-2,
        validation_steps=2,
    )
    folder, events = run_training(request, config)
    assert all(np.isfinite(e.loss) for e in events if e.kind == "step")
    with safe_open(str(folder / "alps-full.safetensors"), "pt") as f:
        kohya_keys = list(f.keys())
    # 16 attention blocks x 2 attentions x q/k/v/out of the real UNet, each with down, up and alpha.
    assert len(kohya_keys) == 16 * 2 * 4 * 3 and all(k.startswith("lora_unet_") for k in kohya_keys)

    sample = folder / "samples" / "step-000002.png"
    trained = pixels(Image.open(sample))
    pipe = StableDiffusionPipeline.from_pretrained(full_size_sd15, torch_dtype=torch.float32)
    base = pixels(draw(pipe, sample))
    for weight_name in ("pytorch_lora_weights.safetensors", "alps-full.safetensors"):
        pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=weight_name.split(".")[0])
        assert np.abs(pixels(draw(pipe, sample)) - trained).max() <= 1.0, weight_name
        pipe.delete_adapters(weight_name.split(".")[0])
    assert np.abs(base - trained).mean() > 5.0  # 34 measured: the adapter visibly changes the image
