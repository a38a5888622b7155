"""The live blend draws a kohya/A1111 LoRA as kohya and A1111 do: each layer at its own alpha / rank; and SDXL's
`lora_te2_text_projection` is named as A1111 names it.

A LoCon-style file: attention layers (UNet `to_q/k/v/out`, text-encoder `self_attn`) with one alpha, the other
linear layers with another, and resnet convs at another rank with no alpha at all (kohya's rule: alpha = rank).
diffusers' own `load_lora_weights` gives such layers the most common alpha; the live blend must not.
The reference is the file merged into the base weights by hand from `read_lora`: W += up @ down * alpha / rank.
"""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.lora.blend import apply_blend, load_adapter
from studio.lora.files import kohya_name, read_lora, save_diffusers_lora, save_kohya_lora
from studio.lora.library import find_lora
from studio.models.kinds import ModelKind
from studio.models.manager import ModelManager
from studio.models.tiny import build_tiny
from tests.helpers import a1111_file, live_adapter, pixels, render

MODELS = [(ModelKind.SD15, "demo-sd15"), (ModelKind.SDXL, "demo-sdxl")]
ATTENTION = ("_to_q", "_to_k", "_to_v", "_to_out_0", "_q_proj", "_k_proj", "_v_proj", "_out_proj")
CONV_RANK = 8


def mixed_alpha_file(kind, path):
    """A1111-named layers; attention at alpha 1, other linears at alpha 2 (rank 4), convs at rank 8 without alpha."""
    a1111_file(kind, path)
    tensors = load_file(str(path))
    generator = torch.Generator().manual_seed(11)
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        name = key[: -len(".lora_down.weight")]
        if name.endswith(("_conv1", "_conv2")):
            down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
            tensors[key] = (torch.randn(CONV_RANK, *down.shape[1:], generator=generator) * 0.3).half()
            tensors[f"{name}.lora_up.weight"] = (
                torch.randn(up.shape[0], CONV_RANK, 1, 1, generator=generator) * 0.3
            ).half()
            del tensors[f"{name}.alpha"]
        elif name.endswith(ATTENTION):
            tensors[f"{name}.alpha"] = torch.tensor(1.0, dtype=torch.float16)
    save_file(tensors, str(path), metadata={"ss_network_dim": "4", "ss_network_alpha": "2.0"})
    return path


@pytest.fixture
def fp32_config(studio_config):
    """float32 on every CPU: in bf16 the merged and the unmerged layers round differently, far beyond 1/255."""
    return dataclasses.replace(studio_config, dtype="float32")


def image(manager, model, *loras):
    request = GenerationRequest(model=model, prompt="mountains", steps=2, width=64, height=64, seed=9, loras=loras)
    return pixels(generate(manager, request).images[0])


def merge_by_hand(pipe, path) -> None:
    """W += up @ down * alpha / rank for every layer `read_lora` reads (1x1 and 3x3 convs as matrices)."""
    weights = read_lora(path)
    with torch.no_grad():
        for component, layers in weights.layers.items():
            for module in weights.modules(component):
                target = getattr(pipe, component).get_submodule(module)
                target = target.get_base_layer() if hasattr(target, "get_base_layer") else target
                down = layers[f"{module}.lora_A.weight"].float()
                up = layers[f"{module}.lora_B.weight"].float()
                delta = (up.flatten(1) @ down.flatten(1)) * weights.alphas[component] / down.shape[0]
                target.weight += delta.reshape(target.weight.shape).to(target.weight.dtype)


