"""The CLI names a bad argument before it imports torch or diffusers (seconds), so a typo is answered at once.

Each command runs in a child process whose PYTHONPATH starts with a folder of fake `torch` and `diffusers`
packages: importing one leaves a mark and raises ImportError("imported torch"). A test fails if either was
imported, even by code that catches the ImportError.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FAKE_PACKAGE = """import os, pathlib
pathlib.Path(os.environ["STUDIO_TEST_IMPORTS"], {name!r}).touch()
raise ImportError("imported {name}")
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-fast-errors")
    for name in ("torch", "diffusers"):
        (root / "fakes" / name).mkdir(parents=True)
        (root / "fakes" / name / "__init__.py").write_text(FAKE_PACKAGE.format(name=name))
    (root / "empty").mkdir()
    (root / "photos").mkdir()
    Image.new("RGB", (64, 64), "gray").save(root / "photos" / "a.png")
    (root / "photos" / "a.txt").write_text("a gray square")
    (root / "loras" / "taken").mkdir(parents=True)
    return root


def run_cli(folders: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    marks = tmp_path / "imported"
    marks.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folders / "fakes"), str(ROOT)]))
    env["STUDIO_TEST_IMPORTS"] = str(marks)
    result = subprocess.run(
        [sys.executable, "-m", "studio", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert sorted(p.name for p in marks.iterdir()) == [], result.stderr  # neither torch nor diffusers was imported
    return result


TRAIN = ["train", "--model", "demo-sd15", "--name", "x"]
GENERATE = ["generate", "--model", "demo-sd15", "--prompt", "mountains"]
PLOT = ["plot", "--model", "demo-sd15", "--prompt", "mountains"]
CASES = {
    "train-missing-folder": (TRAIN + ["--data", "{root}/no/such/folder"], "{root}/no/such/folder"),
    "train-empty-folder": (TRAIN + ["--data", "{root}/empty"], "{root}/empty has no"),
    "train-bad-rank": (TRAIN + ["--data", "{root}/photos", "--rank", "0"], "rank=0"),
    "train-bad-name": (["train", "--model", "demo-sd15", "--name", "../up", "--data", "{root}/photos"], "'../up'"),
    "train-taken-name": (
        ["train", "--model", "demo-sd15", "--name", "taken", "--data", "{root}/photos", "--loras-dir", "{root}/loras"],
        "'taken' already exists",
    ),
    "train-bad-preset": (TRAIN + ["--data", "{root}/photos", "--preset", "huge"], "'huge'"),
    "train-bad-model": (["train", "--model", "nope.safetensors", "--name", "x", "--data", "{root}/photos"], "nope"),
    "generate-bad-size": (GENERATE + ["--width", "100"], "width=100"),
    "generate-bad-scheduler": (GENERATE + ["--scheduler", "Nope"], "'Nope'"),
    "generate-bad-steps": (GENERATE + ["--steps", "0"], "steps=0"),
    "evaluate-missing-data": (
        ["evaluate", "--model", "demo-sd15", "--prompt", "p", "--data", "{root}/no/such/folder"],
        "{root}/no/such/folder",
    ),
    "export-no-prompt": (["export-dataset", "--model", "demo-sd15", "--out", "{root}/out"], "prompt"),
    "push-missing-adapter": (["push", "nope", "--repo", "alice/nope", "--loras-dir", "{root}/loras"], "'nope'"),
    "plot-bad-axis-type": (PLOT + ["--x", "strenth=0,1"], "Did you mean strength?"),
    "plot-bad-range": (PLOT + ["--x", "steps=1-3 (+x)"], "'1-3 (+x)' is not a number or a range"),
    "plot-unknown-adapter": (PLOT + ["--x", "lora:nope=0,1", "--loras-dir", "{root}/loras"], "No LoRA named 'nope'"),
    "plot-unknown-model": (PLOT + ["--x", "model=demo-sd15,nope-xl"], "'nope-xl' was not found"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_argument_is_one_line_and_exit_code_2_without_torch(folders, tmp_path, case):
    args, expected = CASES[case]
    result = run_cli(folders, tmp_path, *(arg.format(root=folders) for arg in args))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected.format(root=folders) in lines[0]


def test_the_check_mode_of_train_needs_no_torch_either_with_an_explicit_preset(folders, tmp_path):
    """--check with a named preset reports the data set and the VRAM estimate without torch (auto asks CUDA)."""
    args = TRAIN + ["--data", str(folders / "photos"), "--preset", "sd15-8gb", "--check"]
    result = run_cli(folders, tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "Preset sd15-8gb" in result.stderr and "Estimated peak VRAM" in result.stderr
