"""Studio settings: one frozen dataclass, built by launch.py or the CLI and passed down.

Nothing here touches the hardware; `resolve_device` and `resolve_dtype` are called by the model
manager when it first needs a device, never at import time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

# Folders default to the checkout (beside launch.py), wherever the app is started from.
ROOT = Path(__file__).resolve().parent.parent
MEMORY_MODES = ("auto", "none", "model-offload", "sequential-offload")
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class StudioConfig:
    models_dir: Path = ROOT / "models"
    """Base models: diffusers folders and single `.safetensors` checkpoints, listed in the model picker."""

    loras_dir: Path = ROOT / "loras"
    """Adapters: one folder or `.safetensors` file per LoRA."""

    outputs_dir: Path = ROOT / "outputs"
    """Generated images (PNG with A1111 infotext), grids and training runs."""

    embeddings_dir: Path = ROOT / "embeddings"
    """Textual-inversion embeddings (`.safetensors`), used in a prompt by file name."""

    device: str = "auto"
    """`auto` picks CUDA, then Apple MPS, then CPU."""

    dtype: str = "auto"
    """`auto` is float16 on CUDA/MPS and float32 on CPU."""

    memory_mode: str = "auto"
    """`auto` plans offload from free VRAM and model size; see `studio.models.memory`."""

    vae_tiling: bool = False
    """Decode latents in tiles: slower, but large images fit in little VRAM."""

    available_memory: int | None = None
    """Bytes a generation may use beyond the loaded model; None measures the device's free memory each time
    (`studio.generation.memory_plan`). Set it to leave room for other programs."""

    cached_pipelines: int = 2
    """How many recently used pipelines stay in CPU RAM so switching back is fast."""

    allow_pickle: bool = False
    """Load `.ckpt`/`.bin` pickle files. Pickles can run code; off unless the user opts in."""

    default_model: str = "demo-sd15"

    def __post_init__(self):
        for field, value, allowed in (
            ("memory_mode", self.memory_mode, MEMORY_MODES),
            ("device", self.device, DEVICES),
            ("dtype", self.dtype, DTYPES),
        ):
            if value not in allowed:
                raise ValueError(f"{field}={value!r} is not one of {', '.join(allowed)}.")
        if self.cached_pipelines < 1:
            raise ValueError(f"cached_pipelines={self.cached_pipelines} must be at least 1.")
        for field in ("models_dir", "loras_dir", "outputs_dir", "embeddings_dir"):
            object.__setattr__(self, field, Path(getattr(self, field)).expanduser())
