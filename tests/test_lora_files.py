"""LoRA files: a live peft adapter saved as diffusers and as kohya reloads to the same image.

alpha (8) differs from the rank (4), so a file that lost alpha would reload at a different scale and fail.
"""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from studio.errors import LoraError
from studio.lora.files import LoraWeights, read_lora, save_diffusers_lora, save_kohya_lora
from studio.models.kinds import ModelKind
from studio.models.tiny import build_tiny
from tests.helpers import RANK, live_adapter, render


@pytest.fixture(scope="module", params=[ModelKind.SD15, ModelKind.SDXL], ids=["sd15", "sdxl"])
def saved(request, tmp_path_factory):
    kind = request.param
    pipe, weights = live_adapter(kind)
    folder = tmp_path_factory.mktemp(f"lora-{kind.value}")
    save_diffusers_lora(weights, folder)
    kohya = save_kohya_lora(weights, folder / "mylora.safetensors", metadata={"ss_network_dim": str(RANK)})
    return kind, render(pipe), weights, folder, kohya


def loaded_image(kind, path, weight_name=None):
    pipe = build_tiny(kind)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path), weight_name=weight_name, adapter_name="x")
    return render(pipe)


def test_live_adapter_changes_the_image(saved):
    kind, live, *_ = saved
    base_pipe = build_tiny(kind)
    base_pipe.set_progress_bar_config(disable=True)
    assert np.abs(render(base_pipe) - live).mean() > 1e-3


def test_diffusers_file_reloads_to_the_live_image(saved):
    kind, live, _weights, folder, _kohya = saved
    np.testing.assert_allclose(loaded_image(kind, folder, "pytorch_lora_weights.safetensors"), live, atol=2e-5)


def test_kohya_file_reloads_to_the_live_image(saved):
    kind, live, _weights, _folder, kohya = saved
    np.testing.assert_allclose(loaded_image(kind, kohya), live, atol=2e-5)


def test_lost_alpha_would_show(saved, tmp_path):
    """Guard for the two tests above: the same layers at alpha = rank give another image."""
    kind, live, weights, *_ = saved
    wrong = LoraWeights(kind=kind, layers=weights.layers, alphas={c: float(RANK) for c in weights.alphas})
    save_diffusers_lora(wrong, tmp_path)
    assert np.abs(loaded_image(kind, tmp_path, "pytorch_lora_weights.safetensors") - live).mean() > 1e-4


def test_kohya_file_has_only_kohya_keys(saved):
    kind, _live, weights, _folder, kohya = saved
    with safe_open(str(kohya), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata()
    prefixes = ("lora_unet_", "lora_te_") if kind is ModelKind.SD15 else ("lora_unet_", "lora_te1_", "lora_te2_")
    assert all(k.startswith(prefixes) for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    layers = sum(len(weights.modules(c)) for c in weights.layers)
    assert len(keys) == 3 * layers
    # The diffusers module path with "_", text encoders under text_model_ as A1111 expects.
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in keys
    te = "lora_te_" if kind is ModelKind.SD15 else "lora_te1_"
    assert f"{te}text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    if kind is ModelKind.SDXL:
        assert "lora_te2_text_model_encoder_layers_2_mlp_fc1.lora_down.weight" in keys
    assert metadata["ss_network_dim"] == str(RANK)
    architecture = "stable-diffusion-xl" if kind is ModelKind.SDXL else "stable-diffusion-v1"
    assert metadata["modelspec.architecture"].startswith(architecture)


@pytest.mark.parametrize("which", ["diffusers", "kohya"])
def test_read_lora_gives_back_the_same_weights(saved, which):
    kind, _live, weights, folder, kohya = saved
    back = read_lora(folder if which == "diffusers" else kohya)
    assert back.kind is kind
    assert back.alphas == weights.alphas
    assert back.layers.keys() == weights.layers.keys()
    for component, layers in weights.layers.items():
        assert back.layers[component].keys() == layers.keys()
        for key, tensor in layers.items():
            torch.testing.assert_close(back.layers[component][key], tensor)


def test_files_are_written_atomically(saved, tmp_path):
    kind, _live, weights, *_ = saved
    save_diffusers_lora(weights, tmp_path)
    save_kohya_lora(weights, tmp_path / "a.safetensors", metadata={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "pytorch_lora_weights.safetensors"]


def test_read_lora_refuses_a_non_lora_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.conv.weight": torch.zeros(2)}, tmp_path / "ckpt.safetensors")
    with pytest.raises(LoraError, match="ckpt.safetensors"):
        read_lora(tmp_path / "ckpt.safetensors")
