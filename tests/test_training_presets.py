"""Presets per VRAM budget, the peak-VRAM estimate, request validation, and the data order, without training."""

import json

import pytest
import torch

from studio.errors import InvalidRequestError, UnsafePathError
from studio.models.kinds import ModelKind
from studio.training.events import TrainingEvent
from studio.training.order import DataOrder
from studio.training.presets import (
    GB,
    LORA_PARAMS_PER_RANK,
    PARAMS,
    PRESETS,
    estimate_vram,
    get_preset,
    pick_preset,
    resolve_precision,
)
from studio.training.request import TrainingRequest


def request(tmp_path, **changes) -> TrainingRequest:
    return TrainingRequest(**{"data": tmp_path, "model": "demo-sd15", "name": "alps", **changes})


@pytest.mark.parametrize(
    "kind, vram_gb, expected",
    [
        (ModelKind.SD15, None, "sd15-cpu"),  # no accelerator: no GPU memory savings that only cost time
        (ModelKind.SDXL, None, "sdxl-cpu"),
        (ModelKind.SD15, 4, "sd15-8gb"),  # a small card: the lightest GPU settings
        (ModelKind.SD15, 6, "sd15-8gb"),
        (ModelKind.SD15, 8, "sd15-8gb"),
        (ModelKind.SDXL, 11.7, "sdxl-12gb"),  # an RTX 3060 reports a little under 12 GiB
        (ModelKind.SDXL, 16, "sdxl-12gb"),
        (ModelKind.SD15, 24, "sd15-24gb"),
        (ModelKind.SDXL, 80, "sdxl-24gb"),
    ],
)
def test_preset_is_picked_from_the_detected_card(kind, vram_gb, expected):
    assert pick_preset(kind, None if vram_gb is None else int(vram_gb * GB)).name == expected


def test_cpu_preset_trains_without_gpu_memory_savings():
    sd15 = pick_preset(ModelKind.SD15, None)
    assert sd15.settings["gradient_checkpointing"] is False and sd15.settings["optimizer"] == "adamw"
    assert sd15.settings["batch_size"] == 1 and sd15.settings["resolution"] == 512
    assert sd15.label == "CPU, no GPU · SD1.5" and sd15 is get_preset("sd15-cpu")
    assert pick_preset(ModelKind.SDXL, None).settings["optimizer"] == "adamw"  # 8-bit AdamW needs CUDA
    assert all(p.settings["gradient_checkpointing"] for p in PRESETS.values() if p.vram_gb == 8)  # GPUs unchanged


@pytest.mark.parametrize("name", sorted(name for name, preset in PRESETS.items() if preset.vram_gb))
def test_every_preset_fits_its_card_by_the_estimate(tmp_path, name):
    preset = get_preset(name)
    estimate = estimate_vram(request(tmp_path, **preset.settings), preset.kind)
    assert estimate.total <= preset.vram_gb * GB * 0.95, estimate.summary()
    assert f"{estimate.total / GB:.1f} GB" in estimate.summary()


def test_estimate_grows_with_batch_and_resolution_and_shrinks_with_checkpointing(tmp_path):
    base = estimate_vram(request(tmp_path), ModelKind.SDXL).total
    assert estimate_vram(request(tmp_path, batch_size=2), ModelKind.SDXL).total > base
    assert estimate_vram(request(tmp_path, resolution=1024), ModelKind.SDXL).total > base
    assert estimate_vram(request(tmp_path, gradient_checkpointing=True), ModelKind.SDXL).total < base
    with_te = estimate_vram(request(tmp_path, train_text_encoder=True), ModelKind.SDXL)
    assert with_te.parts["weights"] - estimate_vram(request(tmp_path), ModelKind.SDXL).parts["weights"] == 2 * (
        PARAMS[ModelKind.SDXL]["text_encoder"] + PARAMS[ModelKind.SDXL]["text_encoder_2"]
    )


