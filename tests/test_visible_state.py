"""State the user can see and trust, outside the UI: blends bound to a model kind, and the CLI's checks before it
loads a model (mistyped LoRA, embedding or Hub id answered in about a second, not after a model load or retries)."""

from __future__ import annotations

import socket
import time

import pytest
import torch

from studio.errors import LoraError, ModelNotFoundError
from studio.lora import kind_blends
from studio.models.kinds import ModelKind
from tests.helpers import add_lora
from tests.hub_server import HubServer
from tests.test_cli_fast_errors import folders, run_cli  # noqa: F401  (folders: fixture)
from tests.test_embeddings import save_embedding

SD15, SDXL = ModelKind.SD15, ModelKind.SDXL


def test_a_blend_is_kept_per_kind_and_restored_on_switching_back():
    blends = kind_blends.remember({}, SD15, [("alps", 0.8), ("snow", -0.25)])
    assert kind_blends.blend_of(blends, SD15) == [["alps", 0.8], ["snow", -0.25]]
    # On an SDXL model: nothing applied, the SD1.5 blend waits and is named.
    assert kind_blends.blend_of(blends, SDXL) == []
    assert kind_blends.waiting(blends, SDXL) == [(SD15, [["alps", 0.8], ["snow", -0.25]])]
    line = kind_blends.summary(blends, SDXL, "demo-sdxl")
    assert line.startswith("LoRA blend on demo-sdxl (SDXL): no LoRA.")
    assert "The SD1.5 blend (alps 0.8, snow -0.25) is not applied here" in line
    # An SDXL blend set meanwhile does not replace the SD1.5 one; back on SD1.5 it is the SDXL one that waits.
    blends = kind_blends.remember(blends, SDXL, [("xl", 1.0)])
    assert kind_blends.blend_of(blends, SD15) == [["alps", 0.8], ["snow", -0.25]]
    assert kind_blends.summary(blends, SD15, "demo-sd15") == (
        "LoRA blend on demo-sd15 (SD1.5): alps 0.8, snow -0.25. "
        "The SDXL blend (xl 1) is not applied here; pick an SDXL model for it."
    )
    # An unknown kind (a Hub id not loaded yet) stores nothing and applies nothing.
    assert kind_blends.remember(blends, None, [("x", 1)]) == blends and kind_blends.blend_of(blends, None) == []


def test_usable_lora_names_the_reason(tmp_path):
    add_lora(tmp_path, "alps", kind=SD15)
    assert kind_blends.usable_lora(tmp_path, "alps", SD15).name == "alps"
    with pytest.raises(LoraError, match="alps is an SD1.5 LoRA; the loaded model is SDXL"):
        kind_blends.usable_lora(tmp_path, "alps", SDXL)
    with pytest.raises(ModelNotFoundError, match="No LoRA named 'alpz'"):
        kind_blends.usable_lora(tmp_path, "alpz", None)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: connections are refused at once


def feature_model(repo_id: str):
    from studio.evaluation.features import load_feature_model

    load_feature_model(repo_id, device=torch.device("cpu"), dtype=torch.float32)


def pipeline(repo_id: str):
    from studio.hub.download import download_pipeline

    download_pipeline(repo_id, fp16=False)


@pytest.mark.parametrize("load", [pipeline, feature_model])
def test_an_unreachable_hub_is_one_request_not_retries(monkeypatch, tmp_path, load):
    """No network (HF_HUB_OFFLINE unset): huggingface_hub's file listing retries for ~23 s; one probe decides.
    The Evaluate tab's feature model and the Generate tab's Hub models share the download code."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="is not in the local Hub cache and the Hub cannot be reached"):
        load("nobody/nothing")
    assert time.monotonic() - start < 5


@pytest.fixture
def cli_folders(folders, tmp_path):  # noqa: F811
    """The fake-torch folders of test_cli_fast_errors, plus a LoRA and an embedding of each kind."""
    add_lora(tmp_path / "loras", "alps", kind=SD15)
    add_lora(tmp_path / "loras", "xl", kind=SDXL, seed=2)
    save_embedding(tmp_path / "embeddings", "xlstyle", [torch.zeros(2, 32), torch.zeros(2, 32)])
    return folders, ["--loras-dir", str(tmp_path / "loras"), "--embeddings-dir", str(tmp_path / "embeddings")]


GENERATE = ["generate", "--model", "demo-sd15", "--prompt"]
BEFORE_LOADING = {
    "unknown-lora": (GENERATE + ["mountains", "--lora", "alpz:1"], "No LoRA named 'alpz'"),
    "unknown-lora-in-prompt": (GENERATE + ["mountains <lora:alpz:0.5>"], "No LoRA named 'alpz'"),
    "lora-of-the-other-kind": (GENERATE + ["mountains", "--lora", "xl:1"], "xl is an SDXL LoRA"),
    "embedding-of-the-other-kind": (GENERATE + ["a barn, xlstyle"], "'xlstyle' (xlstyle.safetensors) is an SDXL"),
}


@pytest.mark.slow  # runs the CLI
@pytest.mark.parametrize("case", BEFORE_LOADING)
def test_generate_checks_loras_and_embeddings_before_loading_a_model(cli_folders, tmp_path, case):
    root, options = cli_folders
    args, expected = BEFORE_LOADING[case]
    result = run_cli(root, tmp_path, *args, *options)  # fails if torch or diffusers was imported
    assert result.returncode == 2 and expected in result.stderr, result.stderr


@pytest.mark.slow  # runs the CLI
def test_an_unknown_hub_id_fails_in_seconds_offline_unreachable_or_missing(folders, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    args = ["generate", "--model", "nobody/nothing", "--prompt", "p"]
    for name, env in {
        "offline": {"HF_HUB_OFFLINE": "1"},
        "unreachable": {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"},
    }.items():
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        (tmp_path / name).mkdir()
        start = time.monotonic()
        result = run_cli(folders, tmp_path / name, *args)
        assert time.monotonic() - start < 10, name  # was 8 s offline (a model load) and ~30-44 s unreachable
        assert result.returncode == 2 and "not in the local Hub cache and the Hub cannot be reached" in result.stderr
    (tmp_path / "hub").mkdir()
    with HubServer({}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = run_cli(folders, tmp_path / "hub", *args)
    assert "'nobody/nothing' does not exist or is private" in result.stderr, result.stderr
