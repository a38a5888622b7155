"""The model card of an adapter folder: Hub front matter, gallery, usage snippets, and honest base-model ids."""

import json

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from studio.errors import LoraError
from studio.generation.infotext import png_info
from studio.hub.model_card import build_model_card


def make_adapter(folder, **manifest):
    """An adapter folder with adapter.json and the sample PNGs it lists (the trainer's layout)."""
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    values = {
        "name": folder.name,
        "base_model": "demo-sd15",
        "base_kind": "sd15",
        "trigger_words": [],
        "rank": 4,
        "alpha": 4,
        "text_encoder": False,
        "settings": None,
        "blend": None,
        "samples": [],
        "created": "2026-11-25T03:00:00Z",
        "studio_version": "0.1.0",
    }
    values.update(manifest)
    for sample in values["samples"]:
        Image.new("RGB", (8, 8), "white").save(folder / sample["file"])
    (folder / "adapter.json").write_text(json.dumps(values))
    return folder


def saved_and_loaded(card, tmp_path) -> ModelCard:
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def test_sd15_card_front_matter_gallery_and_snippets(tmp_path):
    folder = make_adapter(
        tmp_path / "alps",
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        trigger_words=["aid_mountain"],
        settings={"steps": 500, "learning_rate": 1e-4, "resolution": 512},
        samples=[
            {
                "file": "samples/s0.png",
                "prompt": "aid_mountain, snowy peaks",
                "negative_prompt": "blurry",
                "seed": 42,
                "step": 500,
            }
        ],
    )
    card = saved_and_loaded(build_model_card(folder, repo_id="me/alps", tags=["remote-sensing"]), tmp_path)
    data = card.data.to_dict()
    assert data["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert data["license"] == "creativeml-openrail-m"
    assert data["tags"][:4] == ["lora", "text-to-image", "diffusers", "stable-diffusion"]
    assert "remote-sensing" in data["tags"]
    assert data["instance_prompt"] == "aid_mountain"
    assert data["widget"] == [
        {
            "text": "aid_mountain, snowy peaks",
            "output": {"url": "samples/s0.png"},
            "parameters": {"negative_prompt": "blurry"},
        }
    ]
    text = card.text
    assert 'pipe.load_lora_weights("me/alps", weight_name="pytorch_lora_weights.safetensors")' in text
    assert "<lora:alps:1>" in text and "LoraLoader" in text
    assert "| learning_rate | 0.0001 |" in text
    assert "`aid_mountain`" in text


def test_sdxl_demo_base_is_not_invented_and_license_follows_the_base(tmp_path):
    folder = make_adapter(tmp_path / "tiny", base_model="demo-sdxl", base_kind="sdxl")
    card = build_model_card(folder)
    data = card.data.to_dict()
    assert "base_model" not in data  # the demo model is not on the Hub
    assert data["license"] == "openrail++"
    assert "stable-diffusion-xl" in data["tags"] and "stable-diffusion" not in data["tags"]
    assert "demo-sdxl" in card.text and "not on the Hub" in card.text
    # Without a repo id the snippet loads the local folder.
    assert 'load_lora_weights("loras/tiny"' in card.text


@pytest.mark.parametrize("base", ["v1-5-pruned-emaonly.safetensors", "my-model", "../models/x.safetensors"])
def test_local_bases_are_described_in_the_text_not_the_front_matter(tmp_path, base):
    card = build_model_card(make_adapter(tmp_path / "a", base_model=base), license="mit")
    assert "base_model" not in card.data.to_dict()
    assert card.data.license == "mit"
    assert "not a Hub repository" in card.text


def test_user_tags_are_stripped_and_deduplicated(tmp_path):
    card = build_model_card(make_adapter(tmp_path / "a"), tags=[" remote-sensing ", "lora", "", "remote-sensing"])
    assert card.data.tags == ["lora", "text-to-image", "diffusers", "stable-diffusion", "remote-sensing"]


def test_samples_outside_the_folder_or_missing_are_left_out_and_unlisted_pngs_use_their_infotext(tmp_path):
    folder = make_adapter(tmp_path / "a", samples=[{"file": "samples/ok.png", "prompt": "listed"}])
    manifest = json.loads((folder / "adapter.json").read_text())
    (tmp_path / "secret.png").write_bytes(b"x")
    manifest["samples"] += [
        {"file": "../secret.png", "prompt": "escape"},
        {"file": "/etc/passwd", "prompt": "abs"},
        {"file": "samples/gone.png", "prompt": "missing"},
    ]
    (folder / "adapter.json").write_text(json.dumps(manifest))
    infotext = png_info("from infotext\nSteps: 2, Seed: 7, Size: 8x8")
    Image.new("RGB", (8, 8)).save(folder / "samples/extra.png", pnginfo=infotext)
    widget = build_model_card(folder).data.widget
    assert widget == [
        {"text": "listed", "output": {"url": "samples/ok.png"}},
        {"text": "from infotext", "output": {"url": "samples/extra.png"}},
    ]


def test_blend_card_names_its_parts(tmp_path):
    folder = make_adapter(tmp_path / "mix", blend=[{"name": "alps", "weight": 0.7}, {"name": "desert", "weight": 0.3}])
    assert "blend of `alps` × 0.7, `desert` × 0.3" in build_model_card(folder).text


def test_prompts_cannot_break_the_table_or_the_snippet(tmp_path):
    folder = make_adapter(
        tmp_path / "a", trigger_words=['say "hi"'], samples=[{"file": "samples/s.png", "prompt": "a | b\nc"}]
    )
    text = build_model_card(folder).text
    assert "| a \\| b c |" in text
    assert 'pipe("say \\"hi\\", your prompt"' in text


@pytest.mark.parametrize(
    "content, message",
    [(None, "has no adapter.json"), ("{", "is not valid JSON"), ('{"base_kind": "sd2"}', '"sd15" or "sdxl"')],
)
def test_bad_manifest_is_a_clear_error(tmp_path, content, message):
    folder = tmp_path / "a"
    folder.mkdir()
    if content is not None:
        (folder / "adapter.json").write_text(content)
    with pytest.raises(LoraError, match=message):
        build_model_card(folder)


def test_local_paths_are_reduced_to_names_in_the_card(tmp_path):
    folder = make_adapter(
        tmp_path / "a",
        base_model="/home/alice/models/v1-5-pruned-emaonly.safetensors",
        settings={"data": "/home/alice/datasets/aid", "win": "C:\\Users\\al\\set", "steps": 10},
    )
    text = str(build_model_card(folder))
    assert "/home/alice" not in text and "Users" not in text
    assert "`v1-5-pruned-emaonly.safetensors`" in text and "| data | aid |" in text and "| win | set |" in text


def test_files_section_lists_only_files_that_exist(tmp_path):
    folder = make_adapter(tmp_path / "alps")
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"")
    text = build_model_card(folder).text
    assert "- `pytorch_lora_weights.safetensors`: diffusers format" in text and "- `adapter.json`" in text
    assert "- `alps.safetensors`" not in text
    (folder / "alps.safetensors").write_bytes(b"")
    assert "- `alps.safetensors`: kohya format" in build_model_card(folder).text


