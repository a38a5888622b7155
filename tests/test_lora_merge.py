""" "Save blend as new LoRA": the merged adapter alone at strength 1 draws the blend's image."""

import json
import re

import numpy as np
import pytest
from safetensors import safe_open

from studio.errors import InvalidRequestError, LoraError, UnsafePathError
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.lora.blend import apply_blend
from studio.lora.library import find_lora
from studio.lora.merge import save_blend
from studio.lora.requests import SaveBlendRequest
from studio.models.kinds import ModelKind
from studio.models.manager import ModelManager
from tests.helpers import add_lora, pixels


def image(manager, model, *loras):
    request = GenerationRequest(model=model, prompt="mountains", steps=1, width=64, height=64, seed=9, loras=loras)
    return pixels(generate(manager, request).images[0])


@pytest.mark.parametrize(
    "kind, model", [(ModelKind.SD15, "demo-sd15"), (ModelKind.SDXL, "demo-sdxl")], ids=["sd15", "sdxl"]
)
def test_saved_blend_reproduces_the_blend(studio_config, kind, model):
    loras = studio_config.loras_dir
    add_lora(loras, "alps", kind=kind, seed=1)
    add_lora(loras, "sketch", kind=kind, seed=2, kohya=True)
    manager = ModelManager(studio_config)
    blend = (("alps", 0.8), ("sketch", -0.5))
    blended = image(manager, model, *blend)
    base = image(manager, model)
    folder = save_blend(SaveBlendRequest(name="mix", loras=blend, kind=kind, base_model=model), loras_dir=loras)
    alone = image(manager, model, ("mix", 1.0))
    assert np.abs(blended - base).mean() > 1.0  # the blend does something visible...
    assert np.abs(alone - blended).max() <= 1  # ...and the merged adapter does the same (float rounding only)
    # The kohya file of the merged adapter is the same adapter for A1111 users.
    (folder / "pytorch_lora_weights.safetensors").rename(loras / "diffusers-copy.safetensors")
    assert find_lora(loras, "mix").format == "kohya"
    kohya_alone = image(manager, model, ("mix", 1.0))
    assert np.abs(kohya_alone - blended).max() <= 1


def test_text_encoder_weights_are_merged_separately(studio_config):
    loras = studio_config.loras_dir
    add_lora(loras, "alps", seed=1)
    manager = ModelManager(studio_config)
    image(manager, "demo-sd15")
    # The LoRA tab's text-encoder strength: 0, remembered for the generations that follow.
    apply_blend(manager.active, [], loras_dir=loras, text_encoder_scale=0.0)
    blended = image(manager, "demo-sd15", ("alps", 1.0))
    save_blend(SaveBlendRequest(name="unet-only", loras=(("alps", 1.0, 0.0),)), loras_dir=loras)
    assert find_lora(loras, "unet-only").components == ("unet",)
    apply_blend(manager.active, [], loras_dir=loras, text_encoder_scale=1.0)
    assert np.abs(image(manager, "demo-sd15", ("alps", 1.0)) - blended).mean() > 0.1
    assert np.abs(image(manager, "demo-sd15", ("unet-only", 1.0)) - blended).max() <= 1


def test_saved_folder_follows_the_adapter_contract(studio_config):
    loras = studio_config.loras_dir
    add_lora(loras, "alps", seed=1)
    add_lora(loras, "sketch", seed=2, kohya=True)
    (loras / "alps" / "adapter.json").write_text(json.dumps({"trigger_words": ["alpsstyle"]}))
    folder = save_blend(
        SaveBlendRequest(name="mix", loras=(("alps", 0.5), ("sketch", 0.25)), base_model="demo-sd15"), loras_dir=loras
    )
    files = ["README.md", "adapter.json", "mix.safetensors", "pytorch_lora_weights.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == files
    manifest = json.loads((folder / "adapter.json").read_text())
    assert manifest["blend"] == [{"name": "alps", "weight": 0.5}, {"name": "sketch", "weight": 0.25}]
    assert (manifest["name"], manifest["base_model"], manifest["base_kind"]) == ("mix", "demo-sd15", "sd15")
    assert manifest["rank"] == 8 and manifest["alpha"] == 8.0 and manifest["text_encoder"] is True
    assert manifest["trigger_words"] == ["alpsstyle"]
    assert "alpsstyle" in (folder / "README.md").read_text()
    with safe_open(str(folder / "mix.safetensors"), framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert metadata["ss_network_dim"] == "8" and metadata["ss_base_model_version"] == "sd_v1"
    assert "alps:0.5, sketch:0.25" in metadata["ss_training_comment"]
    assert [p.name for p in loras.iterdir() if p.name.startswith(".")] == []  # no staging folder left behind


def test_bad_names_and_blends_are_refused(studio_config):
    loras = studio_config.loras_dir
    add_lora(loras, "alps", seed=1)
    add_lora(loras, "xl", kind=ModelKind.SDXL, seed=2)
    for name in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(UnsafePathError, match=f"name '{re.escape(name)}' is not allowed"):
            save_blend(SaveBlendRequest(name=name, loras=(("alps", 1.0),)), loras_dir=loras)
    with pytest.raises(LoraError, match="already exists"):
        save_blend(SaveBlendRequest(name="alps", loras=(("alps", 1.0),)), loras_dir=loras)
    add_lora(loras, "single", seed=3, kohya=True)  # loras/single.safetensors, made elsewhere
    for overwrite in (False, True):  # a folder named "single" would hide the file from the library
        with pytest.raises(LoraError, match=r"single.safetensors in the LoRA folder already has the name 'single'"):
            save_blend(SaveBlendRequest(name="single", loras=(("alps", 1.0),), overwrite=overwrite), loras_dir=loras)
    assert not (loras / "single").exists() and (loras / "single.safetensors").is_file()
    with pytest.raises(LoraError, match="SDXL LoRA; the loaded model is SD1.5"):
        save_blend(SaveBlendRequest(name="mixed", loras=(("alps", 1.0), ("xl", 1.0))), loras_dir=loras)
    with pytest.raises(InvalidRequestError, match="empty"):
        save_blend(SaveBlendRequest(name="nothing"), loras_dir=loras)
    with pytest.raises(LoraError, match="strength 0"):
        save_blend(SaveBlendRequest(name="zero", loras=(("alps", 0.0),)), loras_dir=loras)
    assert sorted(p.name for p in loras.iterdir()) == ["alps", "single.safetensors", "xl"]
