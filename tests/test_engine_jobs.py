"""The engine's jobs: each Stop button stops its own slot, and a closed stream cancels its work.

In-process, with the demo pipelines and huggingface_hub's real client against the local Hub-compatible
server (tests/hub_server.py). Hub calls are held at a `Gate` (it stands in for the server's lock), so a test
knows an import or a push is in flight and decides when it may go on: no sleeps.
"""

import subprocess
import sys
import threading
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from studio.config import StudioConfig
from studio.engine import Finished, LoadProgress, Studio
from studio.errors import CancelledError
from studio.evaluation.requests import Candidate, EvaluationRequest, ExportRequest, SamplingSettings
from studio.evaluation.results import ExportResult
from studio.generation.request import GenerationRequest, StepInfo
from studio.hub.adapters import PushRequest
from studio.lora.plot_axes import parse_axis
from studio.lora.requests import PlotRequest
from tests.builders import save_tiny_feature_model
from tests.helpers import write_trained_adapter
from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 120  # seconds; only reached when something is broken
LONG = dict(model="demo-sd15", prompt="mountains", steps=150, width=64, height=64, scheduler="Euler", seed=1)

ALICE = "hf_alice_T0k3n_4c1d2f9e8b7a"


@pytest.fixture
def loras(tmp_path):
    """loras/alps as the trainer writes it."""
    return write_trained_adapter(tmp_path)


class Gate:
    """Replaces the Hub server's lock: every request waits here until `opened`; `arrived` tells that one came."""

    def __init__(self):
        self.arrived, self.opened, self._lock = threading.Event(), threading.Event(), threading.Lock()

    def __enter__(self):
        self.arrived.set()
        assert self.opened.wait(WAIT), "the gate was never opened"
        self._lock.acquire()

    def __exit__(self, *exc):
        self._lock.release()


@pytest.fixture
def config(tmp_path):
    root = tmp_path / "studio"
    return StudioConfig(
        models_dir=root / "models", loras_dir=root / "loras", outputs_dir=root / "outputs", device="cpu"
    )


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A Hub server whose requests wait at `hub.gate`; huggingface_hub online (the session runs offline) and
    pointed at it through HF_ENDPOINT, without any token of the machine's user."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer({ALICE: "alice"}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.gate = server.lock = Gate()
        weights = tmp_path / "style.safetensors"
        save_file({"lora_unet_down.alpha": torch.tensor(4.0)}, weights)
        server.add_repo("alice/style", "alice", {"style.safetensors": weights.read_bytes(), "README.md": b"# card\n"})
        yield server
        server.gate.opened.set()  # let any request still waiting finish, so the server can shut down


def drain(stream, into: list, done: threading.Event) -> threading.Thread:
    """Read a stream to its end in a thread (as Gradio does); its error, if any, is the last item."""

    def read():
        try:
            into.extend(stream)
        except Exception as error:
            into.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_generate_stop_ends_the_generation_and_leaves_an_import_alone(config, hub):
    studio = Studio(config)
    generation = studio.generate_stream(GenerationRequest(**LONG, batch_count=100))
    first = next(generation)
    while not isinstance(first, StepInfo):  # the model is loaded and the sampler runs
        first = next(generation)

    imported, import_done = [], threading.Event()
    drain(studio.import_lora_stream("alice/style"), imported, import_done)
    assert hub.gate.arrived.wait(WAIT)  # the import's first request is at the server, held there
    (import_job,) = studio.jobs.running("import")
    (generate_job,) = studio.jobs.running("generate")

    studio.stop()  # Generate's Stop button
    finished = [event for event in generation if isinstance(event, Finished)]
    assert finished[0].result.interrupted and len(finished[0].paths) < 100
    assert generate_job.done and studio.jobs.running("generate") == []
    assert not import_job.cancel.is_set() and not import_job.done  # still waiting for the server, untouched

    hub.gate.opened.set()
    assert import_done.wait(WAIT)
    assert imported[-1] == config.loras_dir.resolve() / "style", imported[-1]
    assert (imported[-1] / "style.safetensors").is_file()
    assert all(isinstance(event, LoadProgress) for event in imported[:-1])


