"""A small folder of real-looking photographs plus broken and odd files, as users' folders come.

`make_photo_folder` is shared by the training tests; the tests here check that the training data check
(`check_dataset`, shown before training) reads it as a user would expect.
"""

import json
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from studio.training.request import TrainingRequest, check_dataset


def landscape(width: int, height: int, seed: int) -> Image.Image:
    """Sky gradient, a mountain ridge with snow, noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    ridge = 0.45 + 0.15 * np.sin(x * (6 + seed) + seed) + 0.05 * np.sin(x * 31)
    ground = y > ridge
    image = np.empty((height, width, 3))
    image[..., 0] = np.where(ground, 90 + 60 * y, 120 + 100 * y)
    image[..., 1] = np.where(ground, 80 + 50 * y, 160 + 60 * y)
    image[..., 2] = np.where(ground, 70 + 30 * y, 230 - 20 * y)
    snow = ground & (y < ridge + 0.08)
    image[snow] = 235
    image += rng.normal(0, 8, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def make_photo_folder(folder: Path) -> Path:
    """8 usable photos (jpg/png/webp, nested, EXIF-rotated, grayscale, wide) and 4 files that must be skipped."""
    (folder / "north").mkdir(parents=True)
    captions = {}
    for i, (name, size) in enumerate(
        [
            ("peak-0.jpg", (96, 96)),
            ("peak-1.png", (96, 96)),
            ("peak-2.webp", (128, 96)),
            ("north/ridge-3.jpg", (96, 128)),
            ("north/ridge-4.png", (160, 80)),
        ]
    ):
        landscape(*size, seed=i).save(folder / name, quality=92)
        captions[name] = f"satellite image of mountains, ridge {i}"
    # EXIF orientation 6: stored 128x96, shown (and trained) 96x128.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    landscape(128, 96, seed=5).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=92)
    captions["rotated.jpg"] = "satellite image of mountains, rotated"
    landscape(96, 96, seed=6).convert("L").save(folder / "gray.png")
    (folder / "gray.txt").write_text("grayscale satellite image of mountains\n", encoding="utf-8")
    landscape(96, 96, seed=7).save(folder / "north" / "uncaptioned.jpg")  # gets the default caption
    # What must be skipped: a truncated JPEG, a 0-byte PNG, a text file named .webp, a metadata line in error.
    good = folder / "peak-0.jpg"
    (folder / "corrupt.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.webp").write_text("not an image", encoding="utf-8")
    lines = [json.dumps({"file_name": name, "text": text}) for name, text in captions.items()]
    lines.insert(2, '{"file_name": "peak-1.png", "text": ')  # broken line
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_dataset_check_reports_usable_photos_captions_and_every_skipped_file(tmp_path):
    folder = make_photo_folder(tmp_path / "photos")
    request = TrainingRequest(data=folder, model="demo-sd15", name="x", caption="mountains", trigger="mtn")
    report = check_dataset(request)
    names = sorted(str(s.path.relative_to(folder)) for s in report.samples)
    assert names == sorted(
        [
            "peak-0.jpg",
            "peak-1.png",
            "peak-2.webp",
            "north/ridge-3.jpg",
            "north/ridge-4.png",
            "rotated.jpg",
            "gray.png",
            "north/uncaptioned.jpg",
        ]
    )
    captions = {str(s.path.relative_to(folder)): s.caption for s in report.samples}
    assert captions["peak-2.webp"] == "mtn, satellite image of mountains, ridge 2"
    assert captions["gray.png"] == "mtn, grayscale satellite image of mountains"
    assert captions["north/uncaptioned.jpg"] == "mtn, mountains"
    rotated = next(s for s in report.samples if s.path.name == "rotated.jpg")
    assert (rotated.width, rotated.height) == (96, 128)
    skipped = {s.path.name: s.reason for s in report.skipped}
    assert set(skipped) == {"corrupt.jpg", "empty.png", "notes.webp", "metadata.jsonl"}
    assert "0-byte" in skipped["empty.png"] and "line 3" in skipped["metadata.jsonl"]
    assert report.caption_counts == {"metadata": 6, "txt": 1, "default": 1}
    summary = report.summary()
    assert "8 usable of 11 images" in summary and "corrupt.jpg" in summary
