"""Dataset scan, image loading and aspect-ratio buckets, on real files written by Pillow in a temp folder."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from studio.errors import DatasetError, InvalidRequestError
from studio.training.buckets import fit_to_bucket, make_buckets, nearest_bucket
from studio.training.dataset import (
    CaptionSource,
    DatasetRequest,
    SkipKind,
    inspect_image,
    load_image,
    scan_dataset,
    to_rgb,
)
from tests.helpers import png_header_only

RNG = np.random.default_rng(0)


def noise_rgb(width, height):
    """Gradient plus noise: compresses like a photo, so JPEG/WebP truncation lands in real data."""
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 128.0),
        ],
        axis=2,
    )
    noisy = base + RNG.normal(0, 20, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def save(folder: Path, name: str, image: Image.Image, **params) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def exif_rotated_jpeg(path: Path) -> None:
    """120x80 stored pixels, left half red, right half blue, EXIF orientation 6 (display rotated 90 deg clockwise)."""
    pixels = np.zeros((80, 120, 3), np.uint8)
    pixels[:, :60] = (255, 0, 0)
    pixels[:, 60:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(pixels, "RGB").save(path, quality=95, exif=exif.tobytes())


METADATA_LINES = [
    {"file_name": "square.jpg", "text": "a square   mountain"},
    {"file_name": "wide.png", "text": "a wide ridge"},
    "{not json",
    {"file_name": "missing.jpg", "text": "gone"},
    {"file_name": "LOUD.JPG", "caption": "wrong column"},
    {"file_name": "nested/deep/inner.jpg", "text": "inner valley"},
    {"file_name": "../outside.jpg", "text": "escapes"},
    {"file_name": "square.jpg", "text": "duplicate"},
    {"file_name": "truncated.jpg", "text": "cut short"},
    {"file_name": "rotated.jpg", "text": "rotated"},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    folder = root / "mountains"
    save(folder, "square.jpg", noise_rgb(96, 96), quality=90)
    save(folder, "wide.png", noise_rgb(200, 100))
    save(folder, "tall.webp", noise_rgb(80, 160))
    (folder / "tall.txt").write_text("a tall\npeak\n")
    save(folder, "LOUD.JPG", noise_rgb(100, 75))  # metadata line lacks the column -> default caption
    save(folder, "plain.png", noise_rgb(64, 64))  # no caption anywhere -> default caption
    save(folder, "nested/deep/inner.jpg", noise_rgb(128, 96))
    # A metadata file in a subfolder: its file names are relative to that subfolder.
    save(folder, "nested/local.png", noise_rgb(90, 90))
    (folder / "nested" / "metadata.jsonl").write_text(json.dumps({"file_name": "local.png", "text": "local"}) + "\n")
    exif_rotated_jpeg(folder / "rotated.jpg")
    save(folder, "gray.png", Image.new("L", (70, 70), 100))

    full = (folder / "square.jpg").read_bytes()
    save(folder, "truncated.jpg", noise_rgb(200, 200), quality=90)
    (folder / "truncated.jpg").write_bytes((folder / "truncated.jpg").read_bytes()[: len(full) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "fake.jpg").write_text("hello, this is not a picture\n")
    save(folder, "tiny.png", noise_rgb(32, 20))
    png_header_only(folder / "bomb.png", 20000, 20000)  # over Pillow's hard limit: Pillow raises
    png_header_only(folder / "big.png", 10000, 10000)  # in Pillow's warning zone: our max_pixels catches it
    (folder / "notes.md").write_text("# my data\n")
    (folder / "orphan.txt").write_text("caption for nothing")
    save(folder, ".thumbnails/hidden.jpg", noise_rgb(64, 64))  # hidden folder: ignored, not reported
    save(root, "outside.jpg", noise_rgb(64, 64))

    lines = [line if isinstance(line, str) else json.dumps(line) for line in METADATA_LINES]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def report(dataset):
    return scan_dataset(DatasetRequest(folder=dataset, default_caption="  a mountain  "))


def by_name(items, folder):
    return {str(item.path.relative_to(folder)): item for item in items}


EXPECTED_SAMPLES = {
    # name: (caption, source, width, height)
    "square.jpg": ("a square mountain", CaptionSource.METADATA, 96, 96),
    "wide.png": ("a wide ridge", CaptionSource.METADATA, 200, 100),
    "tall.webp": ("a tall peak", CaptionSource.TXT, 80, 160),
    "LOUD.JPG": ("a mountain", CaptionSource.DEFAULT, 100, 75),
    "plain.png": ("a mountain", CaptionSource.DEFAULT, 64, 64),
    "gray.png": ("a mountain", CaptionSource.DEFAULT, 70, 70),
    "nested/deep/inner.jpg": ("inner valley", CaptionSource.METADATA, 128, 96),
    "nested/local.png": ("local", CaptionSource.METADATA, 90, 90),
    "rotated.jpg": ("rotated", CaptionSource.METADATA, 80, 120),  # EXIF 6: stored 120x80, shown 80x120
}


def test_usable_samples_have_their_captions_and_upright_sizes(report, dataset):
    samples = by_name(report.samples, dataset)
    assert set(samples) == set(EXPECTED_SAMPLES)
    for name, (caption, source, width, height) in EXPECTED_SAMPLES.items():
        sample = samples[name]
        got = (sample.caption, sample.caption_source, sample.width, sample.height)
        assert got == (caption, source, width, height), name


EXPECTED_SKIPS = [
    # (file, kind, words the reason must contain)
    ("truncated.jpg", SkipKind.CORRUPT, "truncated"),
    ("empty.png", SkipKind.EMPTY, "0-byte"),
    ("fake.jpg", SkipKind.NOT_IMAGE, "not an image: the file holds text"),
    ("tiny.png", SkipKind.TOO_SMALL, "32x20"),
    ("bomb.png", SkipKind.BOMB, "decompression bomb"),
    ("big.png", SkipKind.BOMB, "10000x10000 is 100,000,000 pixels"),
    ("notes.md", SkipKind.UNSUPPORTED_FILE, "not a .jpg/.jpeg/.png/.webp image"),
    ("orphan.txt", SkipKind.ORPHAN_CAPTION, "no image named orphan"),
    ("metadata.jsonl", SkipKind.METADATA, "line 3 is not valid JSON"),
    ("metadata.jsonl", SkipKind.METADATA, "line 4 names a missing file 'missing.jpg'"),
    ("metadata.jsonl", SkipKind.METADATA, "line 5 lacks the caption column 'text' (other columns: caption)"),
    ("metadata.jsonl", SkipKind.METADATA, "line 7 names '../outside.jpg', outside the dataset folder"),
    ("metadata.jsonl", SkipKind.METADATA, "line 8 names 'square.jpg' again (line 1 already did)"),
]


@pytest.mark.parametrize("name,kind,words", EXPECTED_SKIPS, ids=[f"{n}-{w[:12]}" for n, _, w in EXPECTED_SKIPS])
def test_every_skipped_file_is_reported_with_its_reason(report, dataset, name, kind, words):
    matches = [s for s in report.skipped if str(s.path.relative_to(dataset)) == name and words in s.reason]
    assert len(matches) == 1, [(str(s.path), s.reason) for s in report.skipped]
    assert matches[0].kind == kind
    assert "\n" not in matches[0].reason


def test_nothing_is_skipped_silently_and_hidden_files_are_ignored(report):
    assert len(report.skipped) == len(EXPECTED_SKIPS)
    assert report.images_found == len(EXPECTED_SAMPLES) + 6  # truncated, empty, fake, tiny, bomb, big
    assert not any(".thumbnails" in str(s.path) for s in report.samples + report.skipped)


def test_counts_histograms_and_summary(report, dataset):
    assert report.caption_counts == {"metadata": 5, "txt": 1, "default": 3}
    assert report.short_side_counts == {"<256": 9}
    assert report.aspect_counts == {"1:2": 1, "2:3": 1, "1:1": 4, "4:3": 2, "2:1": 1}
    assert report.resolution_counts["96x96"] == 1
    assert report.skip_counts["metadata problem"] == 5
    summary = report.summary()
    assert f"{dataset}: 9 usable of 15 images found, 13 files skipped" in summary
    assert "Captions: 5 from metadata.jsonl, 1 from .txt files, 3 default." in summary
    assert "... and 8 more" in summary
    assert len(summary.splitlines()) <= 12


def test_without_default_caption_uncaptioned_images_are_skipped_saying_why(dataset):
    report = scan_dataset(DatasetRequest(folder=dataset))
    skipped = {name: s for name, s in by_name(report.skipped, dataset).items() if s.kind == SkipKind.NO_CAPTION}
    assert set(skipped) == {"LOUD.JPG", "plain.png", "gray.png"}
    assert "not in metadata.jsonl, no plain.txt beside it, no default caption" in skipped["plain.png"].reason


@pytest.mark.parametrize(
    "trigger,expected",
    [
        (None, "a wide ridge"),
        ("aidmtn", "aidmtn, a wide ridge"),
        ("a wide", "a wide ridge"),  # caption already starts with the trigger: not doubled
        ("  ", "a wide ridge"),
    ],
)
def test_trigger_is_prepended_once(dataset, trigger, expected):
    report = scan_dataset(DatasetRequest(folder=dataset, default_caption="x", trigger=trigger))
    assert by_name(report.samples, dataset)["wide.png"].caption == expected


def test_low_max_pixels_skips_large_images_as_bombs(dataset):
    report = scan_dataset(DatasetRequest(folder=dataset, default_caption="x", max_pixels=100 * 100))
    bombs = {name for name, s in by_name(report.skipped, dataset).items() if s.kind == SkipKind.BOMB}
    # Checked from the header, before decoding: the truncated 200x200 JPEG counts as too big first.
    assert bombs == {"bomb.png", "big.png", "wide.png", "tall.webp", "nested/deep/inner.jpg", "truncated.jpg"}
    assert "over max_pixels=10,000" in by_name(report.skipped, dataset)["wide.png"].reason


def test_load_image_refuses_bombs_with_a_dataset_error(dataset):
    for name in ("bomb.png", "big.png"):
        with pytest.raises(DatasetError, match="decompression bomb"):
            load_image(dataset / name)


def test_inspect_single_image(dataset):
    assert inspect_image(dataset / "rotated.jpg") == (80, 120)
    assert inspect_image(dataset / "tiny.png", min_size=16) == (32, 20)


# --- folders that cannot be used at all ----------------------------------------------------------


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        scan_dataset(DatasetRequest(folder=tmp_path / "nope"))


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError) as caught:
        scan_dataset(DatasetRequest(folder=tmp_path / "empty"))
    message = str(caught.value)
    assert str(tmp_path / "empty") in message and "no .jpg/.jpeg/.png/.webp images" in message
    assert "\n" not in message


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        scan_dataset(DatasetRequest(folder=tmp_path / "a.jpg"))


def test_folder_without_usable_images_lists_reasons(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("text")
    save(folder, "c.png", noise_rgb(10, 10))
    (folder / "metadata.jsonl").write_text("{broken\n")
    with pytest.raises(DatasetError) as caught:
        scan_dataset(DatasetRequest(folder=folder, default_caption="x"))
    message = str(caught.value)
    assert str(folder) in message and "3 found, all skipped" in message
    assert "a.png: 0-byte file" in message and "b.jpg: not an image" in message and "c.png: too small" in message
    assert "and 1 more" in message and "\n" not in message


@pytest.mark.parametrize(
    "fields",
    [{"min_size": 0}, {"caption_column": ""}, {"max_pixels": 10}],
)
def test_bad_request_fields_are_rejected(tmp_path, fields):
    with pytest.raises(InvalidRequestError):
        DatasetRequest(folder=tmp_path, **fields)


# --- loading: every mode to 8-bit RGB --------------------------------------------------------------


def test_exif_orientation_is_applied(dataset):
    image = load_image(dataset / "rotated.jpg")
    assert image.mode == "RGB" and image.size == (80, 120)
    pixels = np.asarray(image, dtype=np.int16)
    # Rotated 90 degrees clockwise: the stored left (red) half is now on top, blue below.
    assert np.abs(pixels[:50] - (255, 0, 0)).max() < 40
    assert np.abs(pixels[70:] - (0, 0, 255)).max() < 40


def rgba_image():
    return Image.fromarray(np.array([[[255, 0, 0, 255], [0, 0, 0, 0], [0, 0, 255, 128]]], np.uint8), "RGBA")


def palette_with_transparency():
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 0, 0, 0, 255])
    image.putdata([0, 1, 2])
    image.info["transparency"] = 1  # palette entry 1 is transparent
    return image


def sixteen_bit():
    return Image.fromarray(np.array([[0, 30000, 32896, 65535]], np.uint16))


def cmyk():
    return Image.fromarray(np.array([[[0, 255, 255, 0], [0, 0, 0, 255], [0, 0, 0, 0]]], np.uint8), "CMYK")


LOAD_CASES = [
    # (file name, image builder, expected RGB row, tolerance)
    ("gray.png", lambda: Image.new("L", (3, 1), 100), [(100, 100, 100)] * 3, 0),
    ("rgba.png", rgba_image, [(255, 0, 0), (255, 255, 255), (127, 127, 255)], 1),
    ("la.png", lambda: Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA"), [(50,) * 3, (255,) * 3], 0),
    ("palette.png", palette_with_transparency, [(255, 0, 0), (255, 255, 255), (0, 0, 255)], 0),
    # 16-bit: scaled by 65535 -> 255, so mid-gray stays mid-gray instead of clipping to white.
    ("deep.png", sixteen_bit, [(0, 0, 0), (117, 117, 117), (128, 128, 128), (255, 255, 255)], 0),
    ("cmyk.jpg", cmyk, [(255, 0, 0), (0, 0, 0), (255, 255, 255)], 12),
    ("rgb.webp", lambda: Image.new("RGB", (2, 1), (10, 200, 30)), [(10, 200, 30)] * 2, 0),
]


@pytest.mark.parametrize("name,build,expected,tolerance", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_load_image_converts_to_8bit_rgb(tmp_path, name, build, expected, tolerance):
    source = build()
    params = {"quality": 100} if name.endswith(".jpg") else {"lossless": True} if name.endswith(".webp") else {}
    path = save(tmp_path, name, source, **params)
    with Image.open(path) as stored:
        assert stored.mode == source.mode  # the file really holds the mode under test
    image = load_image(path)
    assert image.mode == "RGB"
    got = np.asarray(image, dtype=np.int16)[0]
    assert np.abs(got - np.array(expected)).max() <= tolerance, got.tolist()


@pytest.mark.parametrize(
    "image,expected",
    [
        (Image.fromarray(np.array([[0, 30000, 65535]], np.int32)), [0, 117, 255]),  # mode I holds 16-bit data
        (Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), [0, 128, 255]),  # mode F in 0..1
        (Image.new("1", (3, 1), 1), [255, 255, 255]),
    ],
    ids=["I", "F", "1"],
)
def test_to_rgb_scales_wide_modes(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == expected


def test_load_image_reports_undecodable_files(dataset):
    cases = (("truncated.jpg", "cannot decode"), ("fake.jpg", "not an image"), ("empty.png", "not an image"))
    for name, words in cases:
        with pytest.raises(DatasetError, match=words):
            load_image(dataset / name)


# --- aspect-ratio buckets ---------------------------------------------------------------------------


@pytest.mark.parametrize("resolution,step", [(512, 64), (512, 32), (768, 64), (1024, 64), (1024, 128)])
def test_buckets_are_multiples_of_step_and_within_budget(resolution, step):
    buckets = make_buckets(resolution, step)
    assert (resolution, resolution) in buckets
    for width, height in buckets:
        assert width % step == 0 and height % step == 0 and width % 8 == 0 and height % 8 == 0
        assert width * height <= resolution**2
        assert width * height >= 0.85 * resolution**2
        assert max(width, height) / min(width, height) <= 2.0
        assert (height, width) in buckets  # every wide bucket has its tall twin


@pytest.mark.parametrize(
    "size,resolution,step,expected",
    [
        ((1000, 1000), 512, 64, (512, 512)),
        ((3000, 3000), 1024, 64, (1024, 1024)),
        ((1600, 800), 1024, 64, (1408, 704)),  # 2:1 -> the 2:1 bucket
        ((800, 1600), 1024, 64, (704, 1408)),  # 1:2 -> the tall twin
        ((1024, 512), 512, 32, (704, 352)),
        ((1024, 512), 512, 64, (640, 384)),  # the widest bucket 512/64 offers
        ((1200, 900), 1024, 64, (1152, 896)),  # 4:3 -> 1.29
        ((4000, 500), 1024, 64, (1408, 704)),  # beyond max_aspect: the widest bucket
    ],
)
def test_nearest_bucket_matches_aspect(size, resolution, step, expected):
    assert nearest_bucket(*size, make_buckets(resolution, step)) == expected


@pytest.mark.parametrize(
    "size,resolution,step,max_loss",
    [
        ((1600, 800), 1024, 64, 0.001),
        ((1024, 512), 512, 32, 0.001),
        ((1200, 900), 1024, 64, 0.04),
        ((700, 700), 512, 64, 0.0),
    ],
)
def test_fit_to_bucket_covers_and_crops_little(size, resolution, step, max_loss):
    image = noise_rgb(*size)
    bucket = nearest_bucket(*size, make_buckets(resolution, step))
    fitted, (top, left) = fit_to_bucket(image, bucket)
    assert fitted.size == bucket
    scale = max(bucket[0] / size[0], bucket[1] / size[1])
    lost = 1 - (bucket[0] * bucket[1]) / (size[0] * scale * size[1] * scale)
    assert lost <= max_loss + 1e-3
    assert top >= 0 and left >= 0


def test_fit_to_bucket_center_crops_and_reports_top_left():
    # 800x600 into a square: resized to 1365x1024, 341 columns cut, 170 of them on the left.
    pixels = np.zeros((600, 800, 3), np.uint8)
    pixels[:, :80] = 255  # a white stripe (137 px after resizing) on the far left that the center crop must remove
    fitted, (top, left) = fit_to_bucket(Image.fromarray(pixels, "RGB"), (1024, 1024))
    assert fitted.size == (1024, 1024) and (top, left) == (0, 170)
    assert np.asarray(fitted)[:, :2].max() < 10  # no white left after the crop
    same, crop = fit_to_bucket(Image.fromarray(pixels[:, :600], "RGB").resize((512, 512)), (512, 512))
    assert same.size == (512, 512) and crop == (0, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_buckets(500),  # not a multiple of 64
        lambda: make_buckets(512, step=12),  # not a multiple of 8
        lambda: make_buckets(512, max_aspect=0.5),
        lambda: nearest_bucket(0, 10, [(512, 512)]),
        lambda: nearest_bucket(10, 10, []),
    ],
)
def test_bucket_errors(call):
    with pytest.raises(InvalidRequestError):
        call()
