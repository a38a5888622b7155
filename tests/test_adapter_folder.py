"""The adapter folder's shared rules (studio.lora.folder, studio.atomic.replace_folder), checked through their users.

The manifest reads what every earlier Studio wrote; repo ids follow the Hub's own validator; a trained and a blended
adapter carry the same kohya keys; and replacing a folder keeps one complete version on disk even when the process
is killed between any two steps.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open

from studio.atomic import replace_folder, restore_replaced, staging_folder
from studio.errors import InvalidRequestError, LoraError, UnsafePathError
from studio.hub.adapters import PushRequest, download_adapter
from studio.hub.model_card import build_model_card
from studio.lora.folder import (
    MANIFEST,
    AdapterManifest,
    check_adapter_name,
    check_repo_id,
    is_hub_id,
    manifest_if_readable,
    read_manifest,
)
from studio.lora.library import scan_loras
from studio.models.kinds import ModelKind

ROOT = Path(__file__).resolve().parent.parent

# adapter.json exactly as the trainer of an earlier Studio wrote it (and as the blend writer, below).
OLD_TRAINED = """{
  "name": "alps",
  "base_model": "/home/alice/models/v1-5-pruned-emaonly.safetensors",
  "base_kind": "sd15",
  "trigger_words": ["aid_mountain"],
  "rank": 4,
  "alpha": 2.0,
  "text_encoder": false,
  "settings": {"steps": 500, "learning_rate": 0.0001, "data": "/home/alice/datasets/aid-mountains"},
  "blend": null,
  "samples": [{"file": "samples/step-000500.png", "prompt": "aid_mountain", "seed": 1234, "step": 500}],
  "created": "2026-11-25T03:00:00+00:00",
  "studio_version": "0.1.0"
}"""
OLD_BLEND = """{
  "name": "mix",
  "base_model": "demo-sdxl",
  "base_kind": "sdxl",
  "trigger_words": [],
  "rank": 8,
  "alpha": 8.0,
  "text_encoder": true,
  "settings": null,
  "blend": [{"name": "alps", "weight": 0.5}, {"name": "sketch", "weight": -0.25, "text_encoder_weight": 0.0}],
  "samples": [],
  "created": "2026-11-26T10:00:00+00:00",
  "studio_version": "0.1.0"
}"""


# --- the manifest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [OLD_TRAINED, OLD_BLEND], ids=["trained", "blend"])
def test_old_adapter_json_reads_and_writes_back_unchanged(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    manifest = read_manifest(tmp_path)
    assert manifest.base_kind in (ModelKind.SD15, ModelKind.SDXL) and manifest.name in ("alps", "mix")
    assert manifest.to_json() == json.loads(text)
    (tmp_path / "copy").mkdir()
    manifest.save(tmp_path / "copy")
    written = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    assert written == json.loads(text) and list(written) == list(json.loads(text))  # same keys, same order
    assert read_manifest(tmp_path / "copy") == manifest


def test_missing_fields_take_defaults_and_unknown_keys_survive_a_rewrite(tmp_path):
    (tmp_path / MANIFEST).write_text('{"base_kind": "sdxl", "rank": 4, "made_by": "a newer Studio", "blend": "x"}')
    manifest = read_manifest(tmp_path)
    assert manifest == AdapterManifest(base_kind=ModelKind.SDXL, rank=4, extra={"made_by": "a newer Studio"})
    manifest.save(tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text())["made_by"] == "a newer Studio"
    assert build_model_card(tmp_path).data.license == "openrail++"  # the card reads it as before


@pytest.mark.parametrize(
    "content, strict_error, lenient",
    [
        (None, "has no adapter.json", None),
        ("{", "is not valid JSON", None),
        ("[1, 2]", '"sd15" or "sdxl"', None),
        ('{"trigger_words": ["alpsstyle"]}', '"sd15" or "sdxl"', AdapterManifest(trigger_words=["alpsstyle"])),
        ('{"base_kind": "sd2", "trigger_words": "one"}', '"sd15" or "sdxl"', AdapterManifest(trigger_words=["one"])),
    ],
    ids=["missing", "broken", "not-an-object", "no-kind", "bad-kind"],
)
def test_strict_readers_explain_and_the_library_reads_what_it_can(tmp_path, content, strict_error, lenient):
    if content is not None:
        (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(LoraError, match=strict_error):
        read_manifest(tmp_path)
    assert manifest_if_readable(tmp_path) == lenient


def test_public_manifest_keeps_names_not_local_folders(tmp_path):
    (tmp_path / MANIFEST).write_text(OLD_TRAINED)
    manifest = read_manifest(tmp_path)
    public = manifest.public().to_json()
    assert public["base_model"] == "v1-5-pruned-emaonly.safetensors"
    assert public["settings"] == {"steps": 500, "learning_rate": 0.0001, "data": "aid-mountains"}
    assert manifest.base_model.startswith("/home/alice")  # the local manifest itself is not changed


@pytest.mark.parametrize(
    "name, ok",
    [("alps-v1", True), ("_draft", True), ("a.b", True), ("x" * 100, True), ("", False), (".hidden", False)]
    + [("a/b", False), ("../up", False), ("a..b", False), ("x" * 101, False), ("al ps", False), ("Älps", False)],
)
def test_adapter_names(name, ok):
    if ok:
        assert check_adapter_name(name) == name
    else:
        with pytest.raises(UnsafePathError, match="Adapter name"):
            check_adapter_name(name)


# --- Hub repo ids ---------------------------------------------------------------------------------


@pytest.fixture
def pushable(tmp_path):
    """loras/alps with the two files a push requires (contents do not matter before the upload)."""
    folder = tmp_path / "loras" / "alps"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(OLD_TRAINED)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"")
    return tmp_path / "loras"


REPO_IDS = [
    ("alice/alps", None),
    ("Alps-Lab/alps_v1.0", None),
    ("alps", "has no owner: use OWNER/NAME, e.g. my-name/alps"),
    ("alice/al ps", "is not valid"),
    ("alice/../x", "is not valid"),
    ("alice/x--y", "is not valid"),
    ("-alice/x", "is not valid"),
    ("alice/x.", "is not valid"),
    ("a/b/c", "is not valid"),
    ("alice/" + "x" * 97, "is not valid"),
    ("", "is not valid"),
]


@pytest.mark.parametrize("repo_id, error", REPO_IDS)
def test_repo_ids_for_push_and_import(pushable, tmp_path, repo_id, error):
    if error is None:
        assert check_repo_id(repo_id) == repo_id
        PushRequest(name="alps", repo_id=repo_id, loras_dir=pushable).validate()
        return
    with pytest.raises(InvalidRequestError, match=error) as caught:
        PushRequest(name="alps", repo_id=repo_id, loras_dir=pushable).validate()
    message = str(caught.value)
    assert "\n" not in message and repr(repo_id) in message and "OWNER/NAME" in message
    with pytest.raises(InvalidRequestError, match=error):  # refused before any network access
        download_adapter(repo_id=repo_id, loras_dir=tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize(
    "name, hub",
    [("stable-diffusion-v1-5/stable-diffusion-v1-5", True), ("stabilityai/sdxl-turbo", True)]
    + [("demo-sd15", False), ("models/v1-5.safetensors", False), ("old/model.ckpt", False), ("/abs/x", False)]
    + [("../models/x", False), ("a/b/c", False), ("a--b/c", False), ("", False)],
)
def test_hub_ids_in_the_model_card(tmp_path, name, hub):
    assert is_hub_id(name) is hub
    manifest = AdapterManifest(name="a", base_model=name, base_kind=ModelKind.SD15)
    (tmp_path / "a").mkdir()
    manifest.save(tmp_path / "a")
    assert ("base_model" in build_model_card(tmp_path / "a").data.to_dict()) is hub


# --- kohya metadata: one builder for a trained and a blended adapter -------------------------------------


def kohya_header(folder: Path) -> dict[str, str]:
    with safe_open(str(folder / f"{folder.name}.safetensors"), framework="pt") as f:
        return f.metadata()


def test_trained_and_blended_adapters_carry_the_same_kohya_keys(studio_config, tmp_path):
    from studio.lora.merge import SaveBlendRequest, save_blend
    from studio.training.export import export_adapter
    from studio.training.request import TrainingRequest
    from tests.helpers import live_adapter

    loras = studio_config.loras_dir
    pipe, _weights = live_adapter(ModelKind.SD15)
    request = TrainingRequest(data=tmp_path / "photos", model="demo-sd15", name="trained", trigger="mtn", rank=4)
    trained = export_adapter(
        loras / "trained",
        run_dir=tmp_path,
        trained={"unet": pipe.unet, "text_encoder": pipe.text_encoder},
        request=request,
        kind=ModelKind.SD15,
        state={"samples": []},
        num_images=3,
        precision="no",
    )
    blend = SaveBlendRequest(name="mix", loras=(("trained", 0.5),), base_model="demo-sd15")
    blended = save_blend(blend, loras_dir=loras)

    headers = {folder.name: kohya_header(folder) for folder in (trained, blended)}
    manifests = {folder.name: read_manifest(folder) for folder in (trained, blended)}
    same = [
        "ss_network_module",
        "ss_base_model_version",
        "ss_sd_model_name",
        "modelspec.sai_model_spec",
        "modelspec.architecture",
        "modelspec.implementation",
        "modelspec.trigger_phrase",  # the blend inherits its part's trigger word
    ]
    assert {k: headers["trained"][k] for k in same} == {k: headers["mix"][k] for k in same}
    assert headers["mix"]["ss_base_model_version"] == "sd_v1" and headers["mix"]["modelspec.trigger_phrase"] == "mtn"
    for name, header in headers.items():  # the rest says what the manifest says, in both
        manifest = manifests[name]
        assert header["ss_output_name"] == header["modelspec.title"] == manifest.name == name
        assert header["ss_network_dim"] == str(manifest.rank) and header["ss_network_alpha"] == str(manifest.alpha)
        assert header["ss_network_train_unet_only"] == str(not manifest.text_encoder)
        assert header["modelspec.date"] == manifest.created
    assert "trained with Studio" in headers["trained"]["ss_training_comment"]
    assert "Blend of trained:0.5" in headers["mix"]["ss_training_comment"]
    assert headers["trained"]["ss_learning_rate"] == "0.0001" and "ss_learning_rate" not in headers["mix"]


# --- replacing a folder --------------------------------------------------------------------------------


def make_version(folder: Path, label: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)  # staging_folder() makes it empty
    for name in ("a.bin", "b.bin"):
        (folder / name).write_text(f"{label} {name}")
    return folder


def version_of(folder: Path) -> str:
    """Which complete version `folder` holds ("old" or "new"); fails on a mixed or partial folder."""
    files = {p.name: p.read_text() for p in folder.iterdir()}
    label = files["a.bin"].split()[0]
    assert files == {"a.bin": f"{label} a.bin", "b.bin": f"{label} b.bin"}, files
    return label


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


STEPS = ["aside", "in-place", "cleaned"]


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_after_any_step_leaves_one_complete_version(tmp_path, step):
    target = make_version(tmp_path / "x", "old")
    built = make_version(staging_folder(target), "new")

    def fail(done):
        if done == step:
            raise RuntimeError(f"failed after {done}")

    with pytest.raises(RuntimeError, match=step):
        replace_folder(built, target, after_step=fail)
    assert version_of(target) == ("old" if step == "aside" else "new")
    assert hidden(tmp_path) == [built.parent.name]  # no old version left; the caller removes its staging folder


KILL_CODE = """
import os, signal, sys
from pathlib import Path
from studio.atomic import replace_folder

