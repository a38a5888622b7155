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


def test_nul_bytes_and_over_long_names_get_one_line_not_a_traceback(tmp_path):
    """Each name reaches a place that used to raise "embedded null byte" or "File name too long" from deep inside."""
    from studio.lora.library import find_lora, scan_loras
    from tests.helpers import add_lora

    add_lora(tmp_path / "loras", "alps")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in ("alps\0../../etc", "a" * 300, "a/" * 3000):
        _refused_in_one_line(tmp_path, name)
    # Nothing was written, and the LoRA folder still lists its adapter.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert [entry.name for entry in scan_loras(tmp_path / "loras")] == ["alps"]
    assert find_lora(tmp_path / "loras", "alps").name == "alps"


def _refused_in_one_line(tmp_path, name: str) -> None:
    from studio.errors import StudioError
    from studio.evaluation.requests import export_folder
    from studio.generation.request import GenerationRequest
    from studio.hub.adapters import find_shareable
    from studio.lora.library import find_lora
    from studio.training.request import TrainingRequest

    attempts = {
        "LoRA in a generation": lambda: GenerationRequest(
            model="demo-sd15", prompt="x", loras=((name, 1.0),)
        ).validate(),
        "model": lambda: GenerationRequest(model=name, prompt="x").validate(),
        "LoRA lookup": lambda: find_lora(tmp_path / "loras", name),
        "push": lambda: find_shareable(tmp_path / "loras", name),
        "data set export": lambda: export_folder(tmp_path / "outputs", name),
        "training data": lambda: TrainingRequest(data=name, model="demo-sd15", name="alps-v2").validate(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(StudioError) as refused:
            attempt()
        message = str(refused.value)
        assert "\n" not in message and ("NUL character" in message or "too long" in message), (what, message)
        assert len(message) < 300, (what, message)  # the name is shown shortened


def test_prompts_with_a_nul_byte_are_refused_and_say_where():
    from studio.errors import InvalidRequestError
    from studio.generation.request import GenerationRequest

    with pytest.raises(InvalidRequestError, match=r"^The prompt contains a NUL character \(at position 5\); remove it"):
        GenerationRequest(model="demo-sd15", prompt="alps \0 snow").validate()
    with pytest.raises(InvalidRequestError, match="The negative prompt contains a NUL"):
        GenerationRequest(model="demo-sd15", prompt="alps", negative_prompt="\0").validate()
    GenerationRequest(model="demo-sd15", prompt="alps, snow\nridge").validate()  # newlines and the rest are fine
