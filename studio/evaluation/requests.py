"""What the user asks for: an evaluation of candidates against a data folder, or a synthetic data set.

A candidate is a model with an optional LoRA blend, written `MODEL` or `MODEL + NAME:WEIGHT + NAME:WEIGHT`
in the CLI and the UI. Every candidate of a run is generated with the same prompt and the same seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image

from studio.errors import DatasetError, InvalidRequestError, UnsafePathError
from studio.generation.infotext import parse_lora_weight
from studio.generation.request import MAX_SEED, GenerationRequest
from studio.generation.schedulers import DEFAULT_SCHEDULER
from studio.validation import check_path_text, check_range

DEFAULT_FEATURE_MODEL = "openai/clip-vit-large-patch14-336"
"""CLIP ViT-L/14@336, the image encoder CMMD was published with."""
MAX_CANDIDATES = 16
MAX_COUNT = 100  # images per generation run (its batch count)


@dataclasses.dataclass(frozen=True)
class Candidate:
    model: str
    """Model picker entry, path or Hub id."""
    loras: tuple[tuple[str, float], ...] = ()
    """(adapter name, strength) pairs."""

    @property
    def label(self) -> str:
        return " + ".join([self.model] + [f"{name}:{weight:g}" for name, weight in self.loras])


def parse_candidate(text: str) -> Candidate:
    """`MODEL` or `MODEL + NAME:WEIGHT + ...` (weight optional, default 1) -> Candidate."""
    model, *loras = (part.strip() for part in text.split("+"))
    if not model:
        raise InvalidRequestError(f"Candidate {text!r} names no model; write e.g. 'demo-sd15 + my-lora:0.8'.")
    try:
        parsed = tuple(parse_lora_weight(lora) for lora in loras)
    except InvalidRequestError as error:
        raise InvalidRequestError(f"Candidate {text!r}: {error}") from None
    return Candidate(model, parsed)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How each image is drawn; shared by evaluation and export so their images are comparable."""

    negative_prompt: str = ""
    steps: int = 25
    cfg: float = 7.0
    width: int | None = None
    """None uses each model's native size."""
    height: int | None = None
    scheduler: str = DEFAULT_SCHEDULER

    def generation_request(self, candidate: Candidate, *, prompt: str, seed: int, count: int) -> GenerationRequest:
        """Images seed, seed+1, ... seed+count-1, one per pipeline call (the same seeds for every candidate)."""
        return GenerationRequest(
            model=candidate.model,
            prompt=prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            cfg=self.cfg,
            seed=seed,
            width=self.width,
            height=self.height,
            scheduler=self.scheduler,
            batch_size=1,
            batch_count=count,
            loras=candidate.loras,
        )


def _check_seed_and_count(seed: int, count: int, low: int, what: str, *, images: int) -> None:
    check_range("count", count, low, MAX_COUNT, hint=f"{low} to {MAX_COUNT} {what}")
    check_range("seed", seed, 0, MAX_SEED - images, hint=f"a fixed seed from 0 to {MAX_SEED - images}")


@dataclasses.dataclass(frozen=True)
class EvaluationRequest:
    candidates: tuple[Candidate, ...]
    data: Path
    """Folder of the images to compare with (e.g. the LoRA's training images)."""
    prompt: str
    count: int = 16
    """Images generated per candidate."""
    seed: int = 0
    """Image i of every candidate uses seed + i."""
    sampling: SamplingSettings = SamplingSettings()
    feature_model: str = DEFAULT_FEATURE_MODEL
    """Hub id or local folder of a CLIP image encoder (safetensors)."""
    kid: bool = True
    """Also report KID on the CLIP features."""
    resamples: int = 200
    """Bootstrap resamples for the confidence intervals."""

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return ("cmmd", "kid") if self.kid else ("cmmd",)

    def validate(self) -> None:
        if not self.candidates or len(self.candidates) > MAX_CANDIDATES:
            raise InvalidRequestError(
                f"{len(self.candidates)} candidates given; compare 1 to {MAX_CANDIDATES} models/LoRA blends."
            )
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequestError("The prompt is empty; use the kind of caption the data set has.")
        what = "images per candidate (MMD needs at least 2)"
        _check_seed_and_count(self.seed, self.count, 2, what, images=self.count)
        check_range("resamples", self.resamples, 10, 10000)
        for candidate in self.candidates:
            self.sampling.generation_request(candidate, prompt=self.prompt, seed=self.seed, count=self.count).validate()
        data = Path(self.data).expanduser()
        if not data.is_dir():
            raise DatasetError(f"Data folder {data} does not exist or is not a folder; pick the folder of images.")


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    candidate: Candidate
    prompts: tuple[str, ...]
    folder: Path
    """A new (or empty) folder: it becomes a Hugging Face imagefolder data set."""
    count: int = 4
    """Images per prompt."""
    seed: int = 0
    """Image j of prompt i uses seed + i * count + j: every image differs, and any one can be redrawn."""
    sampling: SamplingSettings = SamplingSettings()
    init_images: Path | None = None
    """A folder of real pictures: each is redrawn `count` times (image-to-image) instead of drawing from prompts,
    its caption (metadata.jsonl, .txt) carried over; the first prompt, if any, captions pictures that have none."""

    strength: float = 0.75
    """Denoising strength of those redraws: low keeps each picture's layout, high invents more."""
    resume: bool = False
    """Finish an export stopped in `folder`: its images (checked against the plan) are kept, the rest drawn."""

    def validate(self) -> None:
        prompts = [p for p in self.prompts if isinstance(p, str) and p.strip()]
        if (not prompts and self.init_images is None) or len(prompts) != len(self.prompts):
            raise InvalidRequestError("Give at least one prompt, and no empty ones (one prompt per line).")
        _check_seed_and_count(self.seed, self.count, 1, "images per prompt", images=self.count * max(1, len(prompts)))
        prompt = prompts[0] if prompts else ""
        check = self.sampling.generation_request(self.candidate, prompt=prompt, seed=self.seed, count=1)
        if self.init_images is not None:
            if not Path(self.init_images).expanduser().is_dir():
                raise DatasetError(f"Init images {self.init_images} is not a folder; give the folder of pictures.")
            # A stand-in picture: the strength (and strength x steps) is checked the way every redraw will be.
            check = dataclasses.replace(check, init_image=Image.new("RGB", (64, 64)), strength=self.strength)
        check.validate()
        folder = Path(self.folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise InvalidRequestError(f"Export folder {folder} is a file; pick a new folder.")
        if folder.exists() and not self.resume and any(folder.iterdir()):
            raise InvalidRequestError(
                f"Export folder {folder} already exists and is not empty; pick a new folder "
                "(or resume the export stopped there with the same prompts, count and seed)."
            )

    def source_pictures(self):
        """The usable pictures of `init_images` with their captions (a `DatasetReport`), scanned as training scans
        a folder (torch-free: the CLI lists the skipped files before the heavy imports)."""
        from studio.training.dataset import DatasetRequest, scan_dataset

        default = self.prompts[0] if self.prompts else None
        return scan_dataset(DatasetRequest(folder=Path(self.init_images), default_caption=default))


def export_folder(outputs_dir: Path, name: str) -> Path:
    """outputs/datasets/<name> for a name typed in the UI, which must stay inside that folder."""
    root = (Path(outputs_dir) / "datasets").resolve()
    check_path_text("Data set name", name or "")
    folder = (root / (name or "").strip()).resolve()
    if not (name or "").strip() or folder == root or not folder.is_relative_to(root):
        raise UnsafePathError(f"Data set name {name!r} must be a plain folder name like 'synthetic-mountains'.")
    return folder
