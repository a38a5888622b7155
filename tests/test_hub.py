"""Pushing and pulling adapters with huggingface_hub's real HTTP client against a local Hub-compatible server.

The test session runs with HF_HUB_OFFLINE=1, which huggingface_hub reads once at import, so every operation that
talks to the server runs in a child process with its own HOME/HF_HOME, exactly as a user's `python -m studio push`.
"""

import json
import shutil
import socket
import tempfile
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from studio.errors import InvalidRequestError, UnsafePathError
from studio.hub.adapters import PushRequest, files_to_upload
from tests import browser
from tests.helpers import app_client, live_adapter, render, write_trained_adapter
from tests.hub_clients import (
    ADAPTER_FILES,
    ALICE,
    BASE,
    BOB,
    DOWNLOAD_CODE,
    READ_ONLY,
    assert_token_nowhere,
    front_matter,
    push_cli,
    push_python,
    run_python,
    snapshot,
)
from tests.hub_server import HubServer


@pytest.fixture
def hub():
    with HubServer(
        {ALICE: "alice", BOB: "bob", READ_ONLY: "alice"}, orgs={"alice": ["alps-lab"]}, read_only_tokens=(READ_ONLY,)
    ) as server:
        yield server


@pytest.fixture
def loras(tmp_path):
    """loras/alps as the trainer writes it, with a local README that a push must leave alone."""
    return write_trained_adapter(tmp_path, BASE)


