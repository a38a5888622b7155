"""Studio's Hub code against the local Hub server (tests/hub_server.py): tokens, and child processes that push
and download as a user's `python -m studio push` does (the test session itself runs with HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from tests.helpers import ROOT, cli_env, run_cli

ALICE = "hf_alice_T0k3n_4c1d2f9e8b7a"
BOB = "hf_bob_T0k3n_0f1e2d3c4b5a"
READ_ONLY = "hf_alice_read_5e6f7a8b9c0d"
BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ADAPTER_FILES = {"README.md", "adapter.json", "alps.safetensors", "pytorch_lora_weights.safetensors", "samples/s0.png"}


def child_env(tmp_path, hub_url, token=None):
    """What a child process changes in the CLI environment (tests.helpers.cli_env): online against `hub_url`, with
    its own HOME and no other HF_ settings of ours."""
    home = tmp_path / "home"
    (home / "hf").mkdir(parents=True, exist_ok=True)
    env = {k: None for k in os.environ if k.startswith(("HF_", "HUGGING"))}
    env.update(
        HOME=str(home),
        HF_HOME=str(home / "hf"),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_ENDPOINT=hub_url,
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def push_cli(tmp_path, hub_url, *args, token=ALICE):
    return run_cli(
        "push", *args, "--loras-dir", tmp_path / "loras", env=child_env(tmp_path, hub_url, token), timeout=120
    )


def run_python(tmp_path, hub_url, code, *, token=None):
    """Call studio.hub in a child process (online mode); the last stdout line is the result."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=cli_env(child_env(tmp_path, hub_url, token)),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


PUSH_CODE = """
import sys
import textwrap
from pathlib import Path
from studio.errors import StudioError
from studio.hub.adapters import PushRequest, push_adapter
try:
    print(push_adapter(PushRequest(loras_dir=Path({loras!r}), **{fields!r})))
except StudioError as e:
    print(f"{{type(e).__name__}}: {{e}}")
    sys.exit(2)
"""


def push_python(tmp_path, hub_url, *, env_token=ALICE, **fields):
    """push_adapter in a child process, as the Share tab calls it: exit 2 and the error's one line on failure."""
    code = PUSH_CODE.format(loras=str(tmp_path / "loras"), fields={"name": "alps", **fields})
    return run_python(tmp_path, hub_url, code, token=env_token)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def assert_token_nowhere(token: str, folders, *texts):
    for text in texts:
        assert token not in text
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), f"token found in {path}"


DOWNLOAD_CODE = """
from pathlib import Path
from studio.hub.adapters import download_adapter
seen = []
folder = download_adapter(repo_id={repo!r}, loras_dir=Path({loras!r}), on_progress=lambda f, m: seen.append(f))
print(seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 1)  # progress only grows, and ends at 100%
print(folder)
"""