@pytest.mark.parametrize("kind, model", MODELS, ids=["sd15", "sdxl"])
def test_mixed_alpha_kohya_file_draws_as_merged_by_hand(fp32_config, kind, model):
    loras = fp32_config.loras_dir
    path = mixed_alpha_file(kind, loras / "locon.safetensors")
    tensors = load_file(str(path))
    alphas = {t.item() for k, t in tensors.items() if k.endswith(".alpha")}
    assert alphas == {1.0, 2.0} and any(k.endswith("_conv1.lora_down.weight") for k in tensors)
    manager = ModelManager(fp32_config)
    live = image(manager, model, ("locon", 1.0))
    base = image(manager, model)  # leaving the blend removes the adapter
    merge_by_hand(manager.active.pipe, path)
    merged = image(manager, model)
    assert np.abs(live - base).mean() > 5  # the adapter changes the image a lot...
    assert np.abs(live - merged).max() <= 1  # ...exactly as the merged layers do (within 1/255)


@pytest.mark.parametrize("kind, model", MODELS, ids=["sd15", "sdxl"])
def test_mixed_alpha_file_keeps_the_fast_path(studio_config, kind, model):
    """Slider moves on a kohya adapter change scales only: the loaded layers stay, and a moved slider draws what a
    fresh load of that strength draws."""
    loras = studio_config.loras_dir
    mixed_alpha_file(kind, loras / "locon.safetensors")
    manager = ModelManager(studio_config)
    image(manager, model, ("locon", 1.0))
    pipe = manager.active.pipe
    layers = {name: m for name, m in pipe.unet.named_modules() if hasattr(m, "lora_A")}
    (adapter,) = pipe.get_list_adapters()["unet"]
    modules = {name: m.lora_A[adapter] for name, m in layers.items()}
    moved = image(manager, model, ("locon", -0.6))
    assert all(layers[name].lora_A[adapter] is module for name, module in modules.items())
    fresh = image(ModelManager(manager.config), model, ("locon", -0.6))
    assert np.array_equal(moved, fresh)


@pytest.mark.parametrize("kind", [ModelKind.SD15, ModelKind.SDXL], ids=["sd15", "sdxl"])
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_studio_written_files_draw_exactly_as_before(tmp_path, kind, fmt):
    """Files Studio writes load in the live blend to the same pixels as `load_lora_weights` on the file (what the
    blend did before kohya files were read by Studio), and to the live adapter they were saved from."""
    live_pipe, weights = live_adapter(kind)
    if fmt == "kohya":
        path = save_kohya_lora(weights, tmp_path / "studio.safetensors", metadata={})
    else:
        path = save_diffusers_lora(weights, tmp_path / "studio")
    entry = find_lora(tmp_path, "studio")
    assert entry.format == fmt
    before = build_tiny(kind)
    before.set_progress_bar_config(disable=True)
    before.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
    now = build_tiny(kind)
    now.set_progress_bar_config(disable=True)
    load_adapter(now, entry, "x")
    np.testing.assert_array_equal(render(now), render(before))
    np.testing.assert_allclose(render(now), render(live_pipe), atol=2e-5)


def test_a_kohya_file_with_unknown_tensors_loads_as_before(studio_config):
    """Keys the kohya reader does not know (here a DoRA `dora_scale`, which diffusers drops with a warning) leave the
    file to diffusers' own loader, as before."""
    loras = studio_config.loras_dir
    _pipe, weights = live_adapter(ModelKind.SD15)
    path = save_kohya_lora(weights, loras / "dora.safetensors", metadata={})
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.endswith(".alpha"))[: -len(".alpha")]
    tensors[f"{name}.dora_scale"] = torch.ones(1, 4)
    save_file(tensors, str(path))
    manager = ModelManager(studio_config)
    with manager.acquire("demo-sd15") as model:
        apply_blend(model, [("dora", 1.0)], loras_dir=loras)
        assert len(model.pipe.get_list_adapters()["unet"]) == 1


# --- SDXL's second text encoder: text_projection sits beside text_model ------------------------------------------


Q_PROJ = "text_model.encoder.layers.0.self_attn.q_proj"