def test_files_section_gives_the_sha256_and_a1111_hash_of_each_lora_file(tmp_path):
    import hashlib

    import torch
    from safetensors.torch import save_file

    from studio.lora.library import addnet_hash

    folder = make_adapter(tmp_path / "alps")
    kohya = folder / "alps.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.ones(4, 8)}, kohya, metadata={"ss_network_dim": "4"})
    sha = hashlib.sha256(kohya.read_bytes()).hexdigest()
    text = build_model_card(folder).text
    assert f"- `alps.safetensors`: kohya format for AUTOMATIC1111, Forge and ComfyUI. SHA256 `{sha}`" in text
    assert f"(AutoV2 `{sha[:10].upper()}`), A1111 hash `{addnet_hash(kohya)}`." in text


def test_card_of_an_adapter_made_elsewhere_follows_its_header_and_files(tmp_path):
    from studio.hub.model_card import CardFile
    from studio.lora.folder import AdapterManifest
    from studio.models.kinds import ModelKind

    manifest = AdapterManifest(
        name="peaks",
        base_model="/home/bob/models/sdxl-base.safetensors",
        base_kind=ModelKind.SDXL,
        trigger_words=["pk_style"],
        rank=8,
        alpha=4.0,
        settings={"steps": "800", "network": "networks.lora"},
        extra={"made_elsewhere": True},  # as studio.lora.library.header_manifest describes a file made elsewhere
    )
    files = [CardFile("peaks.safetensors", "kohya", "ab" * 32, "c" * 12), CardFile("adapter.json", "manifest")]
    card = build_model_card(tmp_path / "peaks.safetensors", manifest=manifest, files=files, repo_id="me/peaks")
    text = card.text
    assert card.data.license == "openrail++" and card.data.instance_prompt == "pk_style"
    assert "rank 8 and alpha 4.0 for a local Stable Diffusion XL model, `sdxl-base.safetensors`" in text
    assert "Made outside Studio" in text and "/home/bob" not in text
    assert 'load_lora_weights("me/peaks", weight_name="peaks.safetensors")' in text and "<lora:peaks:1>" in text
    assert f"SHA256 `{'ab' * 32}` (AutoV2 `ABABABABAB`), A1111 hash `{'c' * 12}`." in text
    assert "| steps | 800 |" in text

    diffusers_only = [CardFile("pytorch_lora_weights.safetensors", "diffusers", "d" * 64, "e" * 12)]
    text = build_model_card(tmp_path / "peaks", manifest=manifest, files=diffusers_only).text
    assert 'weight_name="pytorch_lora_weights.safetensors"' in text and "<lora:" not in text
    assert "kohya-format LoRA files; this adapter has none" in text