@pytest.mark.slow  # a child process
def test_push_creates_the_repo_with_card_and_files_and_a_second_push_updates_it(tmp_path, hub, loras):
    before = snapshot(loras)
    result = push_cli(
        tmp_path,
        hub.url,
        "alps",
        "--repo",
        "alice/alps",
        "--tags",
        "remote-sensing,mountains",
        "--message",
        "first version",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{hub.url}/alice/alps"  # HF_ENDPOINT decided where it went
    assert "100% Pushed alps" in result.stderr

    repo = hub.repos["alice/alps"]
    assert repo.owner == "alice" and not repo.private
    assert set(repo.files) == ADAPTER_FILES
    for name in ADAPTER_FILES - {"README.md", "adapter.json"}:
        assert repo.files[name] == before[f"alps/{name}"]
    published = json.loads(repo.files["adapter.json"])  # as local, minus the folders of the training data
    assert published["settings"]["data"] == "aid-mountains" and b"/home/alice" not in repo.files["README.md"]
    assert published["samples"] == json.loads(before["alps/adapter.json"])["samples"]
    assert {"alps.safetensors", "pytorch_lora_weights.safetensors", "samples/s0.png"} <= repo.lfs
    card = front_matter(repo.files["README.md"])
    assert card["base_model"] == BASE and card["license"] == "creativeml-openrail-m"
    assert card["tags"] == ["lora", "text-to-image", "diffusers", "stable-diffusion", "remote-sensing", "mountains"]
    assert card["widget"][0] == {
        "text": "aid_mountain, snowy ridge",
        "output": {"url": "samples/s0.png"},
        "parameters": {"negative_prompt": "blurry"},
    }
    assert 'load_lora_weights("alice/alps"' in repo.files["README.md"].decode()
    assert repo.commits[-1]["summary"] == "first version"
    assert hub.xet_requests == []  # plain LFS, which any Hub-compatible server speaks

    # A new sample and a changed manifest: the second push updates the same repo.
    Image.new("RGB", (8, 8), "black").save(loras / "alps" / "samples" / "s1.png")
    manifest = json.loads((loras / "alps" / "adapter.json").read_text())
    manifest["samples"].append({"file": "samples/s1.png", "prompt": "aid_mountain, at night"})
    (loras / "alps" / "adapter.json").write_text(json.dumps(manifest))
    second = push_python(tmp_path, hub.url, repo_id="alice/alps")  # as the Share tab calls it
    assert second.returncode == 0, second.stderr
    assert len(repo.commits) == 3  # created, first push, second push
    assert set(repo.commits[-1]["files"]) == {"README.md", "adapter.json", "samples/s1.png"}
    assert [w["output"]["url"] for w in front_matter(repo.files["README.md"])["widget"]] == [
        "samples/s0.png",
        "samples/s1.png",
    ]
    assert (loras / "alps" / "README.md").read_text() == "local card\n"  # the local folder is never modified
    assert_token_nowhere(
        ALICE,
        [tmp_path],
        result.stdout,
        result.stderr,
        second.stdout,
        second.stderr,
        *(data.decode("latin-1") for data in repo.files.values()),
    )


@pytest.mark.slow  # a child process
def test_private_repo_in_an_organization(tmp_path, hub, loras):
    result = push_python(tmp_path, hub.url, repo_id="alps-lab/alps-private", private=True, license="mit")
    assert result.returncode == 0, result.stderr
    repo = hub.repos["alps-lab/alps-private"]
    assert repo.private and front_matter(repo.files["README.md"])["license"] == "mit"


@pytest.mark.slow  # a child process
@pytest.mark.parametrize(
    "token, repo_id, message",
    [
        ("hf_not_a_real_token_99", "alice/alps", "rejected the Hub token (401)"),
        (BOB, "alice/alps", "The token belongs to 'bob', who cannot create or write repos under 'alice'"),
        (READ_ONLY, "alice/alps", "read-only"),
    ],
)
def test_refused_push_is_one_clear_line_and_changes_nothing(tmp_path, hub, loras, token, repo_id, message):
    before = snapshot(tmp_path)
    result = push_python(tmp_path, hub.url, repo_id=repo_id, env_token=token)
    assert result.returncode == 2
    assert result.stdout.startswith("HubError: ") and message in result.stdout and "Traceback" not in result.stderr
    assert hub.repos == {} and hub.lfs_objects == {}
    assert snapshot(tmp_path / "loras") == {k[len("loras/") :]: v for k, v in before.items() if k.startswith("loras/")}
    assert_token_nowhere(token, [tmp_path], result.stdout, result.stderr)


@pytest.mark.slow  # a child process
def test_repo_the_token_cannot_write_is_refused_by_the_server_and_left_as_it_was(tmp_path, hub, loras):
    """Past our own namespace check (alice is in alps-lab) the Hub still decides: this repo is not hers to write."""
    card = b"---\nlicense: mit\n---\nbob's\n"
    hub.add_repo("alps-lab/bobs-alps", "bob", {"README.md": card})
    result = push_python(tmp_path, hub.url, repo_id="alps-lab/bobs-alps")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "HubError: No write access to 'alps-lab/bobs-alps' (403)" in result.stdout
    assert hub.repos["alps-lab/bobs-alps"].files == {"README.md": card}


@pytest.mark.slow  # a child process
def test_unreachable_hub_names_the_endpoint(tmp_path, loras):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = push_python(tmp_path, dead, repo_id="alice/alps")
    assert result.returncode == 2
    assert f"HubError: Cannot reach {dead}" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.slow  # a child process
def test_token_typed_for_this_push_wins_over_hf_token_and_stored_login_is_used(tmp_path, hub, loras):
    typed = push_python(tmp_path, hub.url, repo_id="alice/typed", token=ALICE, env_token=BOB)  # HF_TOKEN: bob's
    assert typed.returncode == 0, typed.stderr
    assert "alice/typed" in hub.repos

    (tmp_path / "home" / "hf" / "token").write_text(ALICE)  # what `hf auth login` stores
    stored = push_python(tmp_path, hub.url, repo_id="alice/stored", env_token=None)
    assert stored.returncode == 0, stored.stderr
    assert "alice/stored" in hub.repos
    assert ALICE not in typed.stdout + typed.stderr + stored.stdout + stored.stderr


@pytest.mark.slow  # a child process
def test_no_token_anywhere_says_how_to_get_one(tmp_path, hub, loras):
    result = push_python(tmp_path, hub.url, repo_id="alice/alps", env_token=None)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stdout.startswith("HubError: No Hub token") and "HF_TOKEN" in result.stdout


@pytest.mark.slow  # a child process
def test_download_adapter_round_trip_into_the_lora_folder(tmp_path, hub, loras):
    assert push_python(tmp_path, hub.url, repo_id="alice/alps-v2").returncode == 0
    hub.repos["alice/alps-v2"].files["train.ckpt"] = b"pickle"  # never downloaded
    imported = tmp_path / "imported"
    result = run_python(tmp_path, hub.url, DOWNLOAD_CODE.format(repo="alice/alps-v2", loras=str(imported)))
    assert result.returncode == 0, result.stderr
    progress_ok, folder = result.stdout.strip().splitlines()[-2:]
    assert progress_ok == "True"
    folder = Path(folder)
    assert folder == imported / "alps-v2"
    files = snapshot(folder)
    assert set(files) == ADAPTER_FILES | {".hub-source.json"}
    for name in ADAPTER_FILES:
        assert files[name] == hub.repos["alice/alps-v2"].files[name]
    assert [p.name for p in imported.iterdir()] == ["alps-v2"]  # no staging folder or cache left behind
    assert json.loads((folder / ".hub-source.json").read_text()) == {"repo_id": "alice/alps-v2"}

    # Importing again (after an update on the Hub) replaces the old copy.
    hub.repos["alice/alps-v2"].files["samples/s9.png"] = files["samples/s0.png"]
    again = run_python(tmp_path, hub.url, DOWNLOAD_CODE.format(repo="alice/alps-v2", loras=str(imported)))
    assert again.returncode == 0, again.stderr
    assert (folder / "samples" / "s9.png").exists()
    assert [p.name for p in imported.iterdir()] == ["alps-v2"]


@pytest.mark.slow  # a child process
def test_download_of_a_repo_without_weights_or_missing_leaves_the_folder_alone(tmp_path, hub, loras):
    hub.add_repo("carol/empty", "carol", {"README.md": b"---\nlicense: mit\n---\nnotes\n"})
    imported = tmp_path / "imported"
    (imported / "notes").mkdir(parents=True)
    (imported / "notes" / "keep.safetensors").write_bytes(b"old")
    code = "from studio.errors import HubError\ntry:\n" + textwrap.indent(textwrap.dedent(DOWNLOAD_CODE), "    ")
    code += "except HubError as e:\n    print('HubError:', e)\n"
    cases = [("carol/empty", "has no .safetensors file"), ("carol/missing", "does not exist or is private")]
    for repo, message in cases:
        result = run_python(tmp_path, hub.url, code.format(repo=repo, loras=str(imported)))
        assert result.returncode == 0, result.stderr
        assert "HubError:" in result.stdout and message in result.stdout
    assert snapshot(imported) == {"notes/keep.safetensors": b"old"}

    # A repo named like an adapter made here does not replace it.
    assert push_python(tmp_path, hub.url, repo_id="alice/notes").returncode == 0
    result = run_python(tmp_path, hub.url, code.format(repo="alice/notes", loras=str(imported)))
    assert "HubError:" in result.stdout and "already holds another adapter" in result.stdout
    assert snapshot(imported) == {"notes/keep.safetensors": b"old"}


def test_request_validation_and_hidden_token(tmp_path, loras):
    request = PushRequest(name="alps", repo_id="alice/alps", loras_dir=loras, token=ALICE)
    request.validate()
    assert ALICE not in repr(request)
    with pytest.raises(UnsafePathError, match="outside the LoRA folder"):
        PushRequest(name="../../etc", repo_id="alice/x", loras_dir=loras).validate()
    for repo_id in ["alps", "alice/al ps", "alice/../x", "-alice/x", "a/b/c"]:
        with pytest.raises(InvalidRequestError, match="Repo id"):
            PushRequest(name="alps", repo_id=repo_id, loras_dir=loras).validate()
    with pytest.raises(InvalidRequestError, match="Tag"):
        PushRequest(name="alps", repo_id="alice/x", loras_dir=loras, tags=("two words",)).validate()
    (loras / "not-studio").mkdir()
    with pytest.raises(InvalidRequestError, match="no adapter.json"):
        PushRequest(name="not-studio", repo_id="alice/x", loras_dir=loras).validate()


def test_only_adapter_files_are_uploaded_and_symlinks_cannot_leak_other_files(tmp_path, loras):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"private")
    (loras / "alps" / "samples" / "link.png").symlink_to(secret)
    names = {p.relative_to(loras / "alps").as_posix() for p in files_to_upload(loras / "alps")}
    assert names == ADAPTER_FILES - {"README.md"}