def text_projection_file(path, *, name="lora_te2_text_projection"):
    """An SDXL LoRA on the second encoder's text_projection (A1111/OneTrainer name) and one attention layer."""
    encoder = build_tiny(ModelKind.SDXL).text_encoder_2
    generator = torch.Generator().manual_seed(5)
    tensors = {}
    for key, module in [(name, "text_projection"), ("lora_te2_" + Q_PROJ.replace(".", "_"), Q_PROJ)]:
        out_features, in_features = encoder.get_submodule(module).weight.shape
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, in_features, generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator)
        tensors[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path


def test_text_projection_is_written_and_read_by_its_a1111_name(tmp_path):
    assert kohya_name(ModelKind.SDXL, "text_encoder_2", "text_projection") == "lora_te2_text_projection"
    assert kohya_name(ModelKind.SDXL, "text_encoder_2", Q_PROJ) == "lora_te2_" + Q_PROJ.replace(".", "_")
    a1111 = read_lora(text_projection_file(tmp_path / "a1111.safetensors"))
    assert sorted(a1111.modules("text_encoder_2")) == [Q_PROJ, "text_projection"]
    # Files Studio wrote before (`lora_te2_text_model_text_projection`) read to the same layers.
    old = read_lora(text_projection_file(tmp_path / "old.safetensors", name="lora_te2_text_model_text_projection"))
    assert old.modules("text_encoder_2") == a1111.modules("text_encoder_2")
    for key, tensor in a1111.layers["text_encoder_2"].items():
        assert torch.equal(old.layers["text_encoder_2"][key], tensor)
    # Written back, the file has the A1111 names.
    again = save_kohya_lora(a1111, tmp_path / "again.safetensors", metadata={})
    assert sorted(load_file(str(again))) == sorted(load_file(str(tmp_path / "a1111.safetensors")))


def _tiny_sdxl():
    pipe = build_tiny(ModelKind.SDXL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_projection_layer_draws_as_merged_by_hand(tmp_path):
    path = text_projection_file(tmp_path / "projection.safetensors")
    live = _tiny_sdxl()
    load_adapter(live, find_lora(tmp_path, "projection"), "x")
    assert "x" in live.text_encoder_2.text_projection.lora_A
    merged = _tiny_sdxl()
    merge_by_hand(merged, path)
    np.testing.assert_allclose(render(live), render(merged), atol=2e-5)
    # Guard: the text_projection layer alone changes the image (the pooled embedding conditions SDXL's UNet).
    weights = read_lora(path)
    layers = {k: v for k, v in weights.layers["text_encoder_2"].items() if not k.startswith("text_projection.")}
    weights.layers["text_encoder_2"] = layers
    save_kohya_lora(weights, tmp_path / "no-projection.safetensors", metadata={})
    without = _tiny_sdxl()
    load_adapter(without, find_lora(tmp_path, "no-projection"), "x")
    assert np.abs(render(without) - render(live)).max() > 1e-3


def test_an_sgm_named_sdxl_file_still_loads_through_diffusers(studio_config):
    """kohya's sd-scripts name SDXL layers after the original (SGM) UNet blocks; only diffusers renames them (it needs
    the UNet's config), so such files go to `load_lora_weights` as before."""
    loras = studio_config.loras_dir
    sgm = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"  # down_blocks.1.attentions.0 in the tiny UNet
    generator = torch.Generator().manual_seed(3)
    tensors = {
        f"{sgm}.lora_down.weight": torch.randn(4, 64, generator=generator),
        f"{sgm}.lora_up.weight": torch.randn(64, 4, generator=generator),
        f"{sgm}.alpha": torch.tensor(2.0),
    }
    save_file(tensors, str(loras / "sgm.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    manager = ModelManager(studio_config)
    with manager.acquire("demo-sdxl") as model:
        apply_blend(model, [("sgm", 1.0)], loras_dir=loras)
        layer = model.pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k
        (adapter,) = model.pipe.get_list_adapters()["unet"]
        down = layer.lora_A[adapter].weight
        assert torch.equal(down, tensors[f"{sgm}.lora_down.weight"].to(down.dtype))
