"""Write a diffusers SD1.5/SDXL pipeline as ONE `.safetensors` in the original (A1111/CompVis) layout.

This is what A1111, ComfyUI and Forge load ("save merged model for A1111"), and the inverse of
diffusers' single-file conversion (`diffusers.loaders.single_file_utils`), so a saved file loads back
with `studio.models.single_file.load_single_file` to the same weights.

Original key layout:

    model.diffusion_model.*                   UNet (openaimodel: input_blocks / middle_block / output_blocks)
    first_stage_model.*                       VAE (encoder.down.N.block.M, mid.attn_1 with 1x1 convs)
    cond_stage_model.transformer.text_model.* SD1.5 text encoder (CLIP ViT-L, Hugging Face names)
    conditioner.embedders.0.transformer.text_model.*  SDXL text encoder 1 (same CLIP ViT-L names)
    conditioner.embedders.1.model.*           SDXL text encoder 2 (OpenCLIP names: resblocks, fused in_proj,
                                              text_projection stored transposed)

The mapping is computed from the model configs (layers per block, which blocks have attention and
samplers), so it works for any size, including the tiny test pipelines.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from studio.atomic import atomic_file
from studio.errors import UnsupportedModelError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."


# --- UNet ---------------------------------------------------------------------------------------

# diffusers ResnetBlock2D -> openaimodel ResBlock
_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Top-level layers. SDXL's `add_embedding` (pooled text + size/crop ids) is openaimodel's `label_emb`.
_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _unet_module_map(unet) -> dict[str, str]:
    """diffusers module path -> openaimodel module path, for every module that holds weights.

    openaimodel numbers its blocks flatly: `input_blocks.0` is conv_in, then each down block
    contributes `layers_per_block` (resnet [+ attention]) entries and, unless it is the last, one
    downsampler entry. Each up block contributes `layers_per_block + 1` entries, the last of which
    also carries the upsampler (after the attention, if the block has one). A transformer inside
    a block keeps the same inner names in both layouts (`transformer_blocks.0.attn1.to_q`...).
    """
    mapping = dict(_UNET_TOP_LEVEL)

    index = 1
    for b, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            mapping[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{index}.0"
            if getattr(block, "attentions", None):
                mapping[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if block.downsamplers:
            mapping[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1

    mapping["mid_block.resnets.0"] = "middle_block.0"
    mapping["mid_block.attentions.0"] = "middle_block.1"
    mapping["mid_block.resnets.1"] = "middle_block.2"

    index = 0
    for b, block in enumerate(unet.up_blocks):
        has_attention = bool(getattr(block, "attentions", None))
        for j in range(len(block.resnets)):
            mapping[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{index}.0"
            if has_attention:
                mapping[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{index}.1"
            index += 1
        if block.upsamplers:
            # The upsampler sits in the block's last entry, after its resnet (and attention).
            slot = 2 if has_attention else 1
            mapping[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{slot}.conv"
    return mapping


def _rename_by_module(state_dict: dict, module_map: dict[str, str], inner: dict[str, str] | None = None) -> dict:
    """Rename each key by its longest mapped module prefix; `inner` renames resnet sub-layers."""
    prefixes = sorted(module_map, key=len, reverse=True)
    renamed = {}
    for key, tensor in state_dict.items():
        source = next((p for p in prefixes if key.startswith(p + ".")), None)
        if source is None:
            raise UnsupportedModelError(
                f"No original-layout name for weight {key!r}; this model shape is not supported."
            )
        rest = key[len(source) + 1 :]
        if inner and ".resnets." in source:
            layer, _, param = rest.partition(".")
            rest = f"{inner.get(layer, layer)}.{param}"
        renamed[module_map[source] + "." + rest] = tensor
    return renamed


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    renamed = _rename_by_module(unet.state_dict(), _unet_module_map(unet), inner=_RESNET_NAMES)
    return {UNET_PREFIX + k: v for k, v in renamed.items()}


# --- VAE ----------------------------------------------------------------------------------------

_VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_module_map(vae) -> dict[str, str]:
    mapping = {
        "quant_conv": "quant_conv",
        "post_quant_conv": "post_quant_conv",
    }
    for part in ("encoder", "decoder"):
        mapping[f"{part}.conv_in"] = f"{part}.conv_in"
        mapping[f"{part}.conv_out"] = f"{part}.conv_out"
        mapping[f"{part}.conv_norm_out"] = f"{part}.norm_out"
        mapping[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        mapping[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        mapping[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            mapping[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        if block.downsamplers:
            mapping[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
    # The original decoder numbers its levels from the lowest resolution up: reversed.
    count = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = count - 1 - i
        for j in range(len(block.resnets)):
            mapping[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{level}.block.{j}"
        if block.upsamplers:
            mapping[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{level}.upsample.conv"
    return mapping


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    module_map = _vae_module_map(vae)
    prefixes = sorted(module_map, key=len, reverse=True)
    out = {}
    for key, tensor in vae.state_dict().items():
        source = next((p for p in prefixes if key.startswith(p + ".")), None)
        if source is None:
            raise UnsupportedModelError(
                f"No original-layout name for VAE weight {key!r}; this VAE shape is not supported."
            )
        rest = key[len(source) + 1 :]
        if ".attentions." in source:
            layer, _, param = rest.rpartition(".")
            rest = f"{_VAE_ATTENTION_NAMES[layer]}.{param}"
            if param == "weight" and tensor.ndim == 2:
                # The original attention uses 1x1 convolutions where diffusers uses linear layers.
                tensor = tensor[:, :, None, None]
        elif ".resnets." in source:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        out[VAE_PREFIX + module_map[source] + "." + rest] = tensor
    return out


# --- Text encoders ------------------------------------------------------------------------------


def clip_to_original(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """CLIP ViT-L keeps Hugging Face names under `<prefix>text_model.`.

    transformers 5 saves `CLIPTextModel` without the `text_model.` level, older versions (and every
    checkpoint in the wild) with it, so we add it back when missing.
    """
    out = {}
    for key, tensor in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight
        if not key.startswith("text_model."):
            key = "text_model." + key
        out[prefix + key] = tensor
    return out


_OPENCLIP_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def openclip_to_original(text_encoder, prefix: str = SDXL_OPENCLIP_PREFIX) -> dict[str, torch.Tensor]:
    """SDXL's second encoder in OpenCLIP names: q/k/v fused into `in_proj`, projection transposed."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        # OpenCLIP computes `x @ text_projection`; a Linear layer computes `x @ weight.T`.
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    state.pop("embeddings.position_ids", None)
    for n in range(text_encoder.config.num_hidden_layers):
        layer = f"encoder.layers.{n}."
        block = f"transformer.resblocks.{n}."
        for param in ("weight", "bias"):
            out[block + f"attn.in_proj_{param}"] = torch.cat(
                [state.pop(layer + f"self_attn.{p}_proj.{param}") for p in ("q", "k", "v")]
            )
            for name, original in _OPENCLIP_LAYER_NAMES.items():
                out[block + f"{original}.{param}"] = state.pop(layer + f"{name}.{param}")
    if state:
        raise UnsupportedModelError(f"Unexpected weights in SDXL text_encoder_2: {sorted(state)[:5]}.")
    return {prefix + k: v for k, v in out.items()}


# --- Whole pipeline -----------------------------------------------------------------------------


def pipeline_to_original(pipe) -> dict[str, torch.Tensor]:
    """The full original-layout state dict of an SD1.5 or SDXL diffusers pipeline."""
    state = {**unet_to_original(pipe.unet), **vae_to_original(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update(clip_to_original(pipe.text_encoder, SDXL_CLIP_PREFIX))
        state.update(openclip_to_original(pipe.text_encoder_2))
    else:
        state.update(clip_to_original(pipe.text_encoder, SD15_CLIP_PREFIX))
    return state


def save_as_single_file(pipe, path: Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Save `pipe` as one original-layout `.safetensors` at `path`, atomically.

    The file is written next to its destination and then renamed over it, so a crash or a full disk
    never leaves a half-written checkpoint under the final name (the model picker would list it).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UnsupportedModelError(f"{path.name}: single-file checkpoints are saved as .safetensors; rename it.")
    state = {k: v.detach().to("cpu").contiguous() for k, v in pipeline_to_original(pipe).items()}
    with atomic_file(path) as tmp:
        save_file(state, tmp, metadata={"format": "pt", **(metadata or {})})
    return path
