"""Blending LoRAs live on a loaded pipeline, through the real generation path and model manager."""

import numpy as np
import pytest
import torch

from studio.errors import LoraError
from studio.generation.infotext import parse_infotext
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.lora.blend import apply_blend, blend_state
from studio.models.kinds import ModelKind
from studio.models.manager import ModelManager
from tests.helpers import add_lora, mean_abs_diff, pixels


@pytest.fixture
def setup(studio_config):
    loras = studio_config.loras_dir
    add_lora(loras, "alps", seed=1)
    add_lora(loras, "sketch", seed=2, kohya=True)
    add_lora(loras, "dunes", seed=3)
    add_lora(loras, "xl-only", kind=ModelKind.SDXL, seed=4)
    return ModelManager(studio_config), loras


def image(manager, *loras, prompt="mountains"):
    request = GenerationRequest(model="demo-sd15", prompt=prompt, steps=1, width=64, height=64, seed=5, loras=loras)
    result = generate(manager, request)
    return result.images[0], result.infotexts[0]


def test_strength_zero_is_the_base_image_and_the_effect_grows_with_strength(setup):
    manager, _loras = setup
    base, _ = image(manager)
    zero, _ = image(manager, ("alps", 0.0))
    assert np.array_equal(pixels(zero), pixels(base))
    diffs = [mean_abs_diff(image(manager, ("alps", w))[0], base) for w in (0.5, 1.0, 2.0)]
    assert diffs[0] > 0
    assert diffs == sorted(diffs), diffs
    back_to_base, _ = image(manager)  # leaving the blend removes the adapter entirely
    assert np.array_equal(pixels(back_to_base), pixels(base))
    assert manager.active.pipe.get_list_adapters() in ({}, {"unet": [], "text_encoder": []})


def test_slider_changes_reuse_loaded_adapters_and_unused_ones_are_deleted(setup):
    manager, loras = setup
    first, _ = image(manager, ("alps", 0.5), ("sketch", 0.5), ("dunes", 0.5))
    pipe = manager.active.pipe
    adapters = pipe.get_list_adapters()["unet"]
    assert len(adapters) == 3
    layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_q
    lora_modules = {name: layer.lora_A[name] for name in adapters}
    second, info = image(manager, ("alps", 1.0), ("sketch", 0.5))
    assert manager.active.pipe is pipe
    assert sorted(pipe.get_list_adapters()["unet"]) == sorted(a for a in adapters if not a.startswith("dunes"))
    assert mean_abs_diff(first, second) > 0
    # The adapters that stayed are the same modules: a slider change loads nothing again.
    assert all(layer.lora_A[name] is module for name, module in lora_modules.items() if name in layer.lora_A)
    assert len(layer.lora_A) == 2
    hashes = parse_infotext(info)["Lora hashes"]
    assert hashes.startswith("alps: ") and ", sketch: " in hashes
    # A slider move (same adapters, new weights) draws what a fresh set_adapters of that blend draws.
    moved, _ = image(manager, ("alps", -0.7), ("sketch", 1.3))
    fresh, _ = image(ModelManager(manager.config), ("alps", -0.7), ("sketch", 1.3))
    assert np.array_equal(pixels(moved), pixels(fresh))
    assert mean_abs_diff(moved, second) > 0


def test_sdxl_adapter_is_refused_for_sd15_and_the_blend_is_unchanged(setup):
    manager, _loras = setup
    before, _ = image(manager, ("alps", 0.7))
    with pytest.raises(LoraError, match="xl-only.*SDXL LoRA; the loaded model is SD1.5"):
        image(manager, ("alps", 0.7), ("xl-only", 1.0))
    after, _ = image(manager, ("alps", 0.7))
    assert np.array_equal(pixels(before), pixels(after))


def test_a_failed_load_leaves_the_pipeline_exactly_as_it_was(setup):
    """An SD1.5 LoRA for other layer shapes passes every header check, then fails inside diffusers."""
    manager, loras = setup
    before, _ = image(manager, ("alps", 0.7), ("sketch", -0.4))
    pipe = manager.active.pipe
    adapters_before = pipe.get_list_adapters()
    tensors = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.ones(4, 768),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.ones(640, 4),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(4.0),
    }
    from safetensors.torch import save_file

    save_file(tensors, loras / "big.safetensors")
    with pytest.raises(LoraError, match="'big' could not be loaded.*unchanged"):
        image(manager, ("alps", 0.7), ("sketch", -0.4), ("big", 1.0))
    assert pipe.get_list_adapters() == adapters_before
    after, _ = image(manager, ("alps", 0.7), ("sketch", -0.4))
    assert np.array_equal(pixels(before), pixels(after))


def test_text_encoder_strength_is_separate(setup):
    manager, loras = setup
    full, _ = image(manager, ("alps", 1.0))
    model = manager.active
    apply_blend(model, [("alps", 1.0, 0.0)], loras_dir=loras)
    no_te = _render(model)
    apply_blend(model, [("alps", 1.0, 1.0)], loras_dir=loras)
    assert np.array_equal(pixels(_render(model)), pixels(full))
    assert mean_abs_diff(no_te, full) > 0
    # A blend-wide text-encoder scale is remembered for later generations that pass names and weights only.
    apply_blend(model, [("alps", 1.0)], loras_dir=loras, text_encoder_scale=0.0)
    again, _ = image(manager, ("alps", 1.0))
    assert np.array_equal(pixels(again), pixels(no_te))
    assert blend_state(model)["text_encoder_scale"] == 0.0


def _render(model):
    return model.pipe(
        "mountains",
        num_inference_steps=1,
        width=64,
        height=64,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]


def test_fused_blend_matches_unfused_and_is_undone_when_the_blend_changes(setup):
    manager, loras = setup
    base, _ = image(manager)
    model = manager.active
    base_weights = unet_weights(model.pipe)
    unfused, _ = image(manager, ("alps", 0.8), ("sketch", 0.5))
    apply_blend(model, [("alps", 0.8), ("sketch", 0.5)], loras_dir=loras, fuse=True)
    assert blend_state(model)["fused"]
    fused, _ = image(manager, ("alps", 0.8), ("sketch", 0.5))
    assert mean_abs_diff(fused, unfused) < 0.5  # the same image up to float rounding of the folded weights
    # A new blend unfuses first (the original weights are put back, not recomputed), then applies and fuses it.
    changed, _ = image(manager, ("alps", 0.0))
    assert np.array_equal(pixels(changed), pixels(base))
    apply_blend(model, [("alps", 1.0)], loras_dir=loras, fuse=False)
    assert not blend_state(model)["fused"]
    assert np.array_equal(pixels(image(manager)[0]), pixels(base))
    # Exactly the original weights: subtracting the fused delta again would leave rounding drift behind.
    after = unet_weights(model.pipe)
    assert all(torch.equal(after[name], weight) for name, weight in base_weights.items())


def unet_weights(pipe) -> dict:
    return {k.replace(".base_layer", ""): v.clone() for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