def close_after_first_event(studio: Studio, slot: str, stream):
    """Read one event, close the stream as a closed page does, and return the job once its work has ended."""
    next(stream)
    (job,) = studio.jobs.running(slot)
    assert not job.cancel.is_set()
    stream.close()
    assert job.cancel.is_set()
    assert job.wait(WAIT)
    assert studio.jobs.running(slot) == []
    return job


def test_closing_a_generation_stream_stops_the_generation(config):
    studio = Studio(config)
    stream = studio.generate_stream(GenerationRequest(**LONG, batch_count=100))
    job = close_after_first_event(studio, "generate", stream)
    assert job.result.result.interrupted


def test_closing_an_export_stream_stops_the_export(config):
    studio = Studio(config)
    request = ExportRequest(
        candidate=Candidate("demo-sd15"),
        prompts=("mountains", "glacier"),
        folder=config.outputs_dir / "datasets" / "closed",
        count=50,
        sampling=SamplingSettings(steps=150, width=64, height=64, scheduler="Euler"),
    )
    job = close_after_first_event(studio, "export", studio.export_dataset_stream(request))
    assert isinstance(job.result, ExportResult) and job.result.interrupted and len(job.result.images) < 100


def test_closing_an_evaluation_stream_stops_the_evaluation(config, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, color in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (64, 64), color).save(data / f"{i}.png")
    request = EvaluationRequest(
        candidates=(Candidate("demo-sd15"),),
        data=data,
        prompt="mountains",
        count=50,
        sampling=SamplingSettings(steps=150, width=64, height=64, scheduler="Euler"),
        feature_model=str(save_tiny_feature_model(tmp_path / "clip")),
    )
    studio = Studio(config)
    job = close_after_first_event(studio, "evaluate", studio.evaluate_stream(request))
    assert job.error is None and job.result.interrupted


def test_closing_a_plot_stream_stops_the_grid(config):
    base = GenerationRequest(model="demo-sd15", prompt="p", steps=150, width=64, height=64)
    request = PlotRequest(base, parse_axis("seed=1, 2"))
    studio = Studio(config)
    job = close_after_first_event(studio, "plot", studio.plot_stream(request))
    assert isinstance(job.error, CancelledError)
    assert not list(config.outputs_dir.glob("grids/*/*.png"))


def test_closing_an_import_stream_cancels_the_import(config, hub):
    studio = Studio(config)
    stream = studio.import_lora_stream("alice/style")
    assert isinstance(next(stream), LoadProgress)  # "Importing alice/style", before any request
    (job,) = studio.jobs.running("import")
    stream.close()
    assert job.cancel.is_set()
    hub.gate.opened.set()
    assert job.wait(WAIT)
    assert isinstance(job.error, CancelledError), job.error
    assert list(config.loras_dir.iterdir()) == []  # nothing landed, no staging folder left


def test_closing_a_push_stream_cancels_the_upload(config, hub, loras):
    studio = Studio(config)
    request = PushRequest(name="alps", repo_id="alice/alps", loras_dir=loras, token=ALICE, endpoint=hub.url)
    stream = studio.push_stream(request)
    assert isinstance(next(stream), LoadProgress)  # "Checking the token", then held at the server
    (job,) = studio.jobs.running("push")
    stream.close()
    assert job.cancel.is_set()
    hub.gate.opened.set()
    assert job.wait(WAIT)
    assert isinstance(job.error, CancelledError), job.error
    assert hub.repos.get("alice/alps") is None or hub.repos["alice/alps"].files == {}  # nothing committed
    assert hub.lfs_objects == {}


def test_each_stop_reaches_only_its_own_slot(config):
    studio = Studio(config)
    stream = studio.generate_stream(GenerationRequest(**LONG, batch_count=100))
    next(stream)
    (job,) = studio.jobs.running("generate")
    for slot in ("evaluate", "export", "plot", "import", "push", "training"):
        studio.stop(slot)
    assert not job.cancel.is_set()
    studio.stop("generate")
    assert job.wait(WAIT) and job.result.result.interrupted
    stream.close()
    with pytest.raises(ValueError, match="Unknown job slot"):
        studio.stop("everything")


def test_the_ui_and_the_engine_import_neither_torch_nor_diffusers():
    code = (
        "import sys, studio.engine, studio.ui.app\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
