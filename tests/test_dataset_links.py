"""The data check reads only the chosen folder: links out of it are not followed and nothing is quoted."""

import os

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