def stop(done):
    if done == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)

replace_folder(Path(sys.argv[1]), Path(sys.argv[2]), after_step=stop)
"""


def replace_and_kill(built: Path, target: Path, step: str) -> None:
    """replace_folder in a child process that SIGKILLs itself right after `step`."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_CODE), str(built), str(target), step],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()


# step the child is killed after -> what is under the real name right then, and after a recovery
KILLS = [("aside", None, "old"), ("in-place", "new", "new"), ("cleaned", "new", "new")]


@pytest.mark.parametrize("step, right_after, recovered", KILLS, ids=[k[0] for k in KILLS])
@pytest.mark.parametrize("recover", ["restore", "next-replace"])
def test_killed_between_steps_then_the_next_writer_restores_or_cleans(tmp_path, step, right_after, recovered, recover):
    target = make_version(tmp_path / "x", "old")
    built = make_version(staging_folder(target), "new")
    replace_and_kill(built, target, step)
    assert (version_of(target) if target.exists() else None) == right_after
    # Never lost: when nothing is under the real name, the old version is complete under its hidden one.
    versions = [version_of(p) for p in tmp_path.glob(".x.old-*")]
    assert versions == (["old"] if step != "cleaned" else [])
    if recover == "restore":
        restore_replaced(target)
        assert version_of(target) == recovered
    else:
        newer = make_version(staging_folder(target), "newer")
        replace_folder(newer, target)
        assert version_of(target) == "newer"
    assert not any(".old-" in name for name in hidden(tmp_path))


