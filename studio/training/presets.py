"""Training presets per VRAM budget and model kind, and a peak-VRAM estimate from parameter counts.

    preset = pick_preset(ModelKind.SDXL, total_vram_bytes=12 * GB)     # "sdxl-12gb"; None (no accelerator): "sdxl-cpu"
    request = TrainingRequest(data=..., model=..., name=..., **preset.settings)
    print(estimate_vram(request, ModelKind.SDXL).summary())

The estimate adds up what sits on the GPU while the UNet trains (the VAE and text encoders have left
it after the caches are built, unless the text encoder is trained):

    weights     parameter count x bytes per parameter (fp16/bf16: 2, fp32: 4)
    LoRA        trainable parameters x (fp32 weight 4 + fp32 gradient 4 + optimizer state: AdamW 8, 8-bit AdamW 2)
    activations bytes per image pixel x pixels x batch size, measured per kind with and without
                gradient checkpointing (the constants below)
    overhead    CUDA context and allocator slack

Parameter counts are exact (counted from the bundled configs; tests/test_training_presets.py recounts
them). The activation constants come from public reports of fp16 LoRA runs on GPUs (SD1.5 at 512 px,
SDXL at 1024 px). bench/bench_training_memory.py measures the activation memory of a real step on the
full-size UNets on a CPU (bf16 autocast): 3,600-3,750 / 970 bytes per pixel for SD1.5 and 8,100 / 1,760 for
SDXL (without / with gradient checkpointing), 0.27x and 0.53x of the constants. A GPU adds what a CPU
does not show (fp32 norms under CUDA autocast, cuDNN workspaces, caching-allocator slack), so the
constants are kept as a conservative bound: expect real peaks at or below the estimate. Not yet
checked on a GPU. Torch-free, so the UI can show it.

Without an accelerator the GPU presets' memory savings only cost time, so a CPU gets its own preset: the
plain AdamW (bitsandbytes' 8-bit one needs CUDA), batch 1 (a small data set gets more updates per pass)
and, for SD1.5, no gradient checkpointing: recomputing activations adds about one more UNet forward pass
to each step to save ~1 GB at 512 px (bench_training_memory), next to a run that needs ~7 GB of RAM in
fp32. SDXL at 1024 px keeps gradient checkpointing on a CPU: its activations alone (~8.5 GB in bf16,
twice that in fp32) would not fit next to the weights in the 16-32 GB of RAM of a typical machine.
"""

from __future__ import annotations

import dataclasses

from studio.errors import InvalidRequestError
from studio.models.kinds import ModelKind
from studio.training.request import TrainingRequest

GB = 1024**3

