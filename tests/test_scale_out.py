"""Scale-out of export-dataset: a stopped export resumes, and 2 processes (torchrun + gloo, what `accelerate launch`
starts, on CPUs) write the same folder, byte for byte, as one process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from studio.errors import InvalidRequestError
from studio.evaluation.requests import Candidate, ExportRequest, SamplingSettings
from studio.evaluation.synthetic import export_dataset
from studio.models.manager import ModelManager
from tests.app_server import free_port
from tests.helpers import cli_command, cli_env, folders, run_cli

SMALL = SamplingSettings(steps=2, width=64, height=64)
PROMPTS = ("snowy peaks", "a glacier valley", "a ridge")


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def request(folder: Path, **changes) -> ExportRequest:
    values = dict(candidate=Candidate("demo-sd15"), prompts=PROMPTS, folder=folder, count=2, seed=10, sampling=SMALL)
    return ExportRequest(**{**values, **changes})


def test_a_stopped_export_resumes_to_the_folder_one_run_writes(studio_config, tmp_path):
    manager = ModelManager(studio_config)
    whole = export_dataset(manager, request(tmp_path / "whole"))
    assert not whole.interrupted and len(whole.images) == 6

    cancel = threading.Event()

    def stop_on_second_prompt(progress):
        if progress.message.startswith("Prompt 2/"):
            cancel.set()

    stopped = export_dataset(manager, request(tmp_path / "split"), on_progress=stop_on_second_prompt, cancel=cancel)
    assert stopped.interrupted and 2 <= len(stopped.images) < 6
    with pytest.raises(InvalidRequestError, match="not empty"):  # without resume, a used folder is refused
        export_dataset(manager, request(tmp_path / "split"))
    kept = {p.name: p.stat().st_mtime_ns for p in stopped.images}

    resumed = export_dataset(manager, request(tmp_path / "split", resume=True))
    assert len(resumed.images) == 6 - len(kept)  # only the missing images were drawn
    assert {p.name: p.stat().st_mtime_ns for p in stopped.images} == kept  # the kept ones were not rewritten
    assert files(tmp_path / "split") == files(tmp_path / "whole")


def test_resuming_with_other_settings_is_refused_and_writes_nothing(studio_config, tmp_path):
    manager = ModelManager(studio_config)
    export_dataset(manager, request(tmp_path / "data", prompts=PROMPTS[:1], count=1))
    before = files(tmp_path / "data")
    with pytest.raises(InvalidRequestError, match="00001-10.png was drawn from another prompt or seed"):
        export_dataset(manager, request(tmp_path / "data", prompts=("another prompt",), count=1, resume=True))
    assert files(tmp_path / "data") == before


@pytest.mark.slow  # torchrun starts 2 CLI processes, then one more for the single-process export
def test_two_processes_export_the_same_folder_as_one(tmp_path):
    settings = ["--model", "demo-sd15", "--count", "2", "--seed", "10", "--steps", "2", "--width", "64"]
    settings += ["--height", "64", "--device", "cpu", *folders(tmp_path)]
    for prompt in PROMPTS:
        settings += ["--prompt", prompt]
    torchrun = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *cli_command("export-dataset", *settings, "--out", tmp_path / "two")[1:],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
        env=cli_env({"OMP_NUM_THREADS": "1"}),
    )
    try:
        stdout, stderr = torchrun.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(torchrun.pid, signal.SIGKILL)  # the workers too, should the launcher hang or time out
    assert torchrun.returncode == 0, stderr[-3000:]
    assert stdout.splitlines() == ["6 images and metadata.jsonl written", str(tmp_path / "two")]  # one report

    single = run_cli("export-dataset", *settings, "--out", tmp_path / "one", env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    assert len(files(tmp_path / "one")) == 7  # 6 PNGs and metadata.jsonl
    assert files(tmp_path / "two") == files(tmp_path / "one")
