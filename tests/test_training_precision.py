"""Mixed precision in the trainer: bf16 weights with fp32 LoRA layers under autocast, and the fp16 loss scaler.

CPUs run bf16 autocast through the same accelerate code path a GPU uses (the base model is loaded in
bf16, the LoRA parameters are kept in fp32, accelerate wraps the forward in autocast), so this path is
tested here for real. fp16 needs a GPU in accelerate; its loss-scaler state is checked at the checkpoint
level with torch's own GradScaler.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from studio.models.kinds import ModelKind
from studio.models.tiny import build_tiny
from studio.training.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from studio.training.trainer import grad_scaler_state, restore_grad_scaler
from tests.helpers import draw, make_config, make_photo_folder, pixels, quick_request, run_training


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("data") / "photos")


def test_bf16_run_resumes_exactly_saves_fp32_and_the_adapter_redraws_its_sample(photos, tmp_path):
    config = make_config(tmp_path)
    settings = dict(steps=4, mixed_precision="bf16", validation_every=0)
    whole, events = run_training(quick_request(photos, name="whole", **settings), config)
    losses = [e.loss for e in events if e.kind == "step"]
    assert len(losses) == 4 and all(np.isfinite(losses))

    stopped, _ = run_training(quick_request(photos, name="split", **settings), config, stop_after_steps=2)
    assert stopped is None
    resumed, _ = run_training(quick_request(photos, name="split", resume=True, **settings), config)
    with (
        safe_open(str(whole / "pytorch_lora_weights.safetensors"), "pt") as a,
        safe_open(str(resumed / "pytorch_lora_weights.safetensors"), "pt") as b,
    ):
        for key in a.keys():
            assert a.get_tensor(key).dtype == torch.float32, key  # trained in fp32, not rounded to bf16
            torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=0, atol=1e-6)

    # The sample was drawn in bf16 by the trained model; an fp32 pipeline with the file loaded draws
    # nearly the same picture (bf16 rounding apart), far from what the base model draws.
    sample = whole / "samples" / "step-000004.png"
    manifest = json.loads((whole / "adapter.json").read_text())
    assert manifest["settings"]["precision"] == "bf16" and manifest["settings"]["mixed_precision"] == "bf16"
    assert "Precision: bf16" in Image.open(sample).text["parameters"]
    pipe = build_tiny(ModelKind.SD15)
    base = pixels(draw(pipe, sample))
    pipe.load_lora_weights(whole)
    trained, reloaded = pixels(Image.open(sample)), pixels(draw(pipe, sample))
    assert np.abs(reloaded - trained).mean() < np.abs(base - trained).mean() / 8


def test_fp16_loss_scale_survives_a_checkpoint(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for gradient in (float("inf"), 1.0):  # an overflow halves the scale, a good step counts toward growth
        scaler.scale((weight * gradient).sum()).backward()
        scaler.step(optimizer)
        optimizer.zero_grad()
        scaler.update()
    assert scaler.get_scale() == 2.0**15 and scaler.state_dict()["_growth_tracker"] == 1

    state = {"fingerprint": "x", "losses": [], "samples": [], "grad_scaler": grad_scaler_state(scaler)}
    path = save_checkpoint(
        tmp_path / "checkpoints", 2, lora={"w": weight.detach()}, optimizer=optimizer.state_dict(), state=state
    )
    assert list_checkpoints(tmp_path / "checkpoints") == [path]
    resumed = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    restore_grad_scaler(resumed, load_checkpoint(path).state["grad_scaler"])
    assert resumed.state_dict() == scaler.state_dict()
    assert grad_scaler_state(None) is None  # fp32 and bf16 runs have no scaler