def share_app_env(tmp_path, hub_url) -> dict[str, str]:
    """The launched app online against `hub_url`, with its own HOME and no Hub login."""
    home = tmp_path / "home"
    (home / "hf").mkdir(parents=True)
    return {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": hub_url,
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_TOKEN": "",
    }


@pytest.mark.slow  # launches the app
def test_share_tab_pushes_through_its_api_and_clears_the_token(tmp_path, hub, loras):
    """The launched app's /push (what the Push button calls), driven with gradio_client."""
    from gradio_client.exceptions import AppError

    from tests.app_server import running_app

    with running_app(tmp_path, env=share_app_env(tmp_path, hub.url)) as app:
        client = app_client(app.url)
        status, url, token_left = client.predict(
            "alps", "alice/from-ui", False, "remote-sensing, alps", "", "via UI", ALICE, api_name="/push"
        )
        assert url == f"{hub.url}/alice/from-ui"
        assert "pushed **alps**" in status and token_left == ""
        card, _status = client.predict(
            "alps", "alice/from-ui", False, "remote-sensing", "mit", "", api_name="/preview_card"
        )
        assert front_matter(card.encode())["license"] == "mit" and 'load_lora_weights("alice/from-ui"' in card
        with pytest.raises(AppError, match=r"rejected the Hub token \(401\)"):
            client.predict("alps", "alice/other", False, "", "", "", "hf_wrong_token_1", api_name="/push")
        with pytest.raises(AppError, match=r"Adapter name '\.\./loras' points outside the LoRA folder"):
            client.predict("../loras", "alice/other", False, "", "", "", ALICE, api_name="/push")
        # An adapter made after this session opened is pushable by name, without a rescan.
        shutil.copytree(loras / "alps", loras / "alps-later")
        status, url, _token = client.predict("alps-later", "alice/later", False, "", "", "", ALICE, api_name="/push")
        assert url == f"{hub.url}/alice/later" and "pushed **alps-later**" in status
        log = app.output()
    repo = hub.repos["alice/from-ui"]
    assert repo.commits[-1]["summary"] == "via UI"
    assert {"remote-sensing", "alps"} <= set(front_matter(repo.files["README.md"])["tags"])
    assert "alice/other" not in hub.repos
    assert_token_nowhere(ALICE, [tmp_path], log)


