"""The `loras/` folder: one entry per adapter folder or single `.safetensors` file, read from headers only.

    entries = scan_loras(config.loras_dir)          # instant: no tensor is loaded
    entry = find_lora(config.loras_dir, "alps")     # by name, never outside the folder

Each entry says what the adapter is (format, SD1.5/SDXL, rank, components, trigger words), carries the
A1111 "addnet" hash for the infotext and a preview image if there is one, and a `problem` (with the
reason and what to do) when it cannot be used: a truncated download, a LyCORIS type diffusers cannot
load, a full checkpoint put here by mistake, a pickle file.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import hashlib
import json
from pathlib import Path

from studio.atomic import restore_replaced, restore_replaced_in
from studio.errors import LoraError, ModelNotFoundError, StudioError, UnsafePathError
from studio.lora.folder import (
    DIFFUSERS_WEIGHTS,
    MANIFEST,
    PICKLE_SUFFIXES,
    AdapterManifest,
    manifest_if_readable,
    public_name,
    public_text,
)
from studio.lora.formats import components_of, detect_kind, lora_format, rank_of
from studio.models.kinds import ModelKind, read_safetensors_header
from studio.validation import check_path_text

PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_TRIGGER_WORDS = 8


@dataclasses.dataclass(frozen=True)
class LoraEntry:
    name: str
    path: Path
    """The adapter folder or the single file in `loras/`."""

    weights_file: Path | None
    """The file that is loaded into the pipeline."""

    format: str
    """"diffusers", "kohya", "lycoris:<type>" or "unknown"."""

    kind: ModelKind | None
    rank: int | None = None
    components: tuple[str, ...] = ()
    trigger_words: tuple[str, ...] = ()
    addnet_hash: str | None = None
    """A1111's short "addnet" hash (12 hex digits of the sha256 of the tensor data), as in "Lora hashes"."""

    preview: Path | None = None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None

    def incompatibility(self, kind: ModelKind) -> str | None:
        """Why this adapter cannot be used with a model of `kind`, or None when it can."""
        if self.problem:
            return self.problem
        if self.kind is not kind:
            return f"{self.name} is an {self.kind.label} LoRA; the loaded model is {kind.label}."
        return None

    @property
    def label(self) -> str:
        kind = self.kind.label if self.kind else "?"
        rank = f", rank {self.rank}" if self.rank else ""
        return f"{self.name} ({kind}, {self.format}{rank})"


def scan_loras(loras_dir: Path) -> list[LoraEntry]:
    """Every adapter in the folder, sorted by name; a folder wins over a file of the same name."""
    loras_dir = Path(loras_dir)
    if not loras_dir.is_dir():
        return []
    restore_replaced_in(loras_dir)  # an adapter a killed overwrite left under its hidden name is put back
    entries: dict[str, LoraEntry] = {}
    for path in sorted(loras_dir.iterdir()):
        if path.name.startswith("."):
            continue  # temp files of atomic writes, hidden folders
        if path.is_dir() and (any(path.glob("*.safetensors")) or (path / MANIFEST).exists()):
            entries[path.name] = read_entry(path)
        elif path.is_file() and path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
            entries.setdefault(path.stem, read_entry(path))
    return [entries[name] for name in sorted(entries, key=str.lower)]


def find_lora(loras_dir: Path, name: str) -> LoraEntry:
    """The entry called `name` (folder or file stem); refuses names that would leave the folder."""
    loras_dir = Path(loras_dir).resolve()
    check_path_text("LoRA name", name)
    if not name or name in (".", "..") or Path(name).name != name:
        raise UnsafePathError(f"LoRA name {name!r} is not a plain name; pick one from the LoRA list.")
    restore_replaced(loras_dir / name)
    for candidate in (loras_dir / name, loras_dir / f"{name}.safetensors"):
        if candidate.resolve().is_relative_to(loras_dir) and candidate.exists():
            if candidate.is_dir() or candidate.suffix == ".safetensors":
                return read_entry(candidate)
    for pickle_suffix in PICKLE_SUFFIXES:
        if (loras_dir / f"{name}{pickle_suffix}").exists():
            return read_entry(loras_dir / f"{name}{pickle_suffix}")
    known = ", ".join(e.name for e in scan_loras(loras_dir)) or "none"
    raise ModelNotFoundError(f"No LoRA named {name!r} in {loras_dir}. Available: {known}.")


def read_entry(path: Path) -> LoraEntry:
    """The entry of one adapter folder or file; cached until any file it is read from changes."""
    path = Path(path)
    return _read_entry_cached(str(path), _signature(path))


