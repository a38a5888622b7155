"""`python -m studio evaluate` and `export-dataset` as a user runs them: a separate process, offline."""

import json
from pathlib import Path

import pytest

from tests.helpers import folders, run_cli


@pytest.mark.slow  # `python -m studio` in a child process
def test_evaluate_compares_candidates_and_prints_a_ranked_table(tmp_path, clip_dir, data_dir):
    result = run_cli(
        "evaluate",
        "--model",
        "demo-sd15",
        "--compare",
        "demo-sdxl",
        "--data",
        data_dir,
        "--prompt",
        "noise",
        "--count",
        2,
        "--seed",
        5,
        "--steps",
        2,
        "--width",
        64,
        "--height",
        64,
        "--scheduler",
        "Euler",
        "--feature-model",
        clip_dir,
        "--resamples",
        50,
        *folders(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    *table, last = result.stdout.splitlines()
    folder = Path(last)
    assert folder.is_relative_to(tmp_path / "outputs" / "evaluations")
    assert table[0].startswith("| rank | candidate | CMMD | KID (CLIP features)")
    ranked = [line.split(" | ")[1] for line in table[2:]]
    assert sorted(ranked[:2]) == ["demo-sd15", "demo-sdxl"] and ranked[2].startswith("floor")
    saved = json.loads((folder / "results.json").read_text())
    assert saved["seeds"] == [5, 6] and len(saved["candidates"]) == 2
    assert sorted(p.name for p in folder.glob("*/nearest.png")) == ["nearest.png", "nearest.png"]


@pytest.mark.slow  # `python -m studio` in a child process
@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/folder"], "/no/such/folder does not exist"),
    ],
)
def test_evaluate_user_errors_are_one_line(tmp_path, data_dir, args, message):
    base = {"--data": data_dir, "--prompt": "x"}
    for flag, value in zip(args[::2], args[1::2]):
        base.pop(flag, None)
    defaults = [item for flag, value in base.items() for item in (flag, value)]
    result = run_cli("evaluate", "--model", "demo-sd15", *defaults, *args, *folders(tmp_path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_strengths_and_compare_become_candidates_with_one_set_of_seeds():
    from studio.cli import build_parser
    from studio.cli.evaluate import candidates_from_args
    from studio.errors import InvalidRequestError
    from studio.evaluation.requests import Candidate

    def candidates(*args):
        return candidates_from_args(build_parser().parse_args(["evaluate", "--data", ".", "--prompt", "p", *args]))

    assert candidates("--model", "m", "--lora", "style:0.7", "--strengths", "0,0.5,1", "--compare", "base") == (
        Candidate("m", (("style", 0.0),)),
        Candidate("m", (("style", 0.5),)),
        Candidate("m", (("style", 1.0),)),
        Candidate("base"),
    )
    assert candidates("--model", "m", "--lora", "a:1", "--lora", "b:0.5") == (Candidate("m", (("a", 1.0), ("b", 0.5))),)
    with pytest.raises(InvalidRequestError, match="--strengths needs exactly one --lora"):
        candidates("--model", "m", "--lora", "a:1", "--lora", "b:1", "--strengths", "0,1")


@pytest.mark.slow  # `python -m studio` in a child process
def test_export_dataset_writes_an_imagefolder_and_prints_it(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a glacier\n\nsnowy peaks\n")
    out = tmp_path / "synthetic"
    result = run_cli(
        "export-dataset",
        "--model",
        "demo-sd15",
        "--prompt",
        "a ridge",
        "--prompts-file",
        prompts,
        "--count",
        1,
        "--seed",
        3,
        "--steps",
        1,
        "--width",
        64,
        "--height",
        64,
        "--out",
        out,
        *folders(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["3 images and metadata.jsonl written", str(out)]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["text"], r["seed"]) for r in rows] == [("a ridge", 3), ("a glacier", 4), ("snowy peaks", 5)]


@pytest.mark.slow  # `python -m studio` in a child process
def test_feature_model_downloads_once_from_the_hub_then_works_offline(tmp_path, clip_dir, data_dir):
    from tests.hub_server import HubServer

    files = {path.name: path.read_bytes() for path in clip_dir.iterdir()}
    files["pytorch_model.bin"] = b"a pickle copy of the weights: never downloaded"
    args = [
        "evaluate",
        "--model",
        "demo-sd15",
        "--data",
        data_dir,
        "--prompt",
        "noise",
        "--count",
        2,
        "--steps",
        1,
        "--width",
        64,
        "--height",
        64,
        "--feature-model",
        "clip-test/tiny-clip",
        "--resamples",
        20,
        *folders(tmp_path),
    ]

    def run(**env):
        return run_cli(*args, env={"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": None, **env})

    with HubServer({}) as hub:
        hub.add_repo("clip-test/tiny-clip", "clip-test", files)
        online = run(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        fetched = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert online.returncode == 0, online.stderr
    assert "Downloading clip-test/tiny-clip" in online.stderr  # download progress reaches the progress bar
    # Only the configs and the safetensors weights (HEAD, then GET), never the pickle.
    assert sorted({path.rsplit("/", 1)[1] for path in fetched}) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    # The server is gone: the second run reads the Hub cache only.
    offline = run(HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.splitlines()[2].split(" | ")[1] == "demo-sd15"