@pytest.mark.slow  # launches the app and a browser
def test_share_tab_pushes_from_a_real_browser_and_clears_the_token(tmp_path, hub, loras):
    browser.require_browser()  # skips without Chromium, fails under STUDIO_REQUIRE_BROWSER=1 (tests/browser.py)
    from tests.app_server import running_app

    with running_app(tmp_path, env=share_app_env(tmp_path, hub.url)) as app:
        push_in_browser(app.url, f"{hub.url}/alice/from-browser")
        log = app.output()
    assert "alice/from-browser" in hub.repos
    assert_token_nowhere(ALICE, [tmp_path], log)


def push_in_browser(app_url: str, expected_url: str) -> None:
    """Click through the Share tab in headless Chromium: pick the adapter, type repo and token, Push, see the URL."""
    expect = browser.require_browser().expect
    # The profile lives outside tmp_path, which the test searches for the token afterwards.
    with tempfile.TemporaryDirectory() as profile, browser.chromium_context(Path(profile)) as context:
        page = context.new_page()
        page.goto(app_url)
        page.get_by_role("tab", name="Share").click()
        page.get_by_label("Adapter").click()
        page.get_by_role("option", name="alps").click()
        page.get_by_label("Repository", exact=True).fill(expected_url.split("/", 3)[3])
        token = page.locator("#share-token input")
        expect(token).to_have_attribute("type", "password")
        token.fill(ALICE)
        page.get_by_role("button", name="Push to the Hub").click()
        expect(page.locator("#push-url textarea, #push-url input").first).to_have_value(expected_url)
        expect(token).to_have_value("")  # used for this push only
        browser.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(browser.SCREENSHOTS / "share-tab.png"))