@pytest.mark.parametrize("kind", [ModelKind.SD15, ModelKind.SDXL])
def test_parameter_counts_match_the_real_architectures(kind):
    """Recount on the meta device (no memory) from the configs Studio ships for offline single-file loading."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    from studio.models.single_file import BUNDLED_CONFIGS

    config = json.loads((BUNDLED_CONFIGS[kind] / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    assert sum(p.numel() for p in unet.parameters()) == PARAMS[kind]["unet"]
    inject_adapter_in_model(LoraConfig(r=1, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), unet)
    lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    assert lora == LORA_PARAMS_PER_RANK[kind]["unet"]


@pytest.mark.parametrize(
    "changes, error, words",
    [
        (dict(name="../up"), UnsafePathError, "alps-v1"),
        (dict(name=".hidden"), UnsafePathError, "letters"),
        (dict(resolution=500), InvalidRequestError, "try 512"),
        (dict(rank=0), InvalidRequestError, "rank=0"),
        (dict(lr_scheduler="warp"), InvalidRequestError, "cosine"),
        (dict(optimizer="sgd"), InvalidRequestError, "adamw8bit"),
        (dict(min_snr_gamma=-1.0), InvalidRequestError, "min_snr_gamma"),
    ],
)
def test_bad_requests_name_the_value_and_the_fix(tmp_path, changes, error, words):
    with pytest.raises(error, match=words):
        request(tmp_path, **changes).validate()


def test_request_round_trips_as_json_and_resume_ignores_sampling_cadence(tmp_path):
    original = request(tmp_path, trigger="mtn", min_snr_gamma=5.0)
    assert TrainingRequest.from_json(json.loads(json.dumps(original.to_json()))) == original
    assert request(tmp_path, validation_every=10, resume=True).fingerprint() == request(tmp_path).fingerprint()
    assert request(tmp_path, rank=8).fingerprint() != request(tmp_path).fingerprint()


def test_run_folders_stay_inside_their_roots(tmp_path):
    r = request(tmp_path)
    assert r.output_dir(tmp_path / "loras") == (tmp_path / "loras" / "alps").resolve()
    assert r.run_dir(tmp_path / "out") == (tmp_path / "out" / "training" / "alps").resolve()


def test_data_order_is_a_function_of_seed_and_epoch_with_one_bucket_per_batch():
    buckets = [(64, 64)] * 5 + [(96, 48)] * 3
    order = DataOrder(buckets, batch_size=2, seed=7, random_flip=True)
    assert order.per_epoch == 3 + 2
    epoch = order.epoch(0)
    assert sorted(i for batch in epoch for i, _ in batch) == list(range(8))
    assert all(len({buckets[i] for i, _ in batch}) == 1 for batch in epoch)
    again = DataOrder(buckets, batch_size=2, seed=7, random_flip=True)
    assert [again.micro_batch(i) for i in range(12)] == [order.micro_batch(i) for i in range(12)]
    assert order.epoch(1) != order.epoch(0)
    assert DataOrder(buckets, batch_size=2, seed=8, random_flip=True).epoch(0) != epoch


def test_events_survive_the_json_line_protocol():
    event = TrainingEvent("step", step=3, total_steps=10, loss=0.125, lr=1e-4, sec_per_step=0.5, eta=3.5)
    assert TrainingEvent.from_line(event.to_line()) == event
    assert event.progress_text() == "step 3/10 · loss 0.1250 · lr 1.00e-04 · 0.50 s/step · ETA 4s"


@pytest.mark.parametrize(
    "asked, device, bf16, expected",
    [
        ("auto", "cpu", True, "bf16"),  # native bf16 CPU: bf16 weights, fp32 LoRA, autocast
        ("auto", "cpu", False, "no"),  # emulated bf16 would be slower than fp32
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp16"),
        ("no", "cpu", True, "no"),  # an explicit choice wins
        ("fp16", "cuda", True, "fp16"),
    ],
)
def test_training_precision_follows_the_devices_reported_features(asked, device, bf16, expected):
    assert resolve_precision(asked, device, bf16) == expected
