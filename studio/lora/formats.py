"""What a LoRA file is, from its safetensors header alone (tensor names, shapes and `__metadata__`).

Used by the library scan (instant even for hundreds of files) and by `read_lora`. Nothing here loads a tensor.
"""

from __future__ import annotations

import re

from studio.errors import LoraError
from studio.models.kinds import ModelKind

# Cross-attention input width = the text embedding width the UNet was trained for.
_CROSS_ATTENTION_KIND = {768: ModelKind.SD15, 2048: ModelKind.SDXL}
_CROSS_ATTENTION_KEY = re.compile(r"attn2[._]to_k[._](lora_down|lora_A|lora\.down)")
_LYCORIS_MARKERS = {
    "hada_w1_a": "LoHa",
    "hada_w2_a": "LoHa",
    "lokr_w1": "LoKr",
    "lokr_w1_a": "LoKr",
    "lokr_w2": "LoKr",
    "oft_diag": "OFT",
    "oft_blocks": "OFT",
    "b1.weight": "(IA)^3 / GLoRA",
    "a1.weight": "GLoRA",
}


def lora_format(keys) -> str:
    """ "kohya" | "diffusers" | "lycoris:<type>"; raises LoraError when the keys are not a LoRA at all."""
    keys = [k for k in keys if k != "__metadata__"]
    for key in keys:
        for marker, lycoris_type in _LYCORIS_MARKERS.items():
            if key.endswith(marker) or f".{marker}" in key:
                return f"lycoris:{lycoris_type}"
    if any(k.endswith((".lora_down.weight", ".lora_up.weight")) and k.startswith("lora_") for k in keys):
        return "kohya"
    if any(re.search(r"\.lora_[AB]\.weight$|\.lora(_linear_layer)?\.(down|up)\.weight$", k) for k in keys):
        return "diffusers"
    if any(k.startswith(("model.diffusion_model.", "conditioner.", "cond_stage_model.")) for k in keys):
        raise LoraError("is a full model checkpoint, not a LoRA; put it in the models folder instead.")
    raise LoraError("has no LoRA layers (no lora_down/lora_up or lora_A/lora_B tensors); it is not a LoRA.")


def detect_kind(shapes: dict[str, list[int]], metadata: dict[str, str], *, name: str) -> ModelKind:
    """SD1.5 or SDXL from metadata, key names and shapes; LoraError for SD2 and other bases."""
    architecture = (metadata.get("modelspec.architecture") or "").lower()
    base_version = (metadata.get("ss_base_model_version") or "").lower()
    if "stable-diffusion-xl" in architecture or base_version.startswith("sdxl"):
        return ModelKind.SDXL
    if "stable-diffusion-v1" in architecture or base_version.startswith("sd_v1"):
        return ModelKind.SD15
    if "stable-diffusion-v2" in architecture or base_version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        raise LoraError(f"{name} is a Stable Diffusion 2.x LoRA; Studio supports SD1.5 and SDXL.")
    if architecture and "stable-diffusion" not in architecture:
        raise LoraError(f"{name} is for {architecture!r}, not SD1.5 or SDXL.")
    keys = list(shapes)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return ModelKind.SDXL
    for key in keys:
        if _CROSS_ATTENTION_KEY.search(key) and len(shapes[key]) >= 2:
            width = shapes[key][1]
            if width == 1024:
                raise LoraError(
                    f"{name} is a Stable Diffusion 2.x LoRA (text width 1024); Studio supports SD1.5 and SDXL."
                )
            if width in _CROSS_ATTENTION_KIND:
                return _CROSS_ATTENTION_KIND[width]
    # Layouts only SDXL has: SGM block names (kohya trains SDXL on the SGM UNet), added-conditioning
    # embedding, and more than one transformer layer per attention block.
    if any(re.search(r"lora_unet_(input|output)_blocks|label_emb|add_embedding", k) for k in keys):
        return ModelKind.SDXL
    if any(re.search(r"transformer_blocks[._][1-9]", k) for k in keys):
        return ModelKind.SDXL
    return ModelKind.SD15


def components_of(keys) -> list[str]:
    """Which pipeline components a LoRA touches: "unet", "text_encoder", "text_encoder_2"."""
    found = set()
    for key in keys:
        if key.startswith(("lora_unet_", "unet.")):
            found.add("unet")
        elif key.startswith(("lora_te2_", "text_encoder_2.")):
            found.add("text_encoder_2")
        elif key.startswith(("lora_te_", "lora_te1_", "text_encoder.")):
            found.add("text_encoder")
    return [c for c in ("unet", "text_encoder", "text_encoder_2") if c in found]


def rank_of(shapes: dict[str, list[int]]) -> int | None:
    """The most common rank: the first dimension of the down/A matrices."""
    ranks: dict[int, int] = {}
    for key, shape in shapes.items():
        if key.endswith((".lora_down.weight", ".lora_A.weight", ".down.weight")) and shape:
            ranks[shape[0]] = ranks.get(shape[0], 0) + 1
    return max(ranks, key=ranks.get) if ranks else None
