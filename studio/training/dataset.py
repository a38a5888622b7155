"""A folder of images -> (image, caption) training samples, with a report of every file not used.

    report = scan_dataset(DatasetRequest(folder=Path("~/mountains"), trigger="aidmtn"))
    print(report.summary())
    for sample in report.samples:
        image = load_image(sample.path)          # 8-bit RGB, EXIF rotation applied

Captions, in order of preference: a `metadata.jsonl` (Hugging Face imagefolder format, one
`{"file_name": "a.jpg", "text": "..."}` per line, file names relative to the metadata file's folder;
several metadata files in nested folders are allowed), else `a.txt` beside `a.jpg`, else the
request's default caption. A bad metadata line is reported and its image falls back to the next source.

The scan decodes every image once (JPEGs at 1/8 scale, which still reads all their data), so truncated
and corrupt files are found before training starts, not at step 900. It never raises for a bad file:
each one becomes a `Skipped` entry with a one-line reason. It raises `DatasetError` only when the
folder itself is unusable (missing, empty, nothing usable), before any model is loaded.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from studio.errors import DatasetError, InvalidRequestError
from studio.validation import MAX_TEXT_CHARS, check_text_length

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
METADATA_NAME = "metadata.jsonl"
# Larger than any training image needs (a 16384x4096 tile still fits) and below Pillow's own
# warning threshold (~89 Mpx), so our limit is the one users see and can change.
DEFAULT_MAX_PIXELS = 8192 * 8192

# What Pillow raises on damaged data varies by format and by where the damage is: truncated data
# gives OSError, bad PNG chunks SyntaxError, bad headers ValueError/struct.error/EOFError, bad zlib
# streams zlib.error. Anything else is a bug and should surface, so this is not `Exception`.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)

# Modes `to_rgb` converts; anything else (LAB, HSV...) is reported at scan time, not mid-training.
_CONVERTIBLE_MODES = {
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "I",
    "I;16",
    "I;16L",
    "I;16B",
    "I;16N",
    "F",
}
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_SUFFIX_LIST = "/".join(IMAGE_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class DatasetRequest:
    folder: Path
    """Folder of training images; subfolders are searched too. Hidden files and folders are ignored."""

    caption_column: str = "text"
    """Column of `metadata.jsonl` that holds the caption (the HF imagefolder convention is `text`)."""

    default_caption: str | None = None
    """Caption for every image that has neither a metadata line nor a `.txt` file (typed in the UI)."""

    trigger: str | None = None
    """Word prepended to every caption as "trigger, caption", unless the caption already starts with it."""

    min_size: int = 64
    """Images whose shorter side is below this many pixels are skipped: they only teach blur."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are skipped as possible decompression bombs (a small file that would
    need gigabytes of RAM to decode). Pillow refuses anything above ~179 Mpx whatever this says."""

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder).expanduser())
        if not self.caption_column:
            raise InvalidRequestError(
                "caption_column is empty; use the metadata.jsonl column with captions, e.g. 'text'."
            )
        check_text_length("The default caption", self.default_caption or "")
        check_text_length("The trigger word", self.trigger or "", limit=200)
        if self.min_size < 1:
            raise InvalidRequestError(f"min_size={self.min_size} must be at least 1 pixel.")
        if self.max_pixels < self.min_size**2:
            raise InvalidRequestError(
                f"max_pixels={self.max_pixels} is smaller than a min_size={self.min_size} square; raise max_pixels."
            )


class SkipKind(enum.StrEnum):
    """Why a file was not used; the value is the label shown in summaries."""

    EMPTY = "0-byte file"
    NOT_IMAGE = "not an image"
    CORRUPT = "corrupt or truncated"
    UNSUPPORTED_MODE = "unsupported color mode"
    TOO_SMALL = "too small"
    BOMB = "decompression bomb"
    NO_CAPTION = "no caption"
    METADATA = "metadata problem"
    UNSUPPORTED_FILE = "not a supported image type"
    ORPHAN_CAPTION = "caption without image"
    UNREADABLE = "unreadable"
    OUTSIDE_LINK = "link outside the folder"


class CaptionSource(enum.StrEnum):
    METADATA = "metadata"
    TXT = "txt"
    DEFAULT = "default"


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    caption: str
    """Final caption, trigger included."""
    width: int
    """Size as the trainer will see it: after EXIF rotation."""
    height: int
    caption_source: CaptionSource = CaptionSource.DEFAULT


@dataclasses.dataclass(frozen=True)
class Skipped:
    path: Path
    """The file not used; for metadata problems, the metadata.jsonl itself (the line is in `reason`)."""
    reason: str
    """One line for the user, naming the problem and, where it helps, what to do."""
    kind: SkipKind


@dataclasses.dataclass(frozen=True)
class DatasetReport:
    folder: Path
    samples: list[Sample]
    skipped: list[Skipped]
    images_found: int
    """Files with an image suffix, usable or not."""

    @property
    def caption_counts(self) -> dict[str, int]:
        """How many captions came from metadata.jsonl, .txt files and the default caption."""
        counts = collections.Counter(s.caption_source for s in self.samples)
        return {source.value: counts[source] for source in CaptionSource}

    @property
    def skip_counts(self) -> dict[str, int]:
        return dict(collections.Counter(s.kind.value for s in self.skipped))

    @property
    def resolution_counts(self) -> dict[str, int]:
        """Exact sizes, most common first: a uniform data set (AID is all 600x600) shows as one line."""
        counts = collections.Counter(f"{s.width}x{s.height}" for s in self.samples)
        return dict(counts.most_common())

    @property
    def short_side_counts(self) -> dict[str, int]:
        """Histogram of the shorter side: what upscaling or downscaling training will need."""
        counts = collections.Counter(_short_side_bucket(min(s.width, s.height)) for s in self.samples)
        return {label: counts[label] for label, _ in _SHORT_SIDE_BUCKETS if counts[label]}

    @property
    def aspect_counts(self) -> dict[str, int]:
        """Histogram of aspect ratios, each image counted at the nearest common ratio."""
        counts = collections.Counter(_aspect_label(s.width, s.height) for s in self.samples)
        order = [label for label, _ in _ASPECTS] + [_TALLER, _WIDER]
        return {label: counts[label] for label in order if counts[label]}

    def summary(self, max_skipped: int | None = 5) -> str:
        """A few lines for the UI; `max_skipped=None` lists every skipped file (the CLI: nothing hidden)."""
        max_skipped = len(self.skipped) if max_skipped is None else max_skipped
        problems = f"{len(self.skipped)} files skipped or with problems" if self.skipped else "nothing skipped"
        lines = [f"{self.folder}: {len(self.samples)} usable of {self.images_found} images found, {problems}."]
        if self.samples:
            captions = self.caption_counts
            lines.append(
                f"Captions: {captions['metadata']} from {METADATA_NAME}, {captions['txt']} from .txt files, "
                f"{captions['default']} default."
            )
            lines.append("Sizes: " + _join_counts(self.resolution_counts, limit=4))
            lines.append("Short side: " + _join_counts(self.short_side_counts))
            lines.append("Aspect ratios: " + _join_counts(self.aspect_counts))
        if self.skipped:
            lines.append("Skipped: " + _join_counts(self.skip_counts))
            for skip in self.skipped[:max_skipped]:
                lines.append(f"  {_relative(skip.path, self.folder)}: {skip.reason}")
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more")
        return "\n".join(lines)


def scan_dataset(request: DatasetRequest) -> DatasetReport:
    """Find every image under `request.folder`, check it decodes, and pair it with a caption.

    Raises `DatasetError` if the folder is missing, holds no images, or none of them is usable.
    """
    folder = request.folder
    if not folder.exists():
        raise DatasetError(f"Dataset folder {folder} does not exist; pick a folder of {_SUFFIX_LIST} images.")
    if not folder.is_dir():
        raise DatasetError(f"Dataset path {folder} is a file, not a folder; pick the folder that holds the images.")

    skipped: list[Skipped] = []
    images, captions_txt, metadata_files = _walk(folder, skipped)
    if not images:
        raise DatasetError(
            f"Dataset folder {folder} has no {_SUFFIX_LIST} images (subfolders searched too); "
            "add images or pick another folder."
        )

    metadata: dict[Path, tuple[str, Path, int]] = {}
    for meta_path in metadata_files:
        _read_metadata(meta_path, folder, request.caption_column, metadata, skipped)

    samples = []
    image_keys = {_key(p.with_suffix("")) for p in images}
    for path in images:
        size_or_skip = inspect_image(path, min_size=request.min_size, max_pixels=request.max_pixels)
        if isinstance(size_or_skip, Skipped):
            skipped.append(size_or_skip)
            continue
        caption, source, why_not = _find_caption(path, metadata, captions_txt, request, bool(metadata_files))
        if caption is None:
            skipped.append(Skipped(path, why_not, SkipKind.NO_CAPTION))
            continue
        width, height = size_or_skip
        samples.append(Sample(path, _with_trigger(caption, request.trigger), width, height, source))

    for txt in captions_txt.values():
        if _key(txt.with_suffix("")) not in image_keys:
            reason = f"caption file with no image named {txt.stem}{{{_SUFFIX_LIST}}} beside it"
            skipped.append(Skipped(txt, reason, SkipKind.ORPHAN_CAPTION))

    # Problems of the images themselves first, by path; metadata lines and stray files after them
    # (a stable sort keeps metadata lines in line order).
    side_issues = (SkipKind.METADATA, SkipKind.UNSUPPORTED_FILE, SkipKind.ORPHAN_CAPTION)
    skipped.sort(key=lambda s: (s.kind in side_issues, str(s.path)))
    report = DatasetReport(folder=folder, samples=samples, skipped=skipped, images_found=len(images))
    if not samples:
        examples = "; ".join(f"{_relative(s.path, folder)}: {s.reason}" for s in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise DatasetError(
            f"Dataset folder {folder} has no usable images ({len(images)} found, all skipped: {examples}{more}); "
            "fix or replace those files."
        )
    return report


def inspect_image(path: Path, *, min_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int] | Skipped:
    """(width, height) after EXIF rotation if the image fully decodes, else why it cannot be used."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return Skipped(path, "0-byte file (an interrupted copy or download?)", SkipKind.EMPTY)
        with _open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                return Skipped(path, _bomb_reason(width, height, max_pixels), SkipKind.BOMB)
            if image.mode not in _CONVERTIBLE_MODES:
                reason = f"color mode {image.mode} cannot be converted to RGB; re-save it as RGB"
                return Skipped(path, reason, SkipKind.UNSUPPORTED_MODE)
            if image.format == "JPEG":
                # Decode at 1/8 scale: libjpeg still reads every byte (so truncation is caught)
                # but skips most of the inverse DCT work.
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Image.DecompressionBombError as error:
        return Skipped(path, f"decompression bomb: {error}", SkipKind.BOMB)
    except UnidentifiedImageError:
        return Skipped(path, _not_image_reason(path), SkipKind.NOT_IMAGE)
    except PermissionError as error:
        return Skipped(path, f"cannot read the file ({error.strerror}); check its permissions", SkipKind.UNREADABLE)
    except _DECODE_ERRORS as error:
        return Skipped(path, f"corrupt or truncated image ({error}); re-export or re-download it", SkipKind.CORRUPT)

    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < min_size:
        return Skipped(path, f"too small: {width}x{height}, shorter side below min_size={min_size}", SkipKind.TOO_SMALL)
    return width, height


