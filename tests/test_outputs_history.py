"""Output history lists only the images Studio saved: links planted in outputs/ never reach the browser."""

import os

from PIL import Image

from studio.generation import outputs


def _save(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(folder / name)
    return folder / name


def test_history_skips_symlinks_and_linked_folders(tmp_path):
    out = tmp_path / "outputs"
    day = out / "txt2img" / "2026-12-01"
    real = _save(day, "00001-1.png")
    secret = tmp_path / "token.txt"
    secret.write_text("hf_secret")
    os.symlink(secret, day / "00002-2.png")  # a file link named like an output image
    outside = _save(tmp_path / "elsewhere", "00001-9.png")
    os.symlink(outside.parent, out / "txt2img" / "2026-12-02")  # a folder link named like a day

    assert outputs.history(out) == [real]


def test_history_is_newest_first_and_limited(tmp_path):
    out = tmp_path / "outputs"
    older = _save(out / "txt2img" / "2026-11-30", "00007-7.png")
    newer = [_save(out / "txt2img" / "2026-12-01", f"0000{i}-{i}.png") for i in (1, 2)]
    assert outputs.history(out) == [newer[1], newer[0], older]
    assert outputs.history(out, limit=1) == [newer[1]]
