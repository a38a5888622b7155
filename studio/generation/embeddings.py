"""Textual-inversion embeddings from the `embeddings/` folder, used by file name in a prompt (as in A1111).

    entries = scan_embeddings(config.embeddings_dir)          # torch-free: headers and hashes only
    vectors, used_files = embeddings_for_prompt(config, ModelKind.SD15, prompt, negative_prompt)

What a file may hold (`.safetensors`, read without running code):
- SD1.5: one tensor (n, 768), under `emb_params` (A1111 and Civitai conversions) or any single name (diffusers'
  `learned_embeds`); a 1-D tensor is one vector.
- SDXL: `clip_l` (n, 768) for the first text encoder and `clip_g` (n, 1280) for the second.
A1111's `.pt` and diffusers' `.bin` files are pickles, which can run code when loaded: they are listed with the
reason and refused, unless Studio was started with --allow-pickle.

The hash written to the infotext (`TI hashes: "name: 1234567890ab"`) is A1111's: the first 12 hex digits of the
file's sha256.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

from studio.config import StudioConfig
from studio.errors import InvalidRequestError, UnsafeFileError, UnsupportedModelError
from studio.lora.folder import PICKLE_SUFFIXES
from studio.models.hashes import sha256_file
from studio.models.kinds import ModelKind, read_safetensors_header

SUFFIXES = (".safetensors", ".pt", ".bin")
MAX_VECTORS = 75  # one chunk: A1111 cannot place a longer embedding either
_SD2_WIDTH = 1024


@dataclasses.dataclass(frozen=True)
class EmbeddingFile:
    name: str
    """The file name without its suffix: what a prompt writes to use it."""
    path: Path
    kind: ModelKind | None
    vectors: int
    widths: tuple[int, ...]
    """Width of the vectors for each text encoder: (768,) for SD1.5, (768, 1280) for SDXL."""
    problem: str | None = None
    """Why the file cannot be used (None when it can)."""
    keys: tuple[str, ...] = ()

    @functools.cached_property
    def hash(self) -> str:
        """A1111's short hash (its infotext's `TI hashes`): sha256 of the file, first 12 hex digits; read once."""
        return sha256_file(self.path)[:12]


def scan_embeddings(folder: Path, *, allow_pickle: bool = False) -> list[EmbeddingFile]:
    """Every embedding file in the folder (not its subfolders), sorted by name; unusable files carry a problem."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    paths = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES), key=_by_name)
    return [_read_entry_cached(str(p), allow_pickle, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def embedding_rows(config: StudioConfig) -> list[list]:
    """The embeddings folder as table rows [name, base, vectors, hash, problem] (the UI's table, the CLI's list)."""
    return [
        [e.name, e.kind.label if e.kind else "?", e.vectors, e.hash, e.problem or ""]
        for e in scan_embeddings(config.embeddings_dir, allow_pickle=config.allow_pickle)
    ]


def _by_name(path: Path) -> str:
    return path.name.lower()


# Keyed by size and modification time: the token counter scans the folder on every keystroke, and a file's
# header (and its hash, computed once) only needs reading again when the file changes.
@functools.lru_cache(maxsize=1024)
def _read_entry_cached(path: str, allow_pickle: bool, _size: int, _mtime_ns: int) -> EmbeddingFile:
    return _read_entry(Path(path), allow_pickle)


def _read_entry(path: Path, allow_pickle: bool) -> EmbeddingFile:
    name = path.stem
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            problem = (
                f"{path.suffix} is a pickle file, which can run code when loaded; convert it to .safetensors "
                "or start Studio with --allow-pickle"
            )
            return EmbeddingFile(name, path, None, 0, (), problem)
        try:
            tensors = _pickle_tensors(path)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:
            return EmbeddingFile(name, path, None, 0, (), f"unreadable pickle: {error}")
        shapes = {key: list(tensor.shape) for key, tensor in tensors.items()}
    else:
        try:
            header = read_safetensors_header(path)
        except UnsupportedModelError as error:
            return EmbeddingFile(name, path, None, 0, (), str(error))
        shapes = {key: value["shape"] for key, value in header.items() if key != "__metadata__"}
    return _classify(name, path, shapes)


def _classify(name: str, path: Path, shapes: dict[str, list[int]]) -> EmbeddingFile:
    def rows(shape: list[int]) -> tuple[int, int] | None:
        if len(shape) == 1:
            return 1, shape[0]
        if len(shape) == 2:
            return shape[0], shape[1]
        return None

    keys = tuple(sorted(shapes))
    if {"clip_l", "clip_g"} <= set(shapes):
        l_rows, g_rows = rows(shapes["clip_l"]), rows(shapes["clip_g"])
        if l_rows is None or g_rows is None or l_rows[0] != g_rows[0]:
            problem = f"clip_l {shapes['clip_l']} and clip_g {shapes['clip_g']} do not hold the same vectors"
            return EmbeddingFile(name, path, None, 0, (), problem, keys)
        entry = EmbeddingFile(name, path, ModelKind.SDXL, l_rows[0], (l_rows[1], g_rows[1]), None, keys)
    elif len(shapes) == 1 and rows(next(iter(shapes.values()))) is not None:
        count, width = rows(next(iter(shapes.values())))
        problem = None
        if width == _SD2_WIDTH:
            problem = f"{width}-wide vectors: an SD 2.x embedding; Studio runs SD1.5 and SDXL"
        entry = EmbeddingFile(name, path, None if problem else ModelKind.SD15, count, (width,), problem, keys)
    else:
        described = ", ".join(f"{key} {shape}" for key, shape in list(shapes.items())[:4]) or "no tensors"
        problem = f"not a textual-inversion embedding ({described}); expected emb_params, or clip_l and clip_g"
        return EmbeddingFile(name, path, None, 0, (), problem, keys)
    if entry.vectors > MAX_VECTORS or entry.vectors < 1:
        return dataclasses.replace(entry, kind=None, problem=f"{entry.vectors} vectors; at most {MAX_VECTORS} fit")
    return entry


def _pickle_tensors(path: Path) -> dict:
    """The tensors of an A1111 `.pt` (`string_to_param`) or diffusers `.bin` ({token: tensor}) embedding."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=False)  # the user allowed pickles
    if isinstance(data, dict) and "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        return {"emb_params": next(iter(params.values())).detach()}
    if isinstance(data, dict) and all(isinstance(value, torch.Tensor) for value in data.values()):
        return {key: value.detach() for key, value in data.items()}
    raise ValueError("neither an A1111 (.pt, string_to_param) nor a diffusers (.bin) embedding")


def mentions(text: str, name: str) -> bool:
    """Whether a prompt names an embedding: the name as a word of its own, in any case (CLIP lowercases)."""
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text, re.IGNORECASE) is not None


def counter_embeddings(config: StudioConfig, kind: ModelKind | None) -> tuple[tuple[str, int], ...]:
    """(name, vectors) of the usable embeddings for a model kind (every kind when unknown), for the token counter."""
    return tuple(
        (entry.name, entry.vectors)
        for entry in scan_embeddings(config.embeddings_dir, allow_pickle=config.allow_pickle)
        if entry.problem is None and (kind is None or entry.kind is kind)
    )


def embeddings_for_prompt(config: StudioConfig, kind: ModelKind, *texts: str):
    """The vectors of the embeddings the texts name, for `encode_prompts`: ({name: [tensor per encoder]}, files).

    A named file that cannot be used (made for the other base model, a pickle, broken) raises an error that says
    why, rather than being read as ordinary words.
    """
    vectors, files = {}, {}
    for entry in usable_embeddings(config, kind, *texts):
        vectors[entry.name] = load_vectors(entry)
        files[entry.name] = entry
    return vectors, files


def usable_embeddings(config: StudioConfig, kind: ModelKind | None, *texts: str) -> list[EmbeddingFile]:
    """The embeddings the texts name, refusing any that cannot be used with `kind` (None: not known yet) from headers
    only: no torch, so the CLI checks a prompt before it loads a model."""
    named = [
        entry
        for entry in scan_embeddings(config.embeddings_dir, allow_pickle=config.allow_pickle)
        if any(mentions(text, entry.name) for text in texts)
    ]
    for entry in named:
        if entry.problem is not None:
            error = UnsafeFileError if entry.path.suffix.lower() in PICKLE_SUFFIXES else InvalidRequestError
            raise error(f"Embedding {entry.name!r} ({entry.path.name}) cannot be used: {entry.problem}.")
        if kind is not None and entry.kind is not kind:
            raise InvalidRequestError(
                f"Embedding {entry.name!r} ({entry.path.name}) is an {entry.kind.label} embedding and the model is "
                f"{kind.label}: use it with an {entry.kind.label} model, or take {entry.name!r} out of the prompt (or "
                f"the file out of {entry.path.parent})."
            )
    return named


def load_vectors(entry: EmbeddingFile) -> list:
    """An embedding's vectors as float32 tensors (n, width), one per text encoder of its kind."""
    import torch

    if entry.path.suffix.lower() in PICKLE_SUFFIXES:
        tensors = _pickle_tensors(entry.path)
    else:
        from safetensors.torch import load_file

        tensors = load_file(entry.path, device="cpu")
    parts = [tensors["clip_l"], tensors["clip_g"]] if entry.kind is ModelKind.SDXL else [next(iter(tensors.values()))]
    return [torch.atleast_2d(part).to(torch.float32) for part in parts]