def load_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image at `path` as 8-bit RGB, upright per its EXIF orientation.

    Raises `DatasetError` if it cannot be decoded or is larger than `max_pixels`.
    """
    try:
        with _open(path) as image:
            if image.width * image.height > max_pixels:
                raise DatasetError(f"{path}: {_bomb_reason(image.width, image.height, max_pixels)}.")
            image.load()
            upright = ImageOps.exif_transpose(image)
    except FileNotFoundError as error:
        raise DatasetError(
            f"{_gone(Path(path))} is gone (moved or deleted while Studio read it); put it back."
        ) from error
    except Image.DecompressionBombError as error:
        raise DatasetError(f"{path}: decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        raise DatasetError(f"{path}: {_not_image_reason(Path(path))}.") from error
    except _DECODE_ERRORS as error:
        raise DatasetError(f"{path}: cannot decode the image ({error}); re-export or remove it.") from error
    return to_rgb(upright)


def _gone(path: Path) -> Path:
    """The outermost missing part of `path`: the data folder itself when the whole folder was deleted."""
    while not path.parent.exists() and path.parent != path:
        path = path.parent
    return path


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode we accept to 8-bit RGB.

    Transparency is composited on white (training on black fringes around cut-outs teaches halos);
    16-bit and 32-bit integer images are scaled from 0..65535, not clipped at 255 as
    `Image.convert` does.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode not in _CONVERTIBLE_MODES:
        raise DatasetError(f"Color mode {image.mode} cannot be converted to RGB; re-save the image as RGB.")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        # Float images have no fixed range; 0..1 is the common convention, else assume 0..255.
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        # Mode I from a PNG is 16-bit data too (Pillow stores it as 16-bit); 65535 / 257 == 255.
        scale = 1 / 257
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _open(path: Path) -> Image.Image:
    # Pillow warns between ~89 and ~179 Mpx and raises above; our `max_pixels` check replaces the
    # warning (callers compare the size right after opening, before decoding anything).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _walk(folder: Path, skipped: list[Skipped]) -> tuple[list[Path], dict[Path, Path], list[Path]]:
    """Images, .txt captions keyed by (folder/stem), and metadata files; other files become skips."""
    images, captions_txt, metadata_files = [], {}, []

    def on_error(error: OSError):
        skipped.append(Skipped(Path(error.filename), f"cannot read folder ({error.strerror})", SkipKind.UNREADABLE))

    inside = Path(folder).resolve()
    for root, dirs, files in os.walk(folder, onerror=on_error):
        # Hidden folders are tool litter (.git, .ipynb_checkpoints with stale copies), not data.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            suffix = path.suffix.lower()
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                # Trained on or quoted, a link would carry files from anywhere on the disk into the data set.
                skipped.append(Skipped(path, "links outside the folder; not followed", SkipKind.OUTSIDE_LINK))
            elif suffix in IMAGE_SUFFIXES:
                images.append(path)
            elif name == METADATA_NAME:
                metadata_files.append(path)
            elif suffix == ".txt":
                captions_txt[_key(path.with_suffix(""))] = path
            elif name in ("metadata.csv", "metadata.parquet"):
                skipped.append(Skipped(path, f"{name} is not read; convert it to {METADATA_NAME}", SkipKind.METADATA))
            else:
                skipped.append(Skipped(path, f"not a {_SUFFIX_LIST} image; ignored", SkipKind.UNSUPPORTED_FILE))
    return images, captions_txt, metadata_files


def _read_metadata(
    meta_path: Path, root: Path, column: str, captions: dict[Path, tuple[str, Path, int]], skipped: list[Skipped]
) -> None:
    """Add {image key: (caption, metadata file, line number)} from one metadata.jsonl; each bad line becomes a skip."""

    def problem(reason: str):
        skipped.append(Skipped(meta_path, reason, SkipKind.METADATA))

    try:
        text = meta_path.read_text(encoding="utf-8-sig")  # -sig: tolerate the BOM Windows editors add
    except UnicodeDecodeError as error:
        return problem(f"not UTF-8 text ({error.reason} at byte {error.start}); re-save it as UTF-8")
    except OSError as error:
        return problem(f"cannot read it ({error.strerror})")

    root_key = _key(root)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problem(f"line {number} is not valid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(row, dict):
            problem(f'line {number} is not a JSON object like {{"file_name": ..., "{column}": ...}}')
            continue
        file_name = row.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            problem(f'line {number} has no "file_name"')
            continue
        image = meta_path.parent / file_name
        key = _key(image)
        if os.path.commonpath([key, root_key]) != str(root_key):
            problem(f"line {number} names {file_name!r}, outside the dataset folder")
            continue
        if not image.is_file():
            problem(f"line {number} names a missing file {file_name!r}")
            continue
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            problem(f"line {number} names {file_name!r}, which is not a {_SUFFIX_LIST} image")
            continue
        if column not in row:
            columns = ", ".join(k for k in row if k != "file_name") or "none"
            problem(
                f"line {number} lacks the caption column {column!r} (other columns: {columns}); "
                "fix the line or set the caption column"
            )
            continue
        caption = _clean_caption(row[column]) if isinstance(row[column], str) else None
        if not caption:
            problem(f"line {number}: caption column {column!r} is empty or not text")
            continue
        if len(caption) > MAX_TEXT_CHARS:
            problem(f"line {number}: the caption is {len(caption):,} characters long; use at most {MAX_TEXT_CHARS:,}")
            continue
        if key in captions:
            _, other_file, other_line = captions[key]
            where = f"line {other_line}" if other_file == meta_path else f"line {other_line} of {other_file}"
            problem(f"line {number} names {file_name!r} again ({where} already did); the first caption is used")
            continue
        captions[key] = (caption, meta_path, number)


def _find_caption(
    path: Path,
    metadata: dict[Path, tuple[str, Path, int]],
    captions_txt: dict[Path, Path],
    request: DatasetRequest,
    has_metadata: bool,
) -> tuple[str | None, CaptionSource | None, str]:
    """(caption, source, "") or (None, None, why there is none)."""
    if (entry := metadata.get(_key(path))) is not None:
        return entry[0], CaptionSource.METADATA, ""
    tried = [f"not in {METADATA_NAME}" if has_metadata else f"no {METADATA_NAME}"]
    txt = captions_txt.get(_key(path.with_suffix("")))
    if txt is not None:
        try:
            caption = _clean_caption(txt.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError) as error:
            caption = None
            tried.append(f"{txt.name} unreadable ({error})")
        else:
            if caption and len(caption) > MAX_TEXT_CHARS:
                tried.append(f"{txt.name} is {len(caption):,} characters long (at most {MAX_TEXT_CHARS:,})")
            elif caption:
                return caption, CaptionSource.TXT, ""
            else:
                tried.append(f"{txt.name} is empty")
    else:
        tried.append(f"no {path.stem}.txt beside it")
    default = _clean_caption(request.default_caption or "")
    if default:
        return default, CaptionSource.DEFAULT, ""
    return None, None, "no caption: " + ", ".join(tried) + ", no default caption; add one of them"


def _clean_caption(text: str) -> str:
    # Multi-line .txt captions become one line; the tokenizer treats all whitespace alike anyway.
    return " ".join(text.split())


def _with_trigger(caption: str, trigger: str | None) -> str:
    trigger = _clean_caption(trigger or "")
    if not trigger or caption == trigger or caption.startswith((trigger + ",", trigger + " ")):
        return caption
    return f"{trigger}, {caption}"


def _key(path: Path) -> Path:
    # Absolute and normalized (not resolved: a symlinked image keeps the name the user sees).
    return Path(os.path.abspath(path))


def _not_image_reason(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            head = file.read(24)
    except OSError as error:
        return f"not an image and unreadable ({error.strerror})"
    # Say what kind of content it is, never quote it: a file named like an image may hold a secret.
    if head and _looks_like_text(head):
        return "not an image: the file holds text"
    return "not an image: unknown format"


def _looks_like_text(head: bytes) -> bool:
    # The read may cut a multi-byte UTF-8 character in two; drop up to 3 trailing bytes.
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(c.isprintable() or c.isspace() for c in text)
    return False


def _bomb_reason(width: int, height: int, max_pixels: int) -> str:
    return (
        f"decompression bomb: {width}x{height} is {width * height:,} pixels, over max_pixels={max_pixels:,}; "
        "raise max_pixels if the image is genuine"
    )


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _join_counts(counts: dict[str, int], limit: int | None = None) -> str:
    items = list(counts.items())
    text = ", ".join(f"{label} ({count})" for label, count in items[:limit])
    if limit is not None and len(items) > limit:
        text += f", {len(items) - limit} other sizes"
    return text or "none"


_SHORT_SIDE_BUCKETS = (("<256", 256), ("256-511", 512), ("512-767", 768), ("768-1023", 1024), ("1024+", math.inf))


def _short_side_bucket(short_side: int) -> str:
    return next(label for label, upper in _SHORT_SIDE_BUCKETS if short_side < upper)


_ASPECTS = (
    ("1:2", 1 / 2),
    ("9:16", 9 / 16),
    ("2:3", 2 / 3),
    ("3:4", 3 / 4),
    ("1:1", 1.0),
    ("4:3", 4 / 3),
    ("3:2", 3 / 2),
    ("16:9", 16 / 9),
    ("2:1", 2.0),
)
_TALLER, _WIDER = "taller than 1:2", "wider than 2:1"


def _aspect_label(width: int, height: int) -> str:
    ratio = width / height
    # Beyond ~2.4:1 "2:1" would hide panoramas that buckets (max 2:1 by default) will crop hard.
    if ratio > 2.4:
        return _WIDER
    if ratio < 1 / 2.4:
        return _TALLER
    return min(_ASPECTS, key=lambda item: abs(math.log(ratio / item[1])))[0]
