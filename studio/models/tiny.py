"""Tiny SD1.5- and SDXL-shaped pipelines with random weights.

They are built from the same classes as the real models, only with small configs, so every code
path of the studio (loading, LoRA, training, metadata) runs offline and fast: the `demo-sd15` and
`demo-sdxl` models of the app and the fixtures of the test suite. They draw noise, not pictures.

The tokenizer is a byte-level CLIP BPE vocabulary built in code: 256 byte symbols, the same with
`</w>`, then `<|startoftext|>` and `<|endoftext|>`, and no merges. It tokenizes any prompt with no
unknown token, and end-of-text is the highest id (CLIP pools the text embedding at the argmax id).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from studio.models.kinds import ModelKind

TEXT_HIDDEN = 32
BOS_ID, EOS_ID = 512, 513  # after 256 byte symbols and their 256 `</w>` forms


def _bytes_to_unicode() -> list[str]:
    """CLIP's printable stand-in for each byte value, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    chars = {}
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_level_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    symbols = _bytes_to_unicode()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = BOS_ID
    vocab["<|endoftext|>"] = EOS_ID
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=77)


def _text_config(**extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=1000,
        **extra,
    )


def _vae() -> AutoencoderKL:
    # Four blocks like the real VAE, so latents are 1/8 of the image size as users expect.
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )


def _scheduler(prediction_type: str) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        timestep_spacing="leading",
        steps_offset=1,
    )
    # A saved config lists every option explicitly; rebuild from such a config so that other samplers
    # made from it (`from_config`) behave the same here as after save_pretrained/from_pretrained.
    explicit = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    return EulerDiscreteScheduler.from_config(explicit)


def build_tiny_sd15(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        tokenizer=byte_level_tokenizer(),
        scheduler=_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 2),
        # pooled text embedding of text_encoder_2 + 6 time ids, each embedded to time_embed_dim
        projection_class_embeddings_input_dim=TEXT_HIDDEN + 6 * time_embed_dim,
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=TEXT_HIDDEN)),
        tokenizer=byte_level_tokenizer(),
        tokenizer_2=byte_level_tokenizer(pad_token="!"),
        scheduler=_scheduler(prediction_type),
        force_zeros_for_empty_prompt=True,
    )


def build_tiny(kind: ModelKind, seed: int = 0, prediction_type: str = "epsilon"):
    """The same weights for the same seed, without disturbing the caller's global RNG."""
    builder = build_tiny_sdxl if kind is ModelKind.SDXL else build_tiny_sd15
    with torch.random.fork_rng(devices=[]):
        return builder(seed=seed, prediction_type=prediction_type)


def save_tiny(kind: ModelKind, folder: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny pipeline as a diffusers folder (safetensors), the format real models come in."""
    build_tiny(kind, seed=seed, prediction_type=prediction_type).save_pretrained(folder, safe_serialization=True)
    return Path(folder)
