"""LoRA training in-process on the tiny real SD1.5/SDXL models: the adapter folder, reload, kohya export, resume.

A run trains a few steps at 64 px with a high learning rate, so the adapter visibly changes the image.
The last validation image was drawn by the trained model itself; a fresh pipeline with the saved files
loaded must draw the same image, which proves the files hold the trained weights with the right alpha.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from studio.errors import DatasetError, TrainingError, UnsafePathError
from studio.generation.infotext import parse_infotext, read_infotext
from studio.models.kinds import ModelKind
from studio.models.tiny import build_tiny, save_tiny
from studio.training.checkpoints import list_checkpoints, load_checkpoint
from tests.helpers import draw, make_config, make_photo_folder, pixels, quick_request, run_training


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("data") / "photos")


@pytest.fixture(scope="module")
def sd15_run(photos, tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("sd15"))
    request = quick_request(photos, steps=4, validation_every=2, min_snr_gamma=5.0, noise_offset=0.05)
    folder, events = run_training(request, config)
    return config, request, folder, events


def test_adapter_folder_has_every_file_of_the_contract(sd15_run):
    config, request, folder, _ = sd15_run
    assert folder == config.loras_dir.resolve() / "alps"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter.json",
        "alps.safetensors",
        "pytorch_lora_weights.safetensors",
        "samples",
    ]
    assert [p.name for p in config.loras_dir.iterdir()] == ["alps"]  # no temporary folder left behind
    manifest = json.loads((folder / "adapter.json").read_text())
    assert manifest["name"] == "alps" and manifest["base_model"] == "demo-sd15" and manifest["base_kind"] == "sd15"
    assert manifest["trigger_words"] == ["mtn"] and manifest["rank"] == 4 and manifest["alpha"] == 2.0
    assert manifest["text_encoder"] is False and manifest["blend"] is None
    assert manifest["settings"]["steps"] == 4 and manifest["settings"]["num_images"] == 8
    assert manifest["settings"]["data"] == "photos"  # the folder's name, not the user's local path
    assert [s["step"] for s in manifest["samples"]] == [2, 4]
    for sample in manifest["samples"]:
        assert (folder / sample["file"]).is_file() and sample["seed"] == request.validation_seed
        assert parse_infotext(read_infotext(folder / sample["file"]))["Prompt"] == "mtn, satellite image of mountains"
    readme = (folder / "README.md").read_text()
    assert "# alps" in readme and "mtn" in readme and "samples/step-000004.png" in readme
    assert all(os.stat(p).st_mode & 0o044 for p in folder.rglob("*"))  # readable like ordinary files


def test_events_report_loss_pace_eta_samples_and_done(sd15_run):
    _, _, folder, events = sd15_run
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4] and all(e.total_steps == 4 for e in steps)
    assert all(e.loss > 0 and e.lr > 0 and e.sec_per_step > 0 for e in steps)
    assert steps[0].eta > 0 and steps[-1].eta == 0
    assert [e.step for e in events if e.kind == "sample"] == [2, 4]
    assert events[0].kind == "dataset" and "8 usable" in events[0].message
    assert events[-1].kind == "done" and Path(events[-1].path) == folder


def test_saved_adapter_reproduces_the_trained_model_and_changes_the_base(sd15_run):
    _, _, folder, _ = sd15_run
    trained_image = Image.open(folder / "samples" / "step-000004.png")
    pipe = build_tiny(ModelKind.SD15)
    base = draw(pipe, folder / "samples" / "step-000004.png")
    pipe.load_lora_weights(folder)
    reloaded = draw(pipe, folder / "samples" / "step-000004.png")
    assert np.abs(pixels(reloaded) - pixels(trained_image)).max() <= 1.0
    assert np.abs(pixels(base) - pixels(trained_image)).mean() > 3.0


def test_kohya_file_has_real_alpha_and_metadata_and_loads_with_the_same_effect(sd15_run):
    _, _, folder, _ = sd15_run
    kohya = folder / "alps.safetensors"
    with safe_open(str(kohya), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert keys and all(k.startswith("lora_unet_") for k in keys) and alphas == {2.0}
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_num_train_images"] == "8" and json.loads(meta["ss_tag_frequency"]) == {"dataset": {"mtn": 8}}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.title"] == "alps"
    sample = folder / "samples" / "step-000004.png"
    pipe = build_tiny(ModelKind.SD15)
    pipe.load_lora_weights(folder, weight_name="alps.safetensors")
    assert np.abs(pixels(draw(pipe, sample)) - pixels(Image.open(sample))).max() <= 1.0


def test_sdxl_with_text_encoders_trains_reloads_and_exports_kohya(photos, tmp_path):
    config = make_config(tmp_path)
    request = quick_request(
        photos, model="demo-sdxl", name="alps-xl", steps=3, train_text_encoder=True, gradient_checkpointing=True
    )
    folder, _ = run_training(request, config)
    with safe_open(str(folder / "alps-xl.safetensors"), "pt") as f:
        prefixes = {k.split("_")[1] for k in f.keys()}
    assert prefixes == {"unet", "te1", "te2"}
    assert json.loads((folder / "adapter.json").read_text())["text_encoder"] is True
    sample = folder / "samples" / "step-000003.png"
    for weight_name in ("pytorch_lora_weights.safetensors", "alps-xl.safetensors"):
        pipe = build_tiny(ModelKind.SDXL)
        base = draw(pipe, sample)
        pipe.load_lora_weights(folder, weight_name=weight_name)
        assert np.abs(pixels(draw(pipe, sample)) - pixels(Image.open(sample))).max() <= 1.0, weight_name
    assert np.abs(pixels(base) - pixels(Image.open(sample))).mean() > 3.0


def test_stop_then_resume_gives_the_same_weights_as_one_run(photos, tmp_path):
    """v-prediction model, accumulation, flips, buckets, min-SNR: everything random must replay on resume."""
    config = make_config(tmp_path)
    save_tiny(ModelKind.SD15, config.models_dir / "tiny-v", prediction_type="v_prediction")
    settings = dict(
        model="tiny-v",
        steps=4,
        gradient_accumulation=2,
        min_snr_gamma=5.0,
        noise_offset=0.1,
        lr_scheduler="cosine",
        warmup_steps=2,
    )
    whole, _ = run_training(quick_request(photos, name="whole", **settings), config)

    stopped, events = run_training(quick_request(photos, name="split", **settings), config, stop_after_steps=2)
    assert stopped is None and events[-1].kind == "stopped" and events[-1].step == 2
    checkpoints = list_checkpoints(config.outputs_dir / "training" / "split" / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-000002"] and load_checkpoint(checkpoints[0]).step == 2
    assert not (config.loras_dir / "split").exists()

    resumed, events = run_training(quick_request(photos, name="split", resume=True, **settings), config)
    assert not any("Caching latents" in e.message for e in events)  # the caches were kept on disk
    assert [e.step for e in events if e.kind == "step"] == [3, 4]
    resumed_at = next(e for e in events if e.message.startswith("Resumed at step 2"))
    assert [step for step, _ in resumed_at.losses] == [1, 2]  # the loss curve continues
    with (
        safe_open(str(whole / "pytorch_lora_weights.safetensors"), "pt") as a,
        safe_open(str(resumed / "pytorch_lora_weights.safetensors"), "pt") as b,
    ):
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=0, atol=1e-6)


def test_resume_refuses_changed_settings_and_missing_checkpoints(photos, tmp_path):
    config = make_config(tmp_path)
    with pytest.raises(TrainingError, match="Nothing to resume"):
        run_training(quick_request(photos, resume=True), config)
    run_training(quick_request(photos, steps=3), config, stop_after_steps=1)
    with pytest.raises(TrainingError, match="other settings"):
        run_training(quick_request(photos, steps=3, rank=8, resume=True), config)


def test_stop_while_caching_ends_cleanly_without_a_checkpoint(photos, tmp_path):
    config = make_config(tmp_path)
    folder, events = run_training(quick_request(photos), config, stop_after_steps=0)
    assert folder is None and events[-1].kind == "stopped" and "caching" in events[-1].message
    assert not any(e.kind == "step" for e in events)
    assert list_checkpoints(config.outputs_dir / "training" / "alps" / "checkpoints") == []


def test_user_errors_come_before_any_model_loads(photos, tmp_path):
    config = make_config(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        run_training(quick_request(tmp_path / "empty", model="no-such-model"), config)
    with pytest.raises(UnsafePathError, match="alps-v1"):
        run_training(quick_request(photos, name="../escape"), config)
    (config.loras_dir / "alps").mkdir()
    with pytest.raises(TrainingError, match="already exists"):
        run_training(quick_request(photos, model="no-such-model"), config)


def test_validation_prompts_are_read_as_a1111_prompts(photos, tmp_path):
    """Weights change the validation sample; a prompt past 75 tokens draws (two chunks, negative padded to match)."""
    samples = {}
    long_tail = ", ".join(["snowy ridge"] * 40)  # ~120 tokens
    for name, prompt in [
        ("plain", "mtn, satellite image"),
        ("weighted", "mtn, (satellite:1.8) image"),
        ("long", f"mtn, satellite image, {long_tail}"),
    ]:
        request = quick_request(photos, name=name, steps=1, validation_steps=2, validation_prompt=prompt)
        folder, _ = run_training(request, make_config(tmp_path / name))
        (sample,) = sorted((folder / "samples").glob("*.png"))
        samples[name] = pixels(Image.open(sample))
    assert np.abs(samples["weighted"] - samples["plain"]).mean() > 0
    assert samples["long"].shape == samples["plain"].shape
