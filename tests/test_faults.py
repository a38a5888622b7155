"""Issue 6, quality gates: hostile files and names, concurrent requests, a killed save, Stop while loading.

Only the cases no other test file covers; each one checks that Studio refuses clearly or stays consistent, and
that the launched app keeps serving afterwards. Covered elsewhere: truncated/pickle checkpoints (test_single_file,
test_models, test_app_client), a LoRA for the other base (test_lora_blend, test_lora_ui), bombs, 0-byte images and
broken metadata.jsonl lines in a training folder (test_dataset), `../` in save-blend/train/export names
(test_lora_merge, test_training_presets, test_evaluation), generation refused while training (test_training_process).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.errors import UnreadableImageError, UnsafePathError
from studio.generation.infotext import read_infotext
from studio.models.kinds import ModelKind
from tests.helpers import (
    ROOT,
    TRAIN_FORM,
    add_lora,
    app_client,
    cli_env,
    folders,
    make_config,
    make_photo_folder,
    pixels,
    png_header_only,
    quick_request,
    run_cli,
    run_training,
    wait_until,
)

SMALL = dict(steps=3, cfg=7.0, width=64, height=64, scheduler="Euler", batch_size=1, batch_count=1, clip_skip=1)
NO_SLOTS = (None, None, None)
ONE = (1.0, 1.0, 1.0)


def generate(client: Client, *, model="demo-sd15", seed=42, **overrides):
    return client.predict(
        model=model,
        prompt="faults ridge",
        negative_prompt="",
        seed=seed,
        api_name="/generate",
        **{**SMALL, **overrides},
    )


def submit(client: Client, *, model="demo-sd15", seed=42, **overrides):
    return client.submit(
        model=model,
        prompt="faults ridge",
        negative_prompt="",
        seed=seed,
        api_name="/generate",
        **{**SMALL, **overrides},
    )


def started(job) -> bool:
    """The app took the job off its queue (it runs, or already ran)."""
    return job.status().code.name in ("PROCESSING", "ITERATING", "FINISHED")


def image_of(result) -> np.ndarray:
    _status, _preview, gallery, _infotext, _seed = result
    return pixels(Image.open(gallery[0]["image"]))


# --- hostile files into the PNG-info reader ---------------------------------------------------------


def hostile_pngs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bomb, big, empty, text = (folder / n for n in ("bomb.png", "big.png", "empty.png", "text.png"))
    png_header_only(bomb, 100_000, 100_000)  # ~60 bytes claiming 10 gigapixels
    png_header_only(big, 12_000, 12_000)  # under PIL's hard limit, but would decode 144 MB of pixels
    empty.write_bytes(b"")
    text.write_text("not a png at all")
    return {"bomb": bomb, "big": big, "empty": empty, "text": text}


def test_png_info_reader_refuses_bombs_and_broken_files_by_name(tmp_path):
    files = hostile_pngs(tmp_path)
    # Over PIL's warning size its pixels are never decoded to look for late text chunks: no parameters, quickly.
    started = time.monotonic()
    assert read_infotext(files.pop("big")) is None
    assert time.monotonic() - started < 1
    for path in files.values():
        with pytest.raises(UnreadableImageError, match=path.name) as caught:
            read_infotext(path)
        assert "\n" not in str(caught.value)
        assert isinstance(caught.value, OSError)  # callers that skip unreadable samples (model card) still do


def test_png_info_tab_refuses_hostile_uploads_and_keeps_serving(client, tmp_path):
    files = hostile_pngs(tmp_path)
    assert "no generation parameters" in client.predict(handle_file(str(files.pop("big"))), api_name="/png_info")
    for name, path in files.items():
        with pytest.raises(AppError, match="is not a readable image") as caught:
            client.predict(handle_file(str(path)), api_name="/png_info")
        assert "Traceback" not in str(caught.value), name
    _status, _preview, gallery, infotext, _seed = generate(client, seed=606)
    assert client.predict(handle_file(gallery[0]["image"]), api_name="/png_info") == infotext


def test_the_app_answers_a_nul_byte_prompt_in_one_line_and_keeps_serving(client):
    with pytest.raises(AppError, match=r"The prompt contains a NUL character \(at position 4\); remove it") as caught:
        client.predict(model="demo-sd15", prompt="alps\0", negative_prompt="", seed=1, api_name="/generate", **SMALL)
    assert "Traceback" not in str(caught.value) and "upstream" not in str(caught.value)
    _status, _preview, gallery, infotext, _seed = generate(client, seed=607)
    assert gallery and "Seed: 607" in infotext


# --- hostile names ---------------------------------------------------------------------------------


def test_absolute_and_climbing_names_are_refused_for_push_train_and_save_blend(tmp_path):
    from studio.hub.adapters import PushRequest, push_adapter
    from studio.lora.merge import save_blend
    from studio.lora.requests import SaveBlendRequest

    loras = tmp_path / "loras"
    add_lora(loras, "alps", seed=1)
    # A complete, pushable-looking adapter outside loras/: an absolute path to it must still be refused.
    outside = tmp_path / "outside"
    add_lora(outside, "secret", seed=2)
    hostile = ["../outside/secret", str(outside / "secret"), "/etc", "alps/../../outside/secret"]
    for name in hostile:
        with pytest.raises(UnsafePathError, match="outside the LoRA folder"):
            push_adapter(PushRequest(name=name, repo_id="alice/x", loras_dir=loras, token="hf_unused_token_000"))
        with pytest.raises(UnsafePathError, match=f"name '{re.escape(name)}'"):
            quick_request(tmp_path, name=name).validate()
        with pytest.raises(UnsafePathError, match=f"name '{re.escape(name)}'"):
            save_blend(SaveBlendRequest(name=name, loras=(("alps", 1.0),)), loras_dir=loras)
    assert sorted(p.name for p in loras.iterdir()) == ["alps"] and sorted(p.name for p in outside.iterdir()) == [
        "secret"
    ]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env={"HF_TOKEN": "hf_unused_token_0"}, timeout=120)


@pytest.mark.slow  # `python -m studio` in child processes
def test_cli_push_and_train_refuse_escaping_names_in_one_line(tmp_path):
    loras = tmp_path / "loras"
    add_lora(tmp_path / "outside", "secret", seed=2)
    push = cli(
        "push",
        str(tmp_path / "outside" / "secret"),
        "--repo",
        "alice/x",
        "--loras-dir",
        str(loras),
        "--endpoint",
        "http://127.0.0.1:9",
        cwd=tmp_path,
    )
    (tmp_path / "data").mkdir()
    train = cli(
        "train",
        "--data",
        str(tmp_path / "data"),
        "--model",
        "demo-sd15",
        "--name",
        "../../escaped",
        "--loras-dir",
        str(loras),
        "--outputs-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    for result in (push, train):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "outside the LoRA folder" in push.stderr and "escaped" in train.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


# --- two generations at once, one with a LoRA ------------------------------------------------------


@pytest.fixture(scope="module")
def two_sessions(studio_running_app):
    """Two browser-like sessions of the launched app, one with a LoRA blend applied, and their run-alone images."""
    add_lora(studio_running_app.loras_dir, "faults-alps", seed=11)
    with_lora, without = app_client(studio_running_app.url), app_client(studio_running_app.url)
    status = with_lora.predict("demo-sd15", 1.0, False, "faults-alps", *NO_SLOTS, 1.0, *ONE, api_name="/apply_blend")
    assert status.startswith("Blend on demo-sd15: faults-alps 1 (")
    alone = {"lora": image_of(generate(with_lora, seed=77)), "none": image_of(generate(without, seed=77))}
    assert not np.array_equal(alone["lora"], alone["none"]), "the LoRA must change the image for this test to mean much"
    return {"lora": with_lora, "none": without}, alone


def check_same_as_alone(results: dict, alone: dict) -> None:
    for key, result in results.items():
        assert result[0].startswith("Done."), result[0]
        assert np.array_equal(image_of(result), alone[key]), f"the {key!r} request drew another request's blend"
    assert "<lora:faults-alps:1>" in results["lora"][3] and "<lora:" not in results["none"][3]


def test_concurrent_requests_with_and_without_a_lora_each_draw_their_run_alone_pixels(two_sessions):
    clients, alone = two_sessions
    for _round in range(2):
        jobs = {"none": submit(clients["none"], seed=77), "lora": submit(clients["lora"], seed=77)}
        check_same_as_alone({key: job.result(timeout=120) for key, job in jobs.items()}, alone)


def test_generations_fired_during_a_training_run_wait_for_it_and_stay_unmixed(
    two_sessions, studio_running_app, tmp_path
):
    clients, alone = two_sessions
    photos = make_photo_folder(tmp_path / "photos")
    trainer = app_client(studio_running_app.url)
    training = trainer.submit(
        data=str(photos), name="faults-during-train", api_name="/train", **{**TRAIN_FORM, "validation_every": 0}
    )
    wait_until(lambda: started(training), 60, "the training run started")
    jobs = {"none": submit(clients["none"], seed=77), "lora": submit(clients["lora"], seed=77)}

    def training_done_and_no_generation_overtook_it():
        if training.done():
            return True
        assert not any(job.done() for job in jobs.values()), "a generation ran while the training run held the GPU"
        return False

    # One GPU queue: the generations wait for the run (a 1-second generation never overtakes it) ...
    wait_until(training_done_and_no_generation_overtook_it, 180, "the training run ended")
    status, _curve, _gallery = training.result(timeout=10)
    assert "Done" in status and (studio_running_app.loras_dir / "faults-during-train" / "adapter.json").is_file()
    # ... then each draws exactly its run-alone image: no LoRA state leaked from the run or from the other session.
    check_same_as_alone({key: job.result(timeout=120) for key, job in jobs.items()}, alone)


# --- the training process killed while it writes the adapter ----------------------------------------


@pytest.mark.slow  # trains in a child process
def test_training_killed_mid_export_leaves_no_half_written_adapter_and_the_next_export_works(tmp_path):
    from studio.lora.files import read_lora
    from studio.lora.library import scan_loras

    photos = make_photo_folder(tmp_path / "photos")
    loras = tmp_path / "loras"
    paused = tmp_path / "paused"
    settings = dict(name="killed", caption="mountains", steps=1, rank=4, validation_every=0, checkpoint_every=0)
    train_args = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    command = [
        sys.executable,
        str(ROOT / "tests" / "studio_paused_in_export.py"),  # `python -m studio`, paused halfway through the export
        "train",
        "--data",
        photos,
        "--model",
        "demo-sd15",
        *train_args,
        "--resolution=64",
        "--preset=none",
        "--device=cpu",
        *folders(tmp_path),
    ]
    env = cli_env({"STUDIO_TEST_PAUSE_IN": str(loras), "STUDIO_TEST_PAUSED": str(paused)})
    child = subprocess.Popen(
        list(map(str, command)), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def paused_in_export():
            assert child.poll() is None, "the export ended without pausing:\n" + child.stdout.read().decode()[-3000:]
            return paused.exists()

        wait_until(paused_in_export, 180, "the training child paused halfway through writing the adapter")
        # The moment that matters: one weights file of the adapter is complete on disk, the adapter is not.
        assert len(list(loras.rglob("*.safetensors"))) == 1
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # What a user sees: no adapter named `killed`, nothing broken in the library, nothing but hidden names.
    target = loras / "killed"
    assert not target.exists()
    assert scan_loras(loras) == []
    assert [p.name for p in loras.iterdir() if not p.name.startswith(".")] == []

    # The next export of the same name works: a complete adapter that loads, and the only one listed.
    folder, _events = run_training(quick_request(photos, **settings), make_config(tmp_path))
    assert folder == target.resolve()
    assert {"pytorch_lora_weights.safetensors", "killed.safetensors", "adapter.json", "README.md"} <= {
        p.name for p in target.iterdir()
    }
    assert [entry.name for entry in scan_loras(loras)] == ["killed"]
    for weights in (target, target / "killed.safetensors"):
        assert read_lora(weights).layers["unet"], weights


# --- Stop pressed while the model loads -------------------------------------------------------------


def test_stop_during_model_loading_then_the_next_request_is_served(client, studio_running_app):
    from studio.models.tiny import save_tiny

    save_tiny(ModelKind.SD15, studio_running_app.models_dir / "faults-stop-load")
    # 150 steps: Stop lands while the model loads or in the first steps, never after a finished image (a tiny
    # model loads and draws a few steps in ~0.3 s, faster than the Stop call on a busy machine).
    job = submit(client, model="faults-stop-load", seed=808, steps=150)
    wait_until(lambda: started(job), 30, "the generation started")
    client.predict(api_name="/stop")
    status = job.result(timeout=120)[0]
    assert status.startswith("Stopped. 0 image(s)"), status  # stopped before its first step: no image saved
    assert not list(studio_running_app.outputs_dir.glob("txt2img/*/*-808.png"))
    # Next requests: the same model and the demo one both work normally.
    again = generate(client, model="faults-stop-load", seed=809)
    assert again[0].startswith("Done.") and again[4] == 809
    assert generate(client, seed=810)[0].startswith("Done.")


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export_but_a_running_one_is_kept(tmp_path):
    from studio.atomic import STALE_STAGING_SECONDS, remove_stale_staging

    target = tmp_path / "loras" / "alps"
    stale = tmp_path / "loras" / ".alps.tmp-dead"
    running = tmp_path / "loras" / ".alps.tmp-live"
    other = tmp_path / "loras" / ".alpine.tmp-dead"
    for folder in (stale, running, other):
        (folder / "alps").mkdir(parents=True)
    old = time.time() - STALE_STAGING_SECONDS - 60
    for folder in (stale, other):
        os.utime(folder, (old, old))
    assert remove_stale_staging(target) == [stale]
    assert not stale.exists() and running.is_dir() and other.is_dir()  # other names are not this export's business


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # gone: what a killed Studio leaves behind names a pid like this


def _leftovers(root: Path) -> dict[str, Path]:
    """What Studios killed mid-write leave in each folder, beside complete files and folders."""
    dead, alive = _dead_pid(), os.getppid()  # pytest's parent (the shell) outlives the test: a running writer
    outputs, loras, models, embeddings = (root / name for name in ("outputs", "loras", "models", "embeddings"))
    for folder in (outputs / "2026-12-02", loras / "alps", models, embeddings):
        folder.mkdir(parents=True, exist_ok=True)
    (outputs / "2026-12-02" / "00001.png").write_bytes(b"complete image")
    (models / "hashes.json").write_text("{}")
    (loras / "alps" / "adapter.safetensors").write_bytes(b"complete adapter")
    paths = {
        "half image": outputs / "2026-12-02" / f".00001.png.{dead}-abcd1234.tmp",
        "only copy of an image": outputs / "2026-12-02" / f".00002.png.{dead}-abcd1234.tmp",
        "old-style hash cache temp": models / ".hashes.json.k2j4h5g6.tmp",
        "running writer's embedding": embeddings / f".mine.safetensors.{alive}-abcd1234.tmp",
        "staging of an export": loras / f".alps.tmp-{dead}-abcd1234",
        "only copy of an adapter": loras / f".beta.old-{dead}",
    }
    for name, path in paths.items():
        if name.startswith(("staging", "only copy of an adapter")):
            (path / ("alps" if "staging" in name else "")).mkdir(parents=True)
            (path / "adapter.safetensors").write_bytes(b"adapter")
        else:
            path.write_bytes(b"part")
    hour_ago = time.time() - 7200
    os.utime(paths["old-style hash cache temp"], (hour_ago, hour_ago))  # no pid in the name: its age decides
    return paths


@pytest.mark.parametrize("start", ["app", "cli"])
def test_leftovers_of_killed_runs_are_cleaned_at_start_keeping_only_copies(tmp_path, start, capsys):
    from studio.atomic import clean_leftovers, studio_folders
    from studio.cli import main as cli_main

    paths = _leftovers(tmp_path)
    config = make_config(tmp_path)
    if start == "app":
        clean_leftovers(studio_folders(config))  # what launch.py runs before building the app
    else:
        assert cli_main(["loras", *map(str, folders(tmp_path))]) == 0  # any CLI command, before its work
        capsys.readouterr()

    gone = {"half image", "old-style hash cache temp", "staging of an export", "only copy of an adapter"}
    assert {name for name, path in paths.items() if not path.exists()} == gone
    assert (tmp_path / "loras" / "beta" / "adapter.safetensors").read_bytes() == b"adapter"  # put back in place
    assert (tmp_path / "loras" / "alps" / "adapter.safetensors").read_bytes() == b"complete adapter"
    assert (tmp_path / "outputs" / "2026-12-02" / "00001.png").read_bytes() == b"complete image"
    # A normal write afterwards works and leaves nothing hidden behind.
    from studio.atomic import write_bytes

    write_bytes(tmp_path / "outputs" / "2026-12-02" / "00003.png", b"new")
    hidden = {p.name for p in (tmp_path / "outputs" / "2026-12-02").iterdir() if p.name.startswith(".")}
    assert hidden == {paths["only copy of an image"].name}


# A child process with a file-size limit (`ulimit -f`): every write past it fails with EFBIG, as a full disk fails
# with ENOSPC; Python ignores SIGXFSZ, so the write raises instead of killing the process.
DISK_FULL_CHILD = r"""
import json, resource, sys
from pathlib import Path
import numpy as np
from PIL import Image
from studio.errors import DiskFullError
from studio.generation import outputs
from studio.lora.merge import save_blend
from studio.lora.requests import SaveBlendRequest
from studio.training.trainer import preflight
from tests.helpers import add_lora, make_config, make_photo_folder, quick_request

