"""Hostile or careless input: links out of the data folder, file contents, over-long captions and prompts."""

import os

import pytest
from PIL import Image

from studio.training.dataset import DatasetRequest, SkipKind, scan_dataset


def test_links_out_of_the_folder_are_skipped_and_file_contents_never_quoted(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (96, 96), "green").save(data / "own.png")
    os.symlink(data / "own.png", data / "alias.png")  # a link inside the folder is fine
    secret = tmp_path / "token.txt"
    secret.write_text("hf_TopSecretToken")
    os.symlink(secret, data / "secret.png")
    Image.new("RGB", (96, 96), "blue").save(tmp_path / "elsewhere.png")
    os.symlink(tmp_path / "elsewhere.png", data / "borrowed.png")
    (data / "fake.jpg").write_text("hf_AnotherSecret is not a picture")

    report = scan_dataset(DatasetRequest(folder=data, default_caption="mountains"))

    assert sorted(s.path.name for s in report.samples) == ["alias.png", "own.png"]
    skipped = {s.path.name: s for s in report.skipped}
    assert skipped["secret.png"].kind == skipped["borrowed.png"].kind == SkipKind.OUTSIDE_LINK
    assert skipped["fake.jpg"].kind == SkipKind.NOT_IMAGE
    text = report.summary(max_skipped=100) + " ".join(s.reason for s in report.skipped)
    assert "Secret" not in text and "hf_" not in text


def test_over_long_captions_are_skipped_by_line_with_their_length(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (96, 96), "green").save(data / name)
    lines = ['{"file_name": "a.png", "text": "mountains"}', '{"file_name": "b.png", "text": "%s"}' % ("x" * 60_000)]
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (data / "c.txt").write_text("y " * 30_000)

    report = scan_dataset(DatasetRequest(folder=data))

    assert [s.path.name for s in report.samples] == ["a.png"]
    reasons = " | ".join(s.reason for s in report.skipped)
    assert "line 2: the caption is 60,000 characters long; use at most 10,000" in reasons
    assert "c.txt is 59,999 characters long (at most 10,000)" in reasons


def test_over_long_prompts_are_refused_before_any_work():
    from studio.errors import InvalidRequestError
    from studio.generation.request import GenerationRequest

    with pytest.raises(InvalidRequestError, match=r"The prompt is 4,000,000 characters long; use at most 10,000\."):
        GenerationRequest(model="demo-sd15", prompt="x" * 4_000_000).validate()
    with pytest.raises(InvalidRequestError, match=r"The negative prompt is 10,001 characters long"):
        GenerationRequest(model="demo-sd15", prompt="ok", negative_prompt="n" * 10_001).validate()