def test_a_first_write_killed_after_the_rename_is_complete(tmp_path):
    target = tmp_path / "x"
    built = make_version(staging_folder(target), "new")
    replace_and_kill(built, target, "in-place")
    assert version_of(target) == "new"


def test_overwrite_false_refuses_and_keeps_both(tmp_path):
    target = make_version(tmp_path / "x", "old")
    built = make_version(staging_folder(target), "new")
    with pytest.raises(FileExistsError):
        replace_folder(built, target, overwrite=False)
    assert version_of(target) == "old" and version_of(built) == "new"


def test_the_old_version_of_a_running_swap_is_left_alone(tmp_path):
    target = tmp_path / "x"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        make_version(tmp_path / f".x.old-{sleeper.pid}", "old")
        assert restore_replaced(target) == [] and not target.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert restore_replaced(target) == [tmp_path / f".x.old-{sleeper.pid}"] and version_of(target) == "old"


def test_the_library_puts_back_an_adapter_a_killed_overwrite_left_aside(studio_config):
    from studio.lora.merge import SaveBlendRequest, save_blend
    from tests.helpers import add_lora

    loras = studio_config.loras_dir
    add_lora(loras, "alps", seed=1)
    folder = save_blend(SaveBlendRequest(name="mix", loras=(("alps", 0.5),)), loras_dir=loras)
    files = sorted(p.name for p in folder.iterdir())
    built = make_version(staging_folder(folder), "new")
    replace_and_kill(built, folder, "aside")
    assert not folder.exists()
    listed = {entry.name: entry for entry in scan_loras(loras)}
    assert sorted(listed) == ["alps", "mix"] and listed["mix"].usable
    assert sorted(p.name for p in folder.iterdir()) == files
    # The staging folder of the killed writer stays hidden; the library never lists it.
    assert all(not name.startswith(".") for name in listed)


def test_save_blend_overwrite_swaps_the_whole_folder(studio_config):
    from studio.lora.merge import SaveBlendRequest, save_blend
    from tests.helpers import add_lora

    loras = studio_config.loras_dir
    add_lora(loras, "alps", seed=1)
    folder = save_blend(SaveBlendRequest(name="mix", loras=(("alps", 0.5),)), loras_dir=loras)
    (folder / "notes.txt").write_text("only in the old version")
    save_blend(SaveBlendRequest(name="mix", loras=(("alps", 1.0),), overwrite=True), loras_dir=loras)
    assert read_manifest(folder).blend == [{"name": "alps", "weight": 1.0}]
    assert not (folder / "notes.txt").exists()  # replaced as a whole, not file by file
    assert hidden(loras) == []
