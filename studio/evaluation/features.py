"""The feature model (a CLIP image encoder) and the images it embeds.

Real users get `openai/clip-vit-large-patch14-336`, the encoder CMMD is defined on, downloaded once from
the Hub with progress (only its configs and `model.safetensors`). Any local folder with a
`CLIPVisionModelWithProjection` (or a whole `CLIPModel`) in safetensors works too: tests use a tiny one.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from studio.errors import CancelledError, DatasetError, ModelNotFoundError, UnsupportedModelError
from studio.evaluation.requests import DEFAULT_FEATURE_MODEL

FEATURE_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]
ProgressFn = Callable[[float, str], None]


@dataclasses.dataclass
class FeatureModel:
    name: str
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def embed(self, images: list[Image.Image], *, batch_size: int = 16) -> np.ndarray:
        """L2-normalised projected CLIP image embeddings, one row per image (float64 for the statistics)."""
        rows = []
        for start in range(0, len(images), batch_size):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            embeds = self.model(pixel_values=pixels.to(self.device, self.dtype)).image_embeds.float()
            rows.append(torch.nn.functional.normalize(embeds, dim=-1).cpu().double().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0))


def load_feature_model(
    name: str, *, device: torch.device, dtype: torch.dtype, on_progress: ProgressFn | None = None
) -> FeatureModel:
    """Load a CLIP image encoder from a local folder or a Hub id (downloaded once, then read from the cache)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    folder = Path(name).expanduser()
    if not folder.is_dir():
        folder = _download(name, on_progress)
    if not (folder / "model.safetensors").is_file():
        raise ModelNotFoundError(
            f"Feature model {name!r} has no model.safetensors (only safetensors weights are loaded); "
            "pick a CLIP folder or Hub repo that has them."
        )
    model, info = CLIPVisionModelWithProjection.from_pretrained(
        folder, config=_vision_config(folder), use_safetensors=True, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"] or info["mismatched_keys"]:
        # transformers would fill these with random weights: scores from a half-random encoder mean nothing.
        mismatched = [str(k[0]) if isinstance(k, tuple) else str(k) for k in info["mismatched_keys"]]
        missing = sorted(info["missing_keys"]) + mismatched
        raise UnsupportedModelError(
            f"Feature model {name!r} is not a CLIP image encoder ({len(missing)} weights missing or of the wrong "
            f"shape, e.g. {missing[0]}); use a CLIP checkpoint such as {DEFAULT_FEATURE_MODEL}."
        )
    processor = CLIPImageProcessorPil.from_pretrained(folder)
    return FeatureModel(name, model.to(device).eval(), processor, device, dtype)


def _vision_config(folder: Path):
    """The vision tower's config; for a whole CLIPModel checkpoint (as Hub repos are), with its projection size.

    transformers reads the vision part of a CLIPModel config without the top-level `projection_dim`, and
    would then re-initialise the projection at the default size with random weights.
    """
    from transformers import CLIPConfig, CLIPVisionConfig

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"Feature model folder {folder} has no readable config.json ({e}).") from None
    if model_type != "clip":
        return CLIPVisionConfig.from_pretrained(folder)
    full = CLIPConfig.from_pretrained(folder)
    vision = full.vision_config
    vision.projection_dim = full.projection_dim
    return vision


def _download(repo_id: str, on_progress: ProgressFn | None) -> Path:
    from studio.hub.download import DownloadPlan, snapshot_with_progress

    return snapshot_with_progress(
        repo_id,
        plan=lambda api: DownloadPlan(FEATURE_FILES, *_weights_revision(api, repo_id)),
        offline=DownloadPlan(FEATURE_FILES),  # offline: whatever the cache holds
        what="Feature model",
        instead="pass a local CLIP folder as the feature model",
        on_progress=on_progress,
    )


def _weights_revision(api, repo_id: str) -> tuple[str | None, int]:
    """(revision, bytes to fetch): main, or else the Hub's safetensors conversion pull request, since older
    repos keep only pickles on main. The byte count lets the progress bar grow steadily to 100%."""
    from huggingface_hub.hf_api import RepoFile

    def sizes(revision: str | None) -> dict[str, int]:
        return {e.path: e.size for e in api.list_repo_tree(repo_id, revision=revision) if isinstance(e, RepoFile)}

    files = sizes(None)
    if "model.safetensors" not in files:
        for ref in api.list_repo_refs(repo_id, include_pull_requests=True).pull_requests:
            converted = sizes(ref.ref)
            if "model.safetensors" in converted:
                return ref.ref, sum(converted.get(name, 0) for name in FEATURE_FILES)
    return None, sum(files.get(name, 0) for name in FEATURE_FILES)


def data_images(folder: Path) -> list[Path]:
    """The usable images of a data folder, scanned like a training folder (broken files are skipped)."""
    from studio.training.dataset import DatasetRequest, scan_dataset

    # Captions do not matter here; a default caption keeps uncaptioned images in the scan.
    report = scan_dataset(DatasetRequest(folder=Path(folder), default_caption="-", min_size=8))
    paths = sorted(sample.path for sample in report.samples)
    if len(paths) < 4:
        raise DatasetError(
            f"Data folder {folder} has {len(paths)} usable image(s); the floor needs at least 4 (two halves of 2). "
            "Add images or pick another folder."
        )
    return paths


def embed_files(
    features: FeatureModel,
    paths: list[Path],
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Embed image files a batch at a time, so hundreds of large images never sit in RAM together."""
    from studio.training.dataset import load_image

    rows = []
    for start in range(0, len(paths), batch_size):
        if cancel is not None and cancel.is_set():
            raise CancelledError("Stopped while reading the data images, before anything was generated.")
        batch = [load_image(path) for path in paths[start : start + batch_size]]
        rows.append(features.embed(batch, batch_size=batch_size))
        if on_progress is not None:
            done = min(start + batch_size, len(paths))
            on_progress(done / len(paths), f"Embedding the data images: {done}/{len(paths)}")
    return np.concatenate(rows)