# Exact parameter counts of the real architectures (configs in studio/models/configs).
PARAMS = {
    ModelKind.SD15: {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    ModelKind.SDXL: {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}
# LoRA parameters per unit of rank on the default targets (UNet attention to_q/k/v/out.0; text encoder
# q/k/v/out_proj): rank r adds r x (in_features + out_features) per layer.
LORA_PARAMS_PER_RANK = {
    ModelKind.SD15: {"unet": 199_296, "text_encoder": 73_728},
    ModelKind.SDXL: {"unet": 1_451_520, "text_encoder": 73_728, "text_encoder_2": 327_680},
}
# Activation bytes per training-image pixel (fp16): without / with gradient checkpointing.
ACTIVATION_BYTES_PER_PIXEL = {
    ModelKind.SD15: (13_400, 3_800),
    ModelKind.SDXL: (15_300, 3_300),
}
OVERHEAD_BYTES = int(0.8 * GB)
_OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2}


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    kind: ModelKind
    vram_gb: int
    """The card this preset is sized for; 0: a machine without an accelerator (CPU RAM)."""
    settings: dict
    """TrainingRequest fields this preset sets."""

    @property
    def label(self) -> str:
        return f"{f'{self.vram_gb} GB' if self.vram_gb else 'CPU, no GPU'} · {self.kind.label}"


def _preset(kind: ModelKind, vram_gb: int, **settings) -> Preset:
    base = dict(mixed_precision="auto", optimizer="auto", gradient_accumulation=1, train_text_encoder=False)
    return Preset(f"{kind.value}-{vram_gb}gb" if vram_gb else f"{kind.value}-cpu", kind, vram_gb, {**base, **settings})


_CPU = dict(batch_size=1, rank=16, alpha=16.0, learning_rate=1e-4, optimizer="adamw")

PRESETS = {
    p.name: p
    for p in (
        _preset(ModelKind.SD15, 0, resolution=512, gradient_checkpointing=False, **_CPU),
        _preset(ModelKind.SDXL, 0, resolution=1024, gradient_checkpointing=True, **_CPU),
        _preset(
            ModelKind.SD15,
            8,
            resolution=512,
            batch_size=2,
            rank=16,
            alpha=16.0,
            gradient_checkpointing=True,
            learning_rate=1e-4,
        ),
        _preset(
            ModelKind.SD15,
            12,
            resolution=512,
            batch_size=2,
            rank=32,
            alpha=32.0,
            gradient_checkpointing=False,
            learning_rate=1e-4,
        ),
        _preset(
            ModelKind.SD15,
            24,
            resolution=768,
            batch_size=4,
            rank=32,
            alpha=32.0,
            gradient_checkpointing=True,
            learning_rate=1e-4,
            train_text_encoder=True,
        ),
        _preset(
            ModelKind.SDXL,
            8,
            resolution=768,
            batch_size=1,
            rank=8,
            alpha=8.0,
            gradient_checkpointing=True,
            learning_rate=1e-4,
            gradient_accumulation=2,
        ),
        _preset(
            ModelKind.SDXL,
            12,
            resolution=1024,
            batch_size=1,
            rank=16,
            alpha=16.0,
            gradient_checkpointing=True,
            learning_rate=1e-4,
            gradient_accumulation=2,
        ),
        _preset(
            ModelKind.SDXL,
            24,
            resolution=1024,
            batch_size=2,
            rank=32,
            alpha=32.0,
            gradient_checkpointing=True,
            learning_rate=1e-4,
            train_text_encoder=True,
        ),
    )
}


def presets_for(kind: ModelKind) -> list[Preset]:
    """The CPU preset first, then the GPU ones from the smallest card."""
    return sorted((p for p in PRESETS.values() if p.kind is kind), key=lambda p: p.vram_gb)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidRequestError(f"Unknown preset {name!r}; use one of {', '.join(PRESETS)}.") from None


def pick_preset(kind: ModelKind, total_vram_bytes: int | None) -> Preset:
    """The largest preset for `kind` that fits the card, the smallest GPU one on small cards; without an
    accelerator (None) the CPU preset."""
    cpu, *gpu = presets_for(kind)
    if total_vram_bytes is None:
        return cpu
    # Cards report a little less than their label (a "12 GB" RTX 3060 shows ~11.7 GiB).
    fitting = [p for p in gpu if p.vram_gb * GB * 0.9 <= total_vram_bytes]
    return fitting[-1] if fitting else gpu[0]


@dataclasses.dataclass(frozen=True)
class VramEstimate:
    parts: dict[str, int]
    """weights / lora / activations / overhead, in bytes."""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def summary(self) -> str:
        detail = ", ".join(f"{name} {value / GB:.1f}" for name, value in self.parts.items())
        return f"Estimated peak VRAM {self.total / GB:.1f} GB ({detail})"


def resolve_precision(mixed_precision: str, device_type: str, bf16_supported: bool = False) -> str:
    """ "no", "fp16" or "bf16" for a request's `mixed_precision` on a device type.

    `bf16_supported`: the GPU has bf16, or the CPU computes it natively (then bf16 weights with fp32 LoRA
    parameters under autocast, several times faster than fp32 there); a CPU without it stays in fp32.
    """
    if mixed_precision != "auto":
        return mixed_precision
    if device_type == "cpu":
        return "bf16" if bf16_supported else "no"
    return "bf16" if bf16_supported else "fp16"


def estimate_vram(request: TrainingRequest, kind: ModelKind, *, device_type: str = "cuda") -> VramEstimate:
    """Peak accelerator memory of a run with these settings on the full-size `kind` architecture."""
    precision = resolve_precision(request.mixed_precision, device_type)
    weight_bytes = 4 if precision == "no" else 2
    trained = ["unet"] + ([c for c in LORA_PARAMS_PER_RANK[kind] if c != "unet"] if request.train_text_encoder else [])
    on_gpu = ["unet"] + trained[1:]  # text encoders stay on the GPU only when trained
    weights = sum(PARAMS[kind][c] for c in on_gpu) * weight_bytes
    optimizer = "adamw8bit" if request.optimizer == "auto" and device_type == "cuda" else request.optimizer
    per_param = 4 + 4 + _OPTIMIZER_BYTES.get(optimizer, 8)
    lora = sum(LORA_PARAMS_PER_RANK[kind][c] for c in trained) * request.rank * per_param
    without, with_checkpointing = ACTIVATION_BYTES_PER_PIXEL[kind]
    per_pixel = with_checkpointing if request.gradient_checkpointing else without
    activations = per_pixel * request.resolution**2 * request.batch_size * (2 if precision == "no" else 1)
    return VramEstimate({"weights": weights, "lora": lora, "activations": activations, "overhead": OVERHEAD_BYTES})


def detected_vram_bytes(device: str = "auto") -> int | None:
    """Memory of the accelerator that would train, or None without one (probed when called, never at import).

    `device` is the configured one ("auto", "cpu", "cuda", "mps"): "cpu" means no accelerator even on a GPU
    machine. Apple silicon shares its RAM: Metal's recommended working set stands for the card's memory."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    if device in ("auto", "mps") and torch.backends.mps.is_available():
        return int(torch.mps.recommended_max_memory())
    return None
