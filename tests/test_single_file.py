"""Single-file checkpoints: save a tiny pipeline in the original A1111 layout, load it back offline.

No mocks: tiny real pipelines, the real diffusers single-file conversion, the real CLIP tokenizer.
"""

import json

import numpy as np
import pytest
import torch

from studio.errors import ModelNotFoundError, UnsafeFileError, UnsupportedModelError
from studio.models.kinds import ModelKind, kind_of_checkpoint, read_safetensors_header
from studio.models.original_layout import save_as_single_file
from studio.models.single_file import BUNDLED_CONFIGS, load_single_file
from studio.models.tiny import build_tiny


def _generate(pipe) -> np.ndarray:
    return pipe(
        "a photo of a mountain",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images[0]


@pytest.fixture(scope="module", params=[ModelKind.SD15, ModelKind.SDXL], ids=["sd15", "sdxl"])
def saved(request, tmp_path_factory, tiny_sd15_dir, tiny_sdxl_dir):
    """(kind, diffusers folder, original-layout file, the pipeline both came from)."""
    kind = request.param
    folder = tiny_sdxl_dir if kind is ModelKind.SDXL else tiny_sd15_dir
    pipe = build_tiny(kind)  # the same seed as the saved folder, so the same weights
    path = save_as_single_file(pipe, tmp_path_factory.mktemp("ckpt") / f"tiny-{kind.value}.safetensors")
    return kind, folder, path, pipe


def test_saved_file_uses_the_original_layout(saved):
    kind, _, path, _ = saved
    keys = [k for k in read_safetensors_header(path) if k != "__metadata__"]
    assert kind_of_checkpoint(path) is kind
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    if kind is ModelKind.SDXL:
        assert "conditioner.embedders.1.model.text_projection" in keys
        assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
        assert any(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in keys)
        assert "model.diffusion_model.label_emb.0.0.weight" in keys
    else:
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    assert not list(path.parent.glob(".*.tmp")), "the temporary file of the atomic write was left behind"


def test_round_trip_generates_the_same_pixels(saved):
    kind, folder, path, pipe = saved
    loaded = load_single_file(path, kind, dtype=torch.float32, config_dir=folder)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            theirs = getattr(loaded, name).state_dict()
            for key, tensor in module.state_dict().items():
                assert torch.equal(tensor, theirs[key]), f"{name}.{key} changed in the round trip"
    assert np.abs(_generate(pipe) - _generate(loaded)).max() < 1e-4


def test_truncated_file_is_named(saved, tmp_path):
    _, folder, path, _ = saved
    cut = tmp_path / "half-downloaded.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnsupportedModelError, match="half-downloaded.safetensors"):
        load_single_file(cut, saved[0], dtype=torch.float32, config_dir=folder)


def test_wrong_kind_is_reported(saved):
    kind, folder, path, _ = saved
    other = ModelKind.SD15 if kind is ModelKind.SDXL else ModelKind.SDXL
    with pytest.raises(UnsupportedModelError, match=f"{path.name}.*{kind.label}"):
        load_single_file(path, other, dtype=torch.float32, config_dir=folder)


def test_config_of_another_architecture_is_a_clear_error(tmp_path, tiny_sd15_dir):
    # A tiny SD1.5 file against the real SD1.5 configs: diffusers' error becomes a StudioError naming the file.
    path = save_as_single_file(build_tiny(ModelKind.SD15), tmp_path / "mismatch.safetensors")
    with pytest.raises(UnsupportedModelError, match="mismatch.safetensors") as caught:
        load_single_file(path, ModelKind.SD15, dtype=torch.float32)
    assert isinstance(caught.value.__cause__, Exception), "the diffusers error must be chained, not swallowed"


def test_file_missing_weights_is_a_clear_error(saved, tmp_path):
    kind, folder, path, _ = saved
    from safetensors.torch import load_file, save_file

    weights = {k: v for k, v in load_file(path).items() if not k.startswith("first_stage_model.decoder.up.0.")}
    partial = tmp_path / "partial.safetensors"
    save_file(weights, partial)
    with pytest.raises(UnsupportedModelError, match="partial.safetensors lacks"):
        load_single_file(partial, kind, dtype=torch.float32, config_dir=folder)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_files_are_refused_without_opt_in(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeFileError, match=f"model{suffix}.*safetensors.*--allow-pickle"):
        load_single_file(path, ModelKind.SD15, dtype=torch.float32)


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nope.safetensors"):
        load_single_file(tmp_path / "nope.safetensors", ModelKind.SD15, dtype=torch.float32)


def test_bundled_configs_are_the_real_architectures():
    sd15 = json.loads((BUNDLED_CONFIGS[ModelKind.SD15] / "unet" / "config.json").read_text())
    sdxl = json.loads((BUNDLED_CONFIGS[ModelKind.SDXL] / "unet" / "config.json").read_text())
    assert sd15["cross_attention_dim"] == 768 and sd15["block_out_channels"] == [320, 640, 1280, 1280]
    assert sdxl["cross_attention_dim"] == 2048 and sdxl["transformer_layers_per_block"] == [1, 2, 10]
    index = json.loads((BUNDLED_CONFIGS[ModelKind.SD15] / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False


def test_real_clip_tokenizer_ids():
    from studio.models.clip_tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407  # SD1.5 pads with end-of-text
    sdxl_second = clip_tokenizer(pad_token="!")
    assert sdxl_second("a cat", padding="max_length", max_length=77).input_ids[-1] == 0  # "!" is id 0