CANCEL_CODE = """
import threading
from pathlib import Path
from studio.errors import CancelledError
from studio.hub.adapters import PushRequest, push_adapter
stop = threading.Event()
def progress(fraction, message):
    if message.startswith("Uploading"):
        stop.set()  # the user presses Stop as the upload starts
try:
    push_adapter(PushRequest(name="alps", repo_id="alice/alps", loras_dir=Path({loras!r})), on_progress=progress,
                 cancel=stop)
except CancelledError as e:
    print("CancelledError:", e)
"""


@pytest.mark.slow  # a child process
def test_stop_during_upload_leaves_no_commit(tmp_path, hub, loras):
    result = run_python(tmp_path, hub.url, CANCEL_CODE.format(loras=str(loras)), token=ALICE)
    assert result.returncode == 0, result.stderr
    assert "CancelledError: Push stopped" in result.stdout
    assert hub.repos["alice/alps"].files == {}  # created, but nothing committed
    assert hub.lfs_objects == {}


@pytest.mark.slow  # a child process
def test_a_real_adapter_pulled_from_the_hub_draws_what_the_trained_one_drew(tmp_path, hub):
    """Push a live peft LoRA's files, pull them into another loras/, load both formats in diffusers: same image."""
    import numpy as np

    from studio.lora.files import save_diffusers_lora, save_kohya_lora
    from studio.models.kinds import ModelKind
    from studio.models.tiny import build_tiny

    pipe, weights = live_adapter(ModelKind.SD15)
    expected = render(pipe)
    folder = tmp_path / "loras" / "live"
    save_diffusers_lora(weights, folder)
    save_kohya_lora(weights, folder / "live.safetensors", metadata={"ss_network_dim": "4"})
    (folder / "adapter.json").write_text(
        json.dumps(
            {"name": "live", "base_model": "demo-sd15", "base_kind": "sd15", "rank": 4, "alpha": 8.0, "samples": []}
        )
    )
    assert push_python(tmp_path, hub.url, name="live", repo_id="alice/live").returncode == 0
    pulled = run_python(tmp_path, hub.url, DOWNLOAD_CODE.format(repo="alice/live", loras=str(tmp_path / "pulled")))
    assert pulled.returncode == 0, pulled.stderr
    fresh = build_tiny(ModelKind.SD15)
    fresh.set_progress_bar_config(disable=True)
    for weight_name in ("pytorch_lora_weights.safetensors", "live.safetensors"):  # diffusers, then A1111/ComfyUI
        fresh.load_lora_weights(tmp_path / "pulled" / "live", weight_name=weight_name)
        np.testing.assert_allclose(render(fresh), expected, atol=1e-4)
        fresh.unload_lora_weights()


def test_namespace_check_ignores_case_and_knows_organizations():
    from studio.errors import HubError
    from studio.hub.adapters import check_namespace

    me = {"name": "Alice", "orgs": [{"name": "Alps-Lab"}], "auth": {"accessToken": {"role": "fineGrained"}}}
    check_namespace(me, "alice/x")
    check_namespace(me, "alps-lab/x")
    with pytest.raises(HubError, match="cannot create or write repos under 'bob'"):
        check_namespace(me, "bob/x")


@pytest.mark.slow  # a child process
def test_a_minimal_hub_without_whoami_still_gets_the_push_and_decides_the_namespace(tmp_path, loras):
    with HubServer({ALICE: "alice", BOB: "bob"}, without=("whoami",)) as hub:
        assert push_python(tmp_path, hub.url, repo_id="alice/alps").returncode == 0
        assert "README.md" in hub.repos["alice/alps"].files
        refused = push_python(tmp_path, hub.url, repo_id="alice/alps-bob", env_token=BOB)
        assert refused.returncode == 2 and "No write access to 'alice/alps-bob' (403)" in refused.stdout
        assert "alice/alps-bob" not in hub.repos
