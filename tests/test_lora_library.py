"""The LoRA library scan: what each file is, from its header alone, and why a file cannot be used."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from studio.cli import main as cli_main
from studio.errors import ModelNotFoundError, UnsafePathError
from studio.lora.files import kohya_name, module_from_kohya, save_diffusers_lora, save_kohya_lora
from studio.lora.library import find_lora, scan_loras
from studio.models.kinds import ModelKind
from tests.helpers import live_adapter

CONFIGS = Path(__file__).resolve().parent.parent / "studio" / "models" / "configs"
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def full_size_modules(kind: ModelKind) -> dict[str, dict[str, torch.nn.Module]]:
    """Module paths and shapes of the real architecture, built on the meta device (no memory, instant)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / kind.value / "unet"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / kind.value / "text_encoder"))
    return {
        "unet": {n: m for n, m in unet.named_modules() if n.endswith(ATTENTION)},
        "text_encoder": {n: m for n, m in text.named_modules() if n.endswith(TEXT_ATTENTION)},
    }


def full_size_kohya_sd15(path: Path, rank: int = 4) -> dict[str, dict]:
    """A Civitai-style kohya LoRA for the full-size SD1.5 architecture (attention layers, UNet and CLIP)."""
    modules = full_size_modules(ModelKind.SD15)
    tensors = {}
    for component, named in modules.items():
        for module_path, module in named.items():
            name = kohya_name(ModelKind.SD15, component, module_path)
            tensors[f"{name}.lora_down.weight"] = torch.zeros(rank, module.in_features, dtype=torch.float16)
            tensors[f"{name}.lora_up.weight"] = torch.zeros(module.out_features, rank, dtype=torch.float16)
            tensors[f"{name}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    tag_frequency = {"10_mountains": {"alpsstyle": 40, "snow": 12, "ridge": 3}}
    save_file(tensors, path, metadata={"ss_network_dim": str(rank), "ss_tag_frequency": json.dumps(tag_frequency)})
    return modules


def a1111_addnet_hash(path: Path) -> str:
    """A1111's `addnet_hash_safetensors`, written out independently: sha256 of everything after the header."""
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length :]).hexdigest()[:12]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    loras = tmp_path_factory.mktemp("loras")
    _pipe, sd15 = live_adapter(ModelKind.SD15)
    save_diffusers_lora(sd15, loras / "alps")
    manifest = {"name": "alps", "base_kind": "sd15", "trigger_words": ["alpsstyle"]}
    (loras / "alps" / "adapter.json").write_text(json.dumps(manifest))
    (loras / "alps" / "samples").mkdir()
    Image.new("RGB", (8, 8)).save(loras / "alps" / "samples" / "0001.png")
    save_kohya_lora(sd15, loras / "alps" / "alps.safetensors", metadata={})
    _pipe, sdxl = live_adapter(ModelKind.SDXL)
    save_diffusers_lora(sdxl, loras / "xl-diffusers")
    save_kohya_lora(sdxl, loras / "xl-kohya.safetensors", metadata={})
    full = full_size_kohya_sd15(loras / "civitai-sd15.safetensors")
    Image.new("RGB", (8, 8)).save(loras / "civitai-sd15.preview.png")
    # An SDXL file as kohya's sd-scripts writes it: original (SGM) block names, no metadata.
    save_file(
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, 4),
        },
        loras / "sgm-xl.safetensors",
    )
    truncated = (loras / "xl-kohya.safetensors").read_bytes()
    (loras / "truncated.safetensors").write_bytes(truncated[: len(truncated) // 2])
    save_file(
        {
            "lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 4),
            "lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_b": torch.zeros(4, 4),
            "lora_unet_down_blocks_1_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        loras / "loha.safetensors",
    )
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4)}, loras / "checkpoint.safetensors")
    (loras / "old.ckpt").write_bytes(b"pickle")
    (loras / "notes.txt").write_text("not an adapter")
    return loras, full, {e.name: e for e in scan_loras(loras)}


def test_scan_lists_every_adapter_and_nothing_else(library):
    _loras, _full, entries = library
    assert sorted(entries) == sorted(
        [
            "alps",
            "xl-diffusers",
            "xl-kohya",
            "civitai-sd15",
            "sgm-xl",
            "truncated",
            "loha",
            "checkpoint",
            "old",
        ]
    )


def test_diffusers_folder_with_manifest(library):
    loras, _full, entries = library
    alps = entries["alps"]
    assert (alps.format, alps.kind, alps.rank, alps.problem) == ("diffusers", ModelKind.SD15, 4, None)
    assert alps.components == ("unet", "text_encoder")
    assert alps.trigger_words == ("alpsstyle",)
    assert alps.preview == loras / "alps" / "samples" / "0001.png"
    assert alps.weights_file.name == "pytorch_lora_weights.safetensors"
    # The hash in the infotext is the one A1111 computes for the kohya file users share.
    assert alps.addnet_hash == a1111_addnet_hash(loras / "alps" / "alps.safetensors")


@pytest.mark.parametrize("name, fmt", [("xl-diffusers", "diffusers"), ("xl-kohya", "kohya"), ("sgm-xl", "kohya")])
def test_sdxl_adapters_are_recognized(library, name, fmt):
    entry = library[2][name]
    assert (entry.format, entry.kind, entry.problem) == (fmt, ModelKind.SDXL, None)
    reason = entry.incompatibility(ModelKind.SD15)
    assert reason == f"{name} is an SDXL LoRA; the loaded model is SD1.5."
    assert entry.incompatibility(ModelKind.SDXL) is None