root = Path(sys.argv[1])
add_lora(root / "loras", "alps")
training = quick_request(make_photo_folder(root / "photos"), name="full")
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
report = {}

def attempt(label, limit, work):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        report[label] = ["ok", str(work())]
    except DiskFullError as error:
        report[label] = ["DiskFullError", str(error)]

attempt("big image", 32 * 1024, lambda: outputs.save_images([noise], ["p"], [1], root / "outputs"))
blend = lambda: save_blend(SaveBlendRequest(name="mix", loras=(("alps", 0.5),)), loras_dir=root / "loras")
attempt("blend", 1024, blend)
attempt("training", 16 * 1024, lambda: preflight(training, make_config(root)))  # before the model loads
attempt("small image", 32 * 1024, lambda: outputs.save_images([noise.resize((16, 16))], ["p"], [2], root / "outputs"))
attempt("blend with room", hard, blend)
print(json.dumps(report))
"""


@pytest.mark.slow  # a child process that imports torch
def test_a_full_disk_gives_one_line_naming_the_folder_and_leaves_nothing_half_written(tmp_path):
    import json

    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL_CHILD, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for label in ("big image", "blend", "training"):
        kind, message = report[label]
        assert kind == "DiskFullError" and "\n" not in message and "File too large" in message
    assert str(tmp_path / "outputs" / "txt2img") in report["big image"][1]
    assert f"No room left to write in {tmp_path / 'loras'}" in report["blend"][1]
    assert f"No room left to write in {tmp_path / 'loras'}" in report["training"][1]
    # Then ordinary writes that fit work, and the disk holds finished files only: no half image, no staging folder.
    assert report["small image"][0] == "ok" and report["blend with room"][0] == "ok"
    images = sorted(p.name for p in (tmp_path / "outputs").rglob("*") if p.is_file())
    assert len(images) == 1 and images[0].endswith("-2.png")
    assert sorted(p.name for p in (tmp_path / "loras").iterdir()) == ["alps", "mix"]
    assert (tmp_path / "loras" / "mix" / "adapter.json").is_file()


def test_training_into_a_folder_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path):
    from studio.errors import FolderNotWritableError
    from studio.training.trainer import preflight

    photos = make_photo_folder(tmp_path / "photos")
    config = make_config(tmp_path)
    (tmp_path / "not-a-folder").write_text("a file where the LoRA folder should be")
    blocked = dataclasses.replace(config, loras_dir=tmp_path / "not-a-folder" / "loras")
    with pytest.raises(FolderNotWritableError, match=r"^Cannot write to the LoRA folder .*not-a-folder/loras \(Not a"):
        preflight(quick_request(photos), blocked)
    assert preflight(quick_request(photos), config).samples  # the usual folder passes
    assert not any(p.name.startswith(".") for p in (tmp_path / "loras").iterdir())  # the probe left nothing


@pytest.mark.slow  # loads the tiny model and caches latents
def test_a_data_folder_deleted_while_caching_is_one_line_naming_it(tmp_path):
    import shutil

    from studio.errors import DatasetError
    from studio.training.trainer import train

    photos = make_photo_folder(tmp_path / "data" / "photos")

    def delete_after_the_first_image(event):
        if event.message.startswith("Caching latents 1/"):
            shutil.rmtree(tmp_path / "data")

    with pytest.raises(DatasetError) as refused:
        train(quick_request(photos), make_config(tmp_path), on_event=delete_after_the_first_image)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'data'} is gone (moved or deleted") and "\n" not in message
    assert list((tmp_path / "loras").iterdir()) == []  # no adapter, no staging folder
