"""A small folder of real-looking photographs plus broken and odd files, as users' folders come.

`make_photo_folder` (tests/helpers.py) is shared by the training tests; the tests here check that the training data
check (`check_dataset`, shown before training) reads it as a user would expect.
"""

from studio.training.request import TrainingRequest, check_dataset
from tests.helpers import make_photo_folder


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