def _signature(path: Path) -> tuple:
    """(mtime, size) of everything an entry is read from: a slider move re-reads nothing that did not change."""
    watched = [path, path.parent]
    if path.is_dir():
        watched += sorted(path.glob("*.safetensors")) + [path / MANIFEST, path / "samples"]
    signature = []
    for item in watched:
        try:
            stat = item.stat()
            signature.append((item.name, stat.st_mtime_ns, stat.st_size))
        except OSError:
            signature.append((item.name, None, None))
    return tuple(signature)


@functools.lru_cache(maxsize=512)
def _read_entry_cached(path: str, _signature: tuple) -> LoraEntry:
    return _read_entry(Path(path))


def _read_entry(path: Path) -> LoraEntry:
    name = path.name if path.is_dir() else path.stem
    manifest = manifest_if_readable(path) if path.is_dir() else None
    weights_file = _weights_file(path)
    preview = _preview(path)
    base = dict(name=name, path=path, weights_file=weights_file, preview=preview)
    if weights_file is None:
        return LoraEntry(**base, format="unknown", kind=None, problem=f"{name} holds no .safetensors LoRA file.")
    if weights_file.suffix.lower() in PICKLE_SUFFIXES:
        return LoraEntry(
            **base,
            format="pickle",
            kind=None,
            problem=f"{weights_file.name} is a pickle file, which can run code; Studio loads only .safetensors LoRAs.",
        )
    try:
        header = read_safetensors_header(weights_file)
    except StudioError as e:
        return LoraEntry(**base, format="unknown", kind=None, problem=str(e))
    metadata = header.pop("__metadata__", None) or {}
    shapes = {key: value.get("shape", []) for key, value in header.items()}
    problem, fmt, kind = None, "unknown", None
    try:
        fmt = lora_format(shapes)
        kind = (manifest and manifest.base_kind) or detect_kind(shapes, metadata, name=weights_file.name)
    except LoraError as e:
        message = str(e)
        problem = message if message.startswith(weights_file.name) else f"{weights_file.name} {message}"
    if fmt.startswith("lycoris:"):
        problem = (
            f"{weights_file.name} is a LyCORIS {fmt.split(':', 1)[1]} file; diffusers loads only plain LoRA "
            "(lora_down/lora_up). Use a LoRA version of this adapter."
        )
    return LoraEntry(
        **base,
        format=fmt,
        kind=kind,
        rank=rank_of(shapes),
        components=tuple(components_of(shapes)),
        trigger_words=_trigger_words(manifest, metadata),
        addnet_hash=addnet_hash(_hash_file(path, weights_file)),
        problem=problem,
    )


def _weights_file(path: Path) -> Path | None:
    if path.is_file():
        return path
    candidates = [path / DIFFUSERS_WEIGHTS, path / f"{path.name}.safetensors", *sorted(path.glob("*.safetensors"))]
    return next((p for p in candidates if p.is_file()), None)


def _hash_file(path: Path, weights_file: Path) -> Path:
    """The kohya file when a folder has one: that is the file A1111 and Civitai users know the hash of."""
    kohya = path / f"{path.name}.safetensors" if path.is_dir() else None
    return kohya if kohya is not None and kohya.is_file() else weights_file


def _preview(path: Path) -> Path | None:
    if path.is_dir():
        candidates = [path / f"preview{s}" for s in PREVIEW_SUFFIXES] + sorted((path / "samples").glob("*.png"))
    else:
        candidates = [path.with_name(f"{path.stem}.preview{s}") for s in PREVIEW_SUFFIXES]
        candidates += [path.with_suffix(s) for s in PREVIEW_SUFFIXES]
    return next((p for p in candidates if p.is_file()), None)


def _trigger_words(manifest: AdapterManifest | None, metadata: dict) -> tuple[str, ...]:
    words = list(manifest.trigger_words) if manifest else []
    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        words += [w.strip() for w in phrase.split(",") if w.strip()]
    if not words and metadata.get("ss_tag_frequency"):
        # kohya records how often each caption tag was seen; the most frequent ones are the triggers.
        try:
            counts: dict[str, int] = {}
            for tags in json.loads(metadata["ss_tag_frequency"]).values():
                for tag, count in tags.items():
                    counts[tag.strip()] = counts.get(tag.strip(), 0) + int(count)
            words = sorted(counts, key=counts.get, reverse=True)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            pass
    return tuple(dict.fromkeys(words))[:MAX_TRIGGER_WORDS]


