"""What a training run is asked to do: one frozen `TrainingRequest`, checked by `validate()`.

Torch-free on purpose: the UI and the CLI build and validate requests (and show VRAM estimates)
without importing torch, and the request travels to the training child process as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from studio.errors import DatasetError, InvalidRequestError, TrainingError, UnsafePathError
from studio.lora.folder import check_adapter_name
from studio.training.dataset import DatasetReport, DatasetRequest, scan_dataset
from studio.validation import check_path_text, check_range

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
OPTIMIZERS = ("auto", "adamw", "adamw8bit")


@dataclasses.dataclass(frozen=True)
class TrainingRequest:
    data: Path
    """Folder of training images (jpg/png/webp, subfolders too)."""

    model: str
    """Base model: demo-sd15, demo-sdxl, a models-folder entry, a path or a Hub id."""

    name: str
    """Adapter name: the output lands in `loras/<name>/`."""

    caption: str | None = None
    """Caption for images with neither a metadata.jsonl line nor a .txt file."""

    caption_column: str = "text"
    """Column of metadata.jsonl that holds captions."""

    trigger: str | None = None
    """Word prepended to every caption ("trigger, caption")."""

    steps: int = 500
    """Optimizer steps (one step = batch_size x gradient_accumulation images). Ignored when `epochs` is set."""

    epochs: int | None = None
    """Passes over the data set; when set, steps = epochs x batches per epoch / gradient_accumulation."""

    rank: int = 16
    alpha: float = 16.0
    """LoRA scale is alpha / rank; alpha = rank means scale 1."""

    train_text_encoder: bool = False
    """Also put LoRA on the text encoder(s): stronger effect, more memory, no text-embedding cache."""

    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    batch_size: int = 1
    gradient_accumulation: int = 1
    resolution: int = 512
    """Training size in pixels; images keep their aspect ratio in buckets of about resolution**2 pixels."""

    buckets: bool = True
    """Aspect-ratio buckets; off squares every image (center crop)."""

    random_flip: bool = True
    """Mirror images at random (both orientations are cached once)."""

    seed: int = 42
    mixed_precision: str = "auto"
    """auto: fp16 (bf16 where supported) on GPUs; bf16 autocast on CPUs that compute bf16 natively, else fp32
    ("no"). The adapter's settings record the precision that ran."""

    gradient_checkpointing: bool = False
    optimizer: str = "auto"
    """auto: 8-bit AdamW when bitsandbytes works on this machine (CUDA), else AdamW."""

    min_snr_gamma: float | None = None
    """Min-SNR loss weighting (5 is the paper's value); None trains with plain MSE."""

    noise_offset: float = 0.0
    """Adds a per-channel constant to the noise (0.05-0.1) so the model learns very dark/bright images."""

    validation_prompt: str | None = None
    """Prompt for sample images; None uses the first caption."""

    samples: bool = True
    """Draw sample images (every `validation_every` steps and one at the end); off draws none."""

    validation_every: int = 0
    """Sample images every N steps (same seed each time); 0 only at the end."""

    validation_seed: int = 1234
    validation_steps: int = 12
    """Sampling steps of the validation images: a preview (with CFG each step costs two UNet passes)."""

    validation_size: int = 0
    """Side of the (square) sample images in pixels; 0: half the training resolution (at least 64), a quarter
    of the pixels, so a sample on a CPU costs a few training steps rather than dozens."""

    checkpoint_every: int = 100
    """Save a resumable checkpoint every N steps (and always on Stop); 0 only on Stop."""

    resume: bool = False
    """Continue the run of the same name from its last checkpoint."""

    def validate(self) -> None:
        check_adapter_name(self.name)
        check_path_text("Dataset folder", self.data)
        data = Path(self.data).expanduser()
        if not data.is_dir():
            raise DatasetError(f"Dataset folder {data} does not exist or is not a folder; pick a folder of images.")
        if not (self.model or "").strip():
            raise InvalidRequestError("No base model picked; choose one, e.g. demo-sd15.")
        ranges = [
            ("steps", self.steps, 1, 1_000_000),
            ("rank", self.rank, 1, 1024),
            ("alpha", self.alpha, 1e-6, 4096),
            ("learning_rate", self.learning_rate, 1e-8, 1.0),
            ("warmup_steps", self.warmup_steps, 0, 1_000_000),
            ("batch_size", self.batch_size, 1, 64),
            ("gradient_accumulation", self.gradient_accumulation, 1, 256),
            ("resolution", self.resolution, 64, 2048),
            ("noise_offset", self.noise_offset, 0.0, 1.0),
            ("validation_every", self.validation_every, 0, 1_000_000),
            ("validation_steps", self.validation_steps, 1, 150),
            ("validation_size", self.validation_size, 0, 2048),
            ("checkpoint_every", self.checkpoint_every, 0, 1_000_000),
            ("seed", self.seed, 0, 2**32 - 1),
            ("validation_seed", self.validation_seed, 0, 2**32 - 1),
        ]
        if self.epochs is not None:
            ranges.append(("epochs", self.epochs, 1, 100_000))
        if self.min_snr_gamma is not None:
            ranges.append(("min_snr_gamma", self.min_snr_gamma, 0.1, 100.0))
        for field, value, low, high in ranges:
            check_range(field, value, low, high)
        for field, value in (("resolution", self.resolution), ("validation_size", self.validation_size)):
            if value % 64:
                nearest = max(64, round(value / 64) * 64)
                raise InvalidRequestError(f"{field}={value} must be a multiple of 64; try {nearest}.")
        for field, value, allowed in (
            ("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS),
            ("mixed_precision", self.mixed_precision, MIXED_PRECISIONS),
            ("optimizer", self.optimizer, OPTIMIZERS),
        ):
            if value not in allowed:
                raise InvalidRequestError(f"{field}={value!r} is not one of {', '.join(allowed)}.")

    def sample_size(self) -> int:
        """The side of the sample images: `validation_size`, or half the training resolution (a multiple of 64)."""
        return self.validation_size or max(64, self.resolution // 128 * 64)

    def output_dir(self, loras_dir: Path) -> Path:
        """`loras/<name>`, checked to stay inside the LoRA folder whatever the name says."""
        return _inside(Path(loras_dir), self.name)

    def run_dir(self, outputs_dir: Path) -> Path:
        """`outputs/training/<name>`: checkpoints, samples and the log of the run (caches: `.cache/` beside it)."""
        return _inside(Path(outputs_dir) / "training", self.name)

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        values["data"] = str(self.data)
        return values

    @classmethod
    def from_json(cls, values: dict) -> "TrainingRequest":
        return cls(**{**values, "data": Path(values["data"])})

    def fingerprint(self) -> str:
        """The settings that must match for a checkpoint to be resumed (not: resume, checkpoint/sample cadence)."""
        free = {
            "resume",
            "checkpoint_every",
            "validation_every",
            "validation_prompt",
            "validation_seed",
            "validation_steps",
            "validation_size",
            "samples",
        }
        return json.dumps({k: v for k, v in self.to_json().items() if k not in free}, sort_keys=True)


def check_dataset(request: TrainingRequest) -> DatasetReport:
    """The data set check shown before training; raises DatasetError for an unusable folder."""
    return scan_dataset(
        DatasetRequest(
            folder=request.data,
            caption_column=request.caption_column,
            default_caption=request.caption,
            trigger=request.trigger,
        )
    )


def check_name_free(request: TrainingRequest, loras_dir: Path) -> None:
    """A run must not overwrite a finished adapter; checked before the heavy imports (the trainer checks again)."""
    output_dir = request.output_dir(loras_dir)
    if output_dir.exists():
        raise TrainingError(
            f"An adapter named {request.name!r} already exists in {output_dir.parent}; pick another name or delete it."
        )


def _inside(folder: Path, name: str) -> Path:
    folder = folder.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or path == folder:
        raise UnsafePathError(f"Adapter name {name!r} would leave {folder}; use a plain name like 'alps-v1'.")
    return path
