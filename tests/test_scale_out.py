"""Scale-out of export-dataset and evaluate: a stopped run resumes, and 2 processes (torchrun + gloo, what
`accelerate launch` starts, on CPUs) write the same images, byte for byte, and the same scores as one process."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from studio.errors import InvalidRequestError
from studio.evaluation.requests import Candidate, EvaluationRequest, ExportRequest, SamplingSettings
from studio.evaluation.runner import evaluate
from studio.evaluation.synthetic import export_dataset
from studio.models.manager import ModelManager
from tests.helpers import folders, run_cli, run_cli_on_two_processes

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
    two = run_cli_on_two_processes("export-dataset", *settings, "--out", tmp_path / "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.splitlines() == ["6 images and metadata.jsonl written", str(tmp_path / "two")]  # one report

    single = run_cli("export-dataset", *settings, "--out", tmp_path / "one", env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    assert len(files(tmp_path / "one")) == 7  # 6 PNGs and metadata.jsonl
    assert files(tmp_path / "two") == files(tmp_path / "one")


def images(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/0*.png"))}


def test_an_evaluation_in_a_given_folder_resumes_with_the_same_scores(studio_config, clip_dir, data_dir, tmp_path):
    manager = ModelManager(studio_config)
    request = EvaluationRequest(
        candidates=(Candidate("demo-sd15"), Candidate("demo-sdxl")),
        data=data_dir,
        prompt="noise",
        count=3,
        seed=5,
        sampling=SMALL,
        feature_model=str(clip_dir),
        resamples=20,
    )
    first = evaluate(manager, request, outputs_dir=studio_config.outputs_dir, folder=tmp_path / "run")
    drawn = images(tmp_path / "run")
    assert len(drawn) == 6
    (tmp_path / "run" / "02-demo-sdxl" / "00001-6.png").unlink()  # as if stopped before the last images
    (tmp_path / "run" / "02-demo-sdxl" / "00002-7.png").unlink()
    again = evaluate(manager, request, outputs_dir=studio_config.outputs_dir, folder=tmp_path / "run")
    assert images(tmp_path / "run") == drawn
    assert again.table() == first.table()


@pytest.mark.slow  # torchrun starts 2 CLI processes, then one more for the single-process evaluation
def test_two_processes_evaluate_the_same_images_and_scores_as_one(tmp_path, clip_dir, data_dir):
    settings = ["evaluate", "--model", "demo-sd15", "--compare", "demo-sdxl", "--data", data_dir, "--prompt", "noise"]
    settings += ["--count", "3", "--seed", "5", "--steps", "2", "--width", "64", "--height", "64"]
    settings += ["--feature-model", clip_dir, "--resamples", "20", "--device", "cpu", *folders(tmp_path)]
    two = run_cli_on_two_processes(*settings, cwd=tmp_path)  # no --out: the first process makes the run folder for both
    assert two.returncode == 0, two.stderr[-3000:]
    *two_table, two_folder = two.stdout.splitlines()  # one report
    one = run_cli(*settings, "--out", tmp_path / "one", env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    *one_table, one_folder = one.stdout.splitlines()
    assert Path(two_folder).parent == tmp_path / "outputs" / "evaluations" and one_folder == str(tmp_path / "one")
    assert len(images(Path(one_folder))) == 6
    assert images(Path(two_folder)) == images(Path(one_folder))
    assert two_table == one_table
