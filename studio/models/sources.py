"""Where a model comes from: a demo name, a local diffusers folder, a single checkpoint file, or a Hub id.

`resolve_model` turns what the user typed or picked into a `ModelSource` without loading weights;
`list_models` is what the model picker shows. Loading itself belongs to the model manager.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from studio.config import StudioConfig
from studio.errors import ModelNotFoundError, StudioError, UnsupportedModelError
from studio.lora.folder import PICKLE_SUFFIXES, is_hub_id
from studio.models.kinds import ModelKind, describe_checkpoint, is_inpainting_folder, kind_of_folder

DEMO_MODELS = {"demo-sd15": ModelKind.SD15, "demo-sdxl": ModelKind.SDXL}
CHECKPOINT_SUFFIXES = (".safetensors",)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str
    """What the picker shows and the CLI accepts: `demo-sd15`, `my-model.safetensors`, `owner/repo`."""

    kind: ModelKind | None
    """SD1.5 or SDXL; None for a Hub id whose kind is learned when it is downloaded."""

    origin: str
    """`demo`, `folder`, `single-file`, `pickle` or `hub`."""

    location: str
    """Path of the folder or file, or the Hub repo id."""

    problem: str | None = None
    """Why this entry cannot be loaded (shown greyed in the picker), or None."""

    inpainting: bool = False
    """A dedicated inpainting model (9-channel UNet), read from the header or unet config; every mode runs it
    through the inpaint pipeline."""

    @property
    def label(self) -> str:
        kind = (self.kind.label if self.kind else "?") + (" inpainting" if self.inpainting else "")
        suffix = f"  (cannot load: {self.problem})" if self.problem else ""
        return f"{self.name}  [{kind}]{suffix}"


def _local_source(path: Path, name: str) -> ModelSource:
    if path.is_dir():
        return ModelSource(name, kind_of_folder(path), "folder", str(path), inpainting=is_inpainting_folder(path))
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        kind, inpainting = describe_checkpoint(path)
        return ModelSource(name, kind, "single-file", str(path), inpainting=inpainting)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        # Kind is unknown without unpickling, which is exactly what we refuse to do by default.
        return ModelSource(name, None, "pickle", str(path))
    raise UnsupportedModelError(
        f"{path.name} is not a model Studio can load; use a diffusers folder or a .safetensors checkpoint."
    )


def _scan_entry(path: Path) -> ModelSource | None:
    """One models-folder entry for the picker; unusable files are listed with their problem."""
    name = path.name
    if path.is_dir() and not (path / "model_index.json").exists():
        return None
    if path.is_file() and path.suffix.lower() not in CHECKPOINT_SUFFIXES + PICKLE_SUFFIXES:
        return None
    try:
        return _local_source(path, name)
    except StudioError as e:
        return ModelSource(name, None, "single-file" if path.is_file() else "folder", str(path), problem=str(e))


def list_models(config: StudioConfig) -> list[ModelSource]:
    """Demo models first, then every folder and checkpoint in the models folder (kind read from headers)."""
    sources = [ModelSource(name, kind, "demo", name) for name, kind in DEMO_MODELS.items()]
    if config.models_dir.is_dir():
        for path in sorted(config.models_dir.iterdir(), key=lambda p: p.name.lower()):
            if path.name.startswith("."):
                continue
            entry = _scan_entry(path)
            if entry is not None:
                sources.append(entry)
    return sources


def resolve_model(name: str, config: StudioConfig) -> ModelSource:
    """Turn a picker entry, path or Hub id into a ModelSource, or raise an error that says what to do."""
    name = (name or "").strip()
    if not name:
        raise ModelNotFoundError("No model selected. Pick one from the model list or pass --model.")
    if name in DEMO_MODELS:
        return ModelSource(name, DEMO_MODELS[name], "demo", name)
    in_models_dir = config.models_dir / name
    # A bare name means an entry of the models folder; it must not climb out of it.
    models_root = config.models_dir.resolve()
    if in_models_dir.exists() and in_models_dir.resolve().is_relative_to(models_root):
        # Named by its place in the models folder, also when given by full path: the name lands in infotexts,
        # adapter manifests and model cards, which must not carry local paths.
        return _local_source(in_models_dir, in_models_dir.resolve().relative_to(models_root).as_posix())
    path = Path(name).expanduser()
    if path.exists():
        return _local_source(path, path.name)
    if is_hub_id(name):
        return ModelSource(name, None, "hub", name)
    known = [s.name for s in list_models(config)]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Available: {', '.join(known[:8])}."
    raise ModelNotFoundError(f"Model {name!r} was not found (not a demo, a file, a folder or a Hub id).{hint}")
