"""launch.py's safe defaults, checked on real processes: where it listens, who may expose it, what it serves."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client.exceptions import AuthenticationError

from tests.app_server import run_launch, running_app
from tests.helpers import app_client

pytestmark = pytest.mark.slow  # every test starts launch.py in a child process


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket listening on `port`, from /proc/net (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def login_status(url: str, user: str, password: str) -> int:
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "login", data=form), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def http_status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_listens_on_loopback_only_by_default(studio_running_app):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to see which address the app listens on")
    port = int(studio_running_app.url.rstrip("/").rsplit(":", 1)[1])
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; 00000000 would be every interface.
    assert listening_addresses(port) == {"0100007F"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--share"], "--share makes the app public"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0 lets other machines use your GPU"),
        (["--host", "my-laptop.local"], "add --auth USER:PASS"),
    ],
)
def test_exposing_the_app_without_a_login_is_refused(flags, message):
    result = run_launch(["--demo", *flags])
    assert result.returncode == 1
    assert message in result.stderr and "--auth USER:PASS" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("auth", ["nocolon", "user:", ":pass"])
def test_malformed_auth_is_refused(auth):
    result = run_launch(["--demo", "--host", "0.0.0.0"], env={"STUDIO_AUTH": auth})
    assert result.returncode == 1 and "USER:PASS" in result.stderr


def test_studio_auth_from_the_environment_allows_a_network_host_and_requires_the_login(tmp_path):
    with running_app(tmp_path, args=("--host", "0.0.0.0"), env={"STUDIO_AUTH": "alice:s3cret"}) as app:
        with pytest.raises(AuthenticationError, match="credentials were not provided. Please login"):
            app_client(app.url)  # no login: the API is closed
        client = app_client(app.url, auth=("alice", "s3cret"))
        assert "demo-sd15" in str(client.predict(api_name="/list_models"))

        # Guessing is throttled: parallel wrong passwords take turns, one per second; the owner is not held up.
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda i: login_status(app.url, "alice", f"guess{i}"), range(4)))
        assert statuses == [400] * 4 and time.monotonic() - started >= 3.5
        assert login_status(app.url, "alice", "s3cret") == 200
    assert "s3cret" not in app.output()  # the password never reaches the log


def test_only_files_inside_the_outputs_folder_are_served(studio_running_app, tmp_path):
    inside = studio_running_app.outputs_dir / "served.txt"
    inside.write_text("an output")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (studio_running_app.outputs_dir / "link.txt").symlink_to(secret)
    model_file = studio_running_app.models_dir / "model.safetensors"
    model_file.write_bytes(b"weights")
    base = studio_running_app.url

    assert http_status(f"{base}gradio_api/file={inside}") == (200, b"an output")
    refused = [
        secret,
        model_file,
        studio_running_app.outputs_dir / ".." / "models" / "model.safetensors",
        studio_running_app.outputs_dir / "link.txt",
        Path("/etc/passwd"),
        Path(__file__).resolve().parents[1] / "launch.py",
        Path("launch.py"),
    ]
    for path in refused:
        for route in ("gradio_api/file=", "file="):
            status, body = http_status(f"{base}{route}{path}")
            assert status in (403, 404), f"{route}{path} was served"
            assert b"private" not in body and b"weights" not in body


def test_help_lists_the_safety_flags():
    result = run_launch(["--help"], timeout=30)
    assert result.returncode == 0 and "--auth USER:PASS" in result.stdout and "--insecure" in result.stdout
