"""Launch the real Studio app (`python launch.py --demo ...`) as a separate process for UI tests.

Tests talk to it the way users do: over HTTP, with gradio_client or a real browser. A child process
(not a thread in the test process) proves the app works from a fresh start, and lets tests check
start-up flags, exit codes and what the server refuses to serve.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0  # seconds; the first start imports torch and gradio on a loaded 2-core CI machine


@dataclass(frozen=True)
class RunningApp:
    url: str  # "http://127.0.0.1:<port>/"
    process: subprocess.Popen
    models_dir: Path
    loras_dir: Path
    outputs_dir: Path
    log: Path  # the app's stdout and stderr, for failure messages
    startup_seconds: float  # process start to first HTTP 200
    embeddings_dir: Path | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tests launch the app with: offline, no telemetry, no analytics."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("STUDIO_AUTH", None)  # a developer's own login must not change what tests see
    env.update(extra or {})
    return env


def wait_for_http(url: str, process: subprocess.Popen, *, timeout: float, log: Path) -> None:
    """Poll until `url` answers 200; fail early with the app's output if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before answering:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the app did not answer on {url} within {timeout:.0f}s:\n{log.read_text()}")


@contextlib.contextmanager
def running_app(
    folder: Path,
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[RunningApp]:
    """Start `launch.py --demo` on a free port with its own folders under `folder`; stop it on exit."""
    folder = Path(folder)
    dirs = {name: folder / name for name in ("models", "loras", "outputs", "embeddings")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        sys.executable,
        str(ROOT / "launch.py"),
        "--demo",
        "--port",
        str(port),
        "--models-dir",
        str(dirs["models"]),
        "--loras-dir",
        str(dirs["loras"]),
        "--outputs-dir",
        str(dirs["outputs"]),
        "--embeddings-dir",
        str(dirs["embeddings"]),
        *args,
    ]
    log = folder / "app.log"
    started = time.monotonic()
    # Gradio's file cache in our folder: apps of parallel test runs must not share /tmp/gradio.
    env = {"GRADIO_TEMP_DIR": str(folder / "gradio-cache"), **(env or {})}
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=app_env(env), stdout=log_file, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process, timeout=timeout, log=log)
        seconds = time.monotonic() - started
        yield RunningApp(url, process, dirs["models"], dirs["loras"], dirs["outputs"], log, seconds, dirs["embeddings"])
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Terminate our own child (SIGTERM, then SIGKILL after a grace period)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run_launch(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run `launch.py` with flags that make it exit on its own (refusals, --help); capture its output."""
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=ROOT,
        env=app_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