def test_full_size_sd15_kohya_file(library):
    loras, full, entries = library
    entry = entries["civitai-sd15"]
    assert (entry.format, entry.kind, entry.rank, entry.problem) == ("kohya", ModelKind.SD15, 4, None)
    assert entry.components == ("unet", "text_encoder")
    assert entry.trigger_words == ("alpsstyle", "snow", "ridge")
    assert entry.preview == loras / "civitai-sd15.preview.png"
    assert entry.addnet_hash == a1111_addnet_hash(loras / "civitai-sd15.safetensors")
    # Every kohya name maps back to a real module of the full-size architecture...
    from safetensors import safe_open

    with safe_open(str(loras / "civitai-sd15.safetensors"), framework="pt") as f:
        names = {k.rsplit(".", 2)[0] for k in f.keys() if k.endswith(".lora_down.weight")}
    unet = {module_from_kohya(n[len("lora_unet_") :], "unet") for n in names if n.startswith("lora_unet_")}
    text = {module_from_kohya(n[len("lora_te_") :], "text_encoder") for n in names if n.startswith("lora_te_")}
    assert unet == set(full["unet"]) and len(unet) == 128
    assert text == set(full["text_encoder"]) and len(text) == 48
    # ... and diffusers' own kohya reader agrees on every layer.
    from diffusers import StableDiffusionPipeline

    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(str(loras / "civitai-sd15.safetensors"))
    assert len(state_dict) == 2 * (128 + 48) and len(alphas) == 128 + 48


@pytest.mark.parametrize(
    "name, problem",
    [
        ("truncated", "truncated"),
        ("loha", "LyCORIS LoHa"),
        ("checkpoint", "full model checkpoint, not a LoRA"),
        ("old", "pickle"),
    ],
)
def test_unusable_files_say_why(library, name, problem):
    entry = library[2][name]
    assert entry.problem is not None and problem in entry.problem
    assert not entry.usable
    assert entry.incompatibility(ModelKind.SD15) == entry.problem


def test_find_lora_by_name_stays_in_the_folder(library):
    loras, _full, _entries = library
    assert find_lora(loras, "xl-kohya").kind is ModelKind.SDXL
    for bad in ("../alps", "alps/../../etc", "/etc/passwd", ".."):
        with pytest.raises(UnsafePathError, match=f"name '{re.escape(bad)}' is not a plain name"):
            find_lora(loras, bad)
    with pytest.raises(ModelNotFoundError, match="No LoRA named 'nope'.*Available: alps"):
        find_lora(loras, "nope")


def test_rescan_picks_up_new_files(tmp_path):
    assert scan_loras(tmp_path) == []
    _pipe, weights = live_adapter(ModelKind.SD15)
    save_kohya_lora(weights, tmp_path / "new.safetensors", metadata={})
    assert [e.name for e in scan_loras(tmp_path)] == ["new"]


def test_cli_lists_the_library(library, capsys):
    loras, _full, _entries = library
    assert cli_main(["loras", "--loras-dir", str(loras)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert rows["civitai-sd15"][1:4] == ["SD1.5", "kohya", "4"]
    assert rows["xl-diffusers"][1:3] == ["SDXL", "diffusers"]
    assert "truncated" in rows["truncated"][-1]
    assert rows["alps"][-1] == "ok"
    assert cli_main(["loras", "--loras-dir", str(loras), "--kind", "sdxl"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ["sgm-xl", "xl-diffusers", "xl-kohya"]


IMPORT_CODE = """
from pathlib import Path
from studio.config import StudioConfig
from studio.engine import LoadProgress, Studio
studio = Studio(StudioConfig(loras_dir=Path({loras!r}), device="cpu"))
events = list(studio.import_lora_stream({repo!r}))
print(sum(isinstance(e, LoadProgress) for e in events))
print(events[-1])
"""


@pytest.mark.slow  # a child process
def test_import_from_the_hub_then_rescan_lists_it(tmp_path):
    """The engine's import (the LoRA tab's button) in a child process, online against a local Hub server."""
    import os
    import subprocess
    import sys

    from tests.hub_server import HubServer

    kohya = tmp_path / "style.safetensors"
    _pipe, weights = live_adapter(ModelKind.SDXL)
    save_kohya_lora(weights, kohya, metadata={"modelspec.trigger_phrase": "xlstyle"})
    loras = tmp_path / "loras"
    loras.mkdir()
    with HubServer({"hf_token_alice": "alice"}) as hub:
        hub.add_repo("alice/xl-style", "alice", {"xl-style.safetensors": kohya.read_bytes(), "README.md": b"# card\n"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(
            HOME=str(tmp_path),
            HF_HOME=str(tmp_path / "hf"),
            HF_HUB_OFFLINE="0",
            HF_ENDPOINT=hub.url,
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        )
        code = IMPORT_CODE.format(loras=str(loras), repo="alice/xl-style")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    progress_events, folder = result.stdout.strip().splitlines()[-2:]
    assert int(progress_events) >= 1 and Path(folder) == loras / "xl-style"
    entry = {e.name: e for e in scan_loras(loras)}["xl-style"]
    assert (entry.kind, entry.format, entry.problem) == (ModelKind.SDXL, "kohya", None)
    assert entry.trigger_words == ("xlstyle",)
