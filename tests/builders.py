"""Models that only tests and benchmarks build: random full-size pipelines and a tiny CLIP feature model.

The real SD1.5 / SDXL architecture with random weights is an offline stand-in for a full-size checkpoint.

Built from Studio's bundled configs and the bundled CLIP tokenizer, so no download is needed. Random weights
draw noise, so this measures and tests the plumbing at real size (memory, speed, key names, training), not
image quality. Used by the full-size tests and by bench/.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.models.kinds import ModelKind


def build_random_pipeline(kind: ModelKind, dtype: torch.dtype):
    """The real architecture with random weights, from the bundled configs and the real CLIP tokenizer."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from studio.models.clip_tokenizer import clip_tokenizer
    from studio.models.single_file import BUNDLED_CONFIGS

    folder = BUNDLED_CONFIGS[kind]
    torch.manual_seed(0)
    # Cast each part as soon as it is built, so peak memory stays near one fp32 component.
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).to(dtype)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).to(dtype)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).to(dtype)
    if kind is ModelKind.SDXL:
        config_2 = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
        text_encoder_2 = CLIPTextModelWithProjection(config_2).to(dtype)
        return StableDiffusionXLPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"),
            scheduler=EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
        )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=PNDMScheduler.from_pretrained(folder, subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_feature_model(folder: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny random CLIP image encoder in the Hub layout: tests and benchmarks use it offline.

    Its embeddings are random projections of the pixels, not semantic ones, but every code path
    (processor, projection, safetensors loading) is the one the real encoder goes through.
    """
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
    model.save_pretrained(folder, safe_serialization=True)
    size = {"shortest_edge": image_size}
    CLIPImageProcessorPil(size=size, crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return Path(folder)
