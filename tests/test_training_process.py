"""Training as the front ends run it: the real child process behind `Studio.train_stream`, and the CLI."""

import contextlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from studio.engine import Studio
from studio.errors import BusyError, DatasetError, ModelNotFoundError, TrainingError
from studio.generation.request import GenerationRequest
from tests.helpers import (
    ROOT,
    cli_env,
    folders,
    make_config,
    make_photo_folder,
    quick_request,
    run_cli,
    run_cli_on_two_processes,
)

pytestmark = pytest.mark.slow  # every test trains in a child process (the app's training child, the CLI, torchrun)


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


def test_user_errors_come_before_the_child_or_from_it_as_the_same_class(photos, tmp_path):
    config = make_config(tmp_path)
    studio = Studio(config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):  # found before any process starts
        next(studio.train_stream(quick_request(tmp_path / "empty")))
    with pytest.raises(TrainingError, match="Nothing to resume"):
        next(studio.train_stream(quick_request(photos, resume=True)))
    assert not (config.outputs_dir / "training" / "alps" / "train.log").exists()  # no child was started
    # Only the child finds out that the model does not exist (it loads it): the same class reaches the parent.
    with pytest.raises(ModelNotFoundError, match="'no-such-model.safetensors' was not found"):
        list(studio.train_stream(quick_request(photos, model="no-such-model.safetensors")))
    assert (config.outputs_dir / "training" / "alps" / "train.log").is_file()


APP_THAT_DIES = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    sys.path[:0] = [{root!r}]
    from tests.helpers import make_config, quick_request
    from studio.training.worker import run_in_child

    def report(event):
        if event.kind == "step":
            print("step", event.step, flush=True)

    run_in_child(quick_request(Path(sys.argv[2]), steps=100_000, validation_every=0), make_config(Path(sys.argv[1])),
                 on_event=report, stop=threading.Event())
""")


def test_training_child_stops_and_keeps_a_checkpoint_when_the_app_is_killed(photos, tmp_path):
    script = APP_THAT_DIES.format(root=str(ROOT))
    app = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), str(photos)],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    children = []
    try:
        assert app.stdout.readline().startswith("step"), "the training child never reported a step"
        children = psutil.Process(app.pid).children(recursive=True)
        (child,) = [c for c in children if c.ppid() == app.pid]
        app.send_signal(signal.SIGKILL)  # no clean-up code of the app runs
        app.wait(timeout=10)
        child.wait(timeout=120)  # a run of 100 000 steps: only the watchdog ends it this soon
    finally:
        # Only this test's processes: the session's shared app is a child of pytest too.
        app.kill()
        for process in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    run_dir = tmp_path / "outputs" / "training" / "alps"
    assert list((run_dir / "checkpoints").glob("step-*")), "no checkpoint kept for a resume"
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "is gone (" in log and "stopping and keeping a checkpoint" in log and "Traceback" not in log


def cli(*args, cwd):
    return run_cli("train", *args, cwd=cwd)


def test_cli_trains_and_prints_the_adapter_folder(photos, tmp_path):
    config = make_config(tmp_path)
    places = [*folders(tmp_path), "--device", "cpu"]
    result = cli(
        "--data",
        str(photos),
        "--model",
        "demo-sd15",
        "--name",
        "cli-alps",
        "--trigger",
        "mtn",
        "--caption",
        "mountains",
        "--steps",
        "2",
        "--resolution",
        "64",
        "--rank",
        "4",
        "--alpha",
        "2",
        *places,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [str(config.loras_dir.resolve() / "cli-alps")]
    assert "8 usable of 11 images" in result.stderr and "Estimated peak VRAM" in result.stderr
    assert (config.loras_dir / "cli-alps" / "cli-alps.safetensors").is_file()

    (tmp_path / "empty").mkdir()
    result = cli("--data", str(tmp_path / "empty"), "--model", "demo-sd15", "--name", "x", *places, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith("error: Dataset folder") and len(result.stderr.strip().splitlines()) == 1


def test_two_processes_train_the_same_adapter_as_one_process_accumulating_two_batches(photos, tmp_path):
    """What `accelerate launch --multi_gpu` starts, on CPUs: torchrun + gloo. Process r of 2 takes micro-batches
    r, r+2, ... and gradients are averaged across processes, which is one process accumulating two micro-batches."""
    config = make_config(tmp_path)
    settings = [
        "--data",
        str(photos),
        "--model",
        "demo-sd15",
        "--caption",
        "mountains",
        "--steps",
        "3",
        "--resolution",
        "64",
        "--rank",
        "4",
        "--batch",
        "2",
        "--lr",
        "1e-2",
        "--validation-every",
        "0",
        *folders(tmp_path),
        "--device",
        "cpu",
    ]
    launched = run_cli_on_two_processes("train", "--name", "two", *settings, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "Training on 2 processes (cpu)" in launched.stderr
    assert launched.stdout.strip().splitlines() == [str(config.loras_dir.resolve() / "two")]  # one writer
    single = cli(*settings, "--name", "one", "--grad-accum", "2", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    two = load_file(config.loras_dir / "two" / "pytorch_lora_weights.safetensors")
    one = load_file(config.loras_dir / "one" / "pytorch_lora_weights.safetensors")
    assert two.keys() == one.keys()
    for key in one:  # Adam steps are ~lr (1e-2) per element; other data would differ by that much, not 1e-4
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-4)
    assert max(one[k].abs().max() for k in one if "lora_B" in k) > 1e-3  # B starts at zero: it did learn
