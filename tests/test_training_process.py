"""Training as the front ends run it: the real child process behind `Studio.train_stream`, and the CLI."""

import subprocess
import sys
from pathlib import Path

import pytest

from studio.engine import Studio
from studio.errors import BusyError, DatasetError
from studio.generation import GenerationRequest
from test_training import make_config, quick_request
from test_training_photos import make_photo_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("data") / "photos")


def test_child_process_streams_events_blocks_generation_stops_and_resumes(photos, tmp_path):
    config = make_config(tmp_path)
    studio = Studio(config)
    small = GenerationRequest(model="demo-sd15", prompt="x", steps=1, width=64, height=64)
    list(studio.generate_stream(small))  # a model is active on the device when training starts
    request = quick_request(photos, steps=10, validation_every=0)
    events = []
    for event in studio.train_stream(request):
        events.append(event)
        if event.kind == "step" and event.step == 1:
            # The run holds the GPU: generation is refused at once with a message, not queued for hours.
            assert studio.manager.active is None  # released for the training process
            with pytest.raises(BusyError, match="training"):
                next(studio.generate_stream(small))
            studio.stop_training()
    assert studio.manager.active is not None and studio.manager.active.name == "demo-sd15"  # back after the run
    kinds = [e.kind for e in events]
    assert kinds[0] == "dataset" and "step" in kinds and kinds[-1] == "stopped"
    stopped_at = events[-1].step
    assert 1 <= stopped_at < 10 and Path(events[-1].path).name == f"step-{stopped_at:06d}"
    assert not (config.loras_dir / "alps").exists()
    run_dir = config.outputs_dir.resolve() / "training" / "alps"
    assert not (run_dir / "STOP").exists() and (run_dir / "train.log").is_file()

    resumed = list(studio.train_stream(quick_request(photos, steps=10, validation_every=0, resume=True)))
    assert [e.step for e in resumed if e.kind == "step"] == list(range(stopped_at + 1, 11))
    assert resumed[-1].kind == "done" and (Path(resumed[-1].path) / "pytorch_lora_weights.safetensors").is_file()


def test_user_error_in_the_child_reaches_the_parent_as_the_same_class(tmp_path):
    config = make_config(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        list(Studio(config).train_stream(quick_request(tmp_path / "empty")))


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "studio", "train", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                          timeout=300)  # fmt: skip


def test_cli_trains_and_prints_the_adapter_folder(photos, tmp_path):
    config = make_config(tmp_path)
    folders = ["--models-dir", str(config.models_dir), "--loras-dir", str(config.loras_dir),
               "--outputs-dir", str(config.outputs_dir), "--device", "cpu"]  # fmt: skip
    result = cli("--data", str(photos), "--model", "demo-sd15", "--name", "cli-alps", "--trigger", "mtn",
                 "--caption", "mountains", "--steps", "2", "--resolution", "64", "--rank", "4", "--alpha", "2",
                 *folders, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [str(config.loras_dir.resolve() / "cli-alps")]
    assert "8 usable of 11 images" in result.stderr and "Estimated peak VRAM" in result.stderr
    assert (config.loras_dir / "cli-alps" / "cli-alps.safetensors").is_file()

    (tmp_path / "empty").mkdir()
    result = cli("--data", str(tmp_path / "empty"), "--model", "demo-sd15", "--name", "x", *folders, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith("error: Dataset folder") and len(result.stderr.strip().splitlines()) == 1
