"""Generating with a Hub id: the pipeline downloads from a local Hub-compatible server with progress, only the files
a pipeline needs, then works offline from the cache.

The test session runs with HF_HUB_OFFLINE=1, which huggingface_hub reads at import, so the downloads run in child
processes (online, their own HF_HOME, HF_ENDPOINT pointing at the local server), as a user's `python -m studio` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from studio.generation.infotext import parse_infotext, read_infotext
from tests.helpers import ROOT, cli_env, run_cli
from tests.hub_server import HubServer

pytestmark = pytest.mark.slow  # every test runs Studio in a child process, online against a local Hub server

REPO = "alice/tiny-sd15"
# Files a real SD1.5 repo also carries that a download must skip: pickles, a non-EMA copy, a single-file checkpoint.
EXTRA_FILES = {
    "unet/diffusion_pytorch_model.bin": b"pickle, never downloaded",
    "unet/diffusion_pytorch_model.non_ema.safetensors": b"non-EMA copy, never downloaded",
    "v1-5-pruned-emaonly.safetensors": b"single-file checkpoint, never downloaded",
}


@pytest.fixture(scope="module")
def hub(tiny_sd15_dir):
    files = {p.relative_to(tiny_sd15_dir).as_posix(): p.read_bytes() for p in tiny_sd15_dir.rglob("*") if p.is_file()}
    with HubServer({"hf_alice": "alice"}) as server:
        server.add_repo(REPO, "alice", {**files, **EXTRA_FILES})
        yield server


def hub_env(tmp_path: Path, *, online: bool, hub_url: str) -> dict[str, str]:
    home = tmp_path / "home"
    return {
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_ENDPOINT": hub_url,
        "HF_HUB_OFFLINE": "0" if online else "1",
    }


def run_child(tmp_path: Path, code: str, *, online: bool, hub_url: str) -> subprocess.CompletedProcess:
    """`python -c code`, with its own HOME and Hub cache."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=cli_env(hub_env(tmp_path, online=online, hub_url=hub_url)),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )


DOWNLOAD = """
import json
from studio.hub.download import download_pipeline
events = []
folder = download_pipeline({repo!r}, fp16=False, on_progress=lambda *event: events.append(event))
files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
print(json.dumps({{"files": files, "events": events}}))
"""


def test_download_reports_progress_and_skips_files_a_pipeline_does_not_need(tmp_path, hub, tiny_sd15_dir):
    result = run_child(tmp_path, DOWNLOAD.format(repo=REPO), online=True, hub_url=hub.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = sorted(p.relative_to(tiny_sd15_dir).as_posix() for p in tiny_sd15_dir.rglob("*") if p.is_file())
    assert report["files"] == expected
    fractions = [fraction for fraction, _message in report["events"]]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    messages = [message for _fraction, message in report["events"]]
    assert all(message.startswith(f"Downloading {REPO}:") for message in messages[:-1]) and len(messages) > 1
    assert messages[-1] == f"Downloaded {REPO}"
    fetched = {r.path.split("/resolve/main/")[-1] for r in hub.requests if "/resolve/" in r.path}
    assert not fetched & set(EXTRA_FILES)


def test_generate_with_a_hub_id_then_again_offline_from_the_cache(tmp_path, hub):
    args = [
        "generate",
        "--model",
        REPO,
        "--prompt",
        "mountains",
        "--steps",
        "2",
        "--seed",
        "5",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        str(tmp_path / "out"),
    ]
    online = run_cli(*args, env=hub_env(tmp_path, online=True, hub_url=hub.url), timeout=180)
    assert online.returncode == 0, online.stderr
    image = Path(online.stdout.strip().splitlines()[-1])
    assert parse_infotext(read_infotext(image))["Model"] == REPO

    nowhere = "http://127.0.0.1:9"  # nothing listens there
    offline = run_cli(*args, env=hub_env(tmp_path, online=False, hub_url=nowhere), timeout=180)
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip().splitlines()[-1]).read_bytes() == image.read_bytes()


def test_unknown_hub_repo_is_a_clear_error(tmp_path, hub):
    code = textwrap.dedent("""
        from studio.errors import ModelNotFoundError
        from studio.hub.download import download_pipeline
        try:
            download_pipeline("alice/no-such-model", fp16=False)
        except ModelNotFoundError as e:
            print(e)
    """)
    result = run_child(tmp_path, code, online=True, hub_url=hub.url)
    assert result.returncode == 0, result.stderr
    assert "'alice/no-such-model' does not exist or is private" in result.stdout


def test_unknown_feature_model_repo_is_named_with_the_local_way_out(tmp_path, hub):
    """Evaluation's CLIP download shares the pipeline download's error mapping, with its own name and advice."""
    code = textwrap.dedent("""
        from studio.errors import ModelNotFoundError
        from studio.evaluation.features import load_feature_model
        import torch
        try:
            load_feature_model("alice/no-such-clip", device=torch.device("cpu"), dtype=torch.float32)
        except ModelNotFoundError as e:
            print(e)
    """)
    result = run_child(tmp_path, code, online=True, hub_url=hub.url)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("Feature model 'alice/no-such-clip' does not exist or is private;"), message
    assert message.endswith("or pass a local CLIP folder as the feature model.") and "\n" not in message