def addnet_hash(path: Path) -> str | None:
    """A1111's addnet short hash; cached per file version (size, mtime) since big files take a moment."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _addnet_hash(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=512)
def _addnet_hash(path: str, _size: int, _mtime_ns: int) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            header_length = int.from_bytes(f.read(8), "little")
            f.seek(8 + header_length)  # the tensor data only: editing metadata does not change the hash
            for block in iter(lambda: f.read(1024 * 1024), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()[:12]


# kohya training values worth a row in the model card of an adapter made elsewhere (setting -> ss_* key).
KOHYA_SETTINGS = {
    "network": "ss_network_module",
    "steps": "ss_max_train_steps",
    "epochs": "ss_num_epochs",
    "num_images": "ss_num_train_images",
    "resolution": "ss_resolution",
    "learning_rate": "ss_learning_rate",
    "unet_lr": "ss_unet_lr",
    "text_encoder_lr": "ss_text_encoder_lr",
    "lr_scheduler": "ss_lr_scheduler",
    "optimizer": "ss_optimizer",
    "batch_size": "ss_batch_size_per_device",
    "mixed_precision": "ss_mixed_precision",
    "seed": "ss_seed",
}


MADE_ELSEWHERE = "made_elsewhere"


def header_manifest(entry: LoraEntry) -> AdapterManifest:
    """What an adapter made elsewhere says about itself, as a manifest without local paths (for its card and a push).

    The base kind, rank and trigger words as the library read them; alpha from the `.alpha` tensors (kohya) or the
    diffusers adapter metadata, else `ss_network_alpha`; the base model from `ss_sd_model_name` (a name or Hub id);
    kohya's training values as settings.
    """
    if entry.weights_file is None or entry.kind is None:
        raise LoraError(f"{entry.name}: {entry.problem or 'the base model (SD1.5 or SDXL) cannot be read.'}")
    header = read_safetensors_header(entry.weights_file)
    metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    rank = entry.rank or _number(metadata.get("ss_network_dim"), int)
    settings = {
        name: public_text(metadata[key]) for name, key in KOHYA_SETTINGS.items() if metadata.get(key) not in (None, "")
    }
    return AdapterManifest(
        name=entry.name,
        base_model=public_name(metadata.get("ss_sd_model_name") or ""),
        base_kind=entry.kind,
        trigger_words=[public_text(w) for w in entry.trigger_words],
        rank=rank,
        alpha=_alpha_of(entry.weights_file, header, metadata),
        text_encoder=any(c != "unet" for c in entry.components),
        settings=settings or None,
        created=_created(metadata),
        extra={MADE_ELSEWHERE: True},  # kept in the adapter.json a push generates: its card says so again
    )


def _number(value, kind):
    try:
        number = kind(float(value))
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # not NaN


def _alpha_of(path: Path, header: dict, metadata: dict[str, str]) -> float | None:
    """The most common alpha of the layers: `.alpha` scalars, diffusers' `lora_alpha`, else `ss_network_alpha`."""
    alphas = _alpha_scalars(path, header)
    if not alphas:
        try:
            adapter = json.loads(metadata.get("lora_adapter_metadata") or "{}")
            alphas = [float(v) for k, v in adapter.items() if k.endswith("lora_alpha")]
        except (ValueError, TypeError, AttributeError):
            alphas = []
    if alphas:
        return collections.Counter(alphas).most_common(1)[0][0]
    return _number(metadata.get("ss_network_alpha"), float)


_SCALAR_FORMATS = {"F32": ("<f", 4), "F64": ("<d", 8), "F16": ("<e", 2), "BF16": ("<f", 2)}


def _alpha_scalars(path: Path, header: dict) -> list[float]:
    """The `.alpha` scalars read from their byte ranges (no torch); BF16 as the top half of an F32."""
    import struct

    values = []
    try:
        with path.open("rb") as f:
            data_start = 8 + int.from_bytes(f.read(8), "little")
            for key, info in header.items():
                fmt, size = _SCALAR_FORMATS.get(info.get("dtype"), (None, 0)) if key.endswith(".alpha") else (None, 0)
                begin, end = (info.get("data_offsets") or [0, 0])[:2]
                if fmt is None or end - begin != size:
                    continue
                f.seek(data_start + begin)
                raw = f.read(size)
                if len(raw) == size:
                    value = struct.unpack(fmt, b"\0\0" + raw if info["dtype"] == "BF16" else raw)[0]
                    values.append(round(value, 4))
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    return values


def _created(metadata: dict[str, str]) -> str:
    if metadata.get("modelspec.date"):
        return public_text(metadata["modelspec.date"])
    finished = _number(metadata.get("ss_training_finished_at"), float)
    if finished is None:
        return ""
    try:
        when = datetime.datetime.fromtimestamp(finished, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return ""
    return when.replace(microsecond=0).isoformat()
