"""The Train tab of the launched app, driven by gradio_client: data check, /train to an adapter in loras/."""

from __future__ import annotations

import json

import pytest
from gradio_client.exceptions import AppError

from tests.helpers import TRAIN_FORM, make_photo_folder


def test_check_data_lists_usable_and_skipped_files(client, tmp_path):
    photos = make_photo_folder(tmp_path / "photos")
    report = client.predict(data=str(photos), name="", api_name="/check_training_data", **TRAIN_FORM)
    assert "8 usable of 11 images" in report and "corrupt.jpg" in report and "empty.png" in report


def test_train_writes_the_adapter_to_loras_and_says_so(client, studio_running_app, tmp_path):
    photos = make_photo_folder(tmp_path / "photos")
    status, curve, gallery = client.predict(data=str(photos), name="ui-trained-alps", api_name="/train", **TRAIN_FORM)
    folder = studio_running_app.loras_dir / "ui-trained-alps"
    assert "Done" in status and "ui-trained-alps" in status
    manifest = json.loads((folder / "adapter.json").read_text())
    assert manifest["base_model"] == "demo-sd15" and manifest["trigger_words"] == ["mtn"]
    assert [s["step"] for s in manifest["samples"]] == [2, 3]
    assert len(gallery) == 2 and curve is not None
    # Training the same name again is refused with the reason, and nothing is overwritten.
    with pytest.raises(AppError, match="already exists"):
        client.predict(data=str(photos), name="ui-trained-alps", api_name="/train", **TRAIN_FORM)


def test_bad_folder_and_resume_without_checkpoint_are_clear_errors(client, tmp_path):
    with pytest.raises(AppError, match="does not exist"):
        client.predict(data=str(tmp_path / "missing"), name="x", api_name="/train", **TRAIN_FORM)
    photos = make_photo_folder(tmp_path / "photos")
    with pytest.raises(AppError, match="Nothing to resume"):
        client.predict(data=str(photos), name="never-ran", api_name="/resume_training", **TRAIN_FORM)
