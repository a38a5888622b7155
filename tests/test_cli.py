"""`python -m studio` as a user runs it: a separate process, paths on stdout, one-line errors."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.generation import infotext
from tests.helpers import folders, run_cli

pytestmark = pytest.mark.slow  # every test runs `python -m studio` in a child process


def test_generate_writes_pngs_with_infotext_and_prints_their_paths(tmp_path, tiny_sd15_dir):
    out = tmp_path / "out"
    result = run_cli(
        "generate",
        "--model",
        tiny_sd15_dir,
        "--prompt",
        "satellite image of mountains",
        "--negative",
        "clouds",
        "--steps",
        2,
        "--seed",
        42,
        "--width",
        64,
        "--height",
        64,
        "--batch",
        2,
        "--scheduler",
        "Euler a",
        "--out",
        out,
        *folders(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert [p.name for p in paths] == ["00001-42.png", "00002-43.png"]
    info = infotext.parse_infotext(infotext.read_infotext(paths[1]))
    assert info["Prompt"] == "satellite image of mountains"
    assert info["Negative prompt"] == "clouds"
    assert (info["Seed"], info["Sampler"], info["Size"], info["Model"]) == ("43", "Euler a", "64x64", "tiny-sd15")
    assert Image.open(paths[0]).size == (64, 64)


def test_generate_on_demo_sdxl_defaults_to_the_outputs_folder(tmp_path):
    result = run_cli(
        "generate",
        "--model",
        "demo-sdxl",
        "--prompt",
        "x",
        "--steps",
        1,
        "--width",
        64,
        "--height",
        64,
        *folders(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    (path,) = result.stdout.splitlines()
    assert Path(path).is_relative_to(tmp_path / "outputs" / "txt2img")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "demo-sd15", "--prompt", "x", "--width", "100"], "width=100 must be a multiple of 8"),
        (["--model", "demo-sd15", "--prompt", "x", "--scheduler", "Euler b"], "Unknown scheduler 'Euler b'"),
        (["--model", "missing.safetensors", "--prompt", "x"], "'missing.safetensors' was not found"),
        (["--model", "demo-sd15", "--prompt", "x", "--lora", "ghost:abc"], "weight after ':' must be a number"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    result = run_cli("generate", *args, *folders(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_corrupt_checkpoint_is_named_in_the_error(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "broken.safetensors").write_bytes(os.urandom(64))
    result = run_cli("generate", "--model", "broken.safetensors", "--prompt", "x", *folders(tmp_path))
    assert result.returncode == 2 and "broken.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_models_lists_the_models_folder_with_kinds(tmp_path, tiny_sdxl_dir):
    import shutil

    shutil.copytree(tiny_sdxl_dir, tmp_path / "models" / "my-sdxl")
    result = run_cli("models", *folders(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "demo-sd15\tSD1.5\tdemo" in lines
    assert "my-sdxl\tSDXL\tfolder" in lines


def test_models_with_a_missing_models_folder_says_so(tmp_path):
    result = run_cli("models", "--models-dir", tmp_path / "missing")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: Models folder {tmp_path / 'missing'} does not exist; check --models-dir."


def test_data_check_lists_every_skipped_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (96, 96), "green").save(data / "ok.png")
    for i in range(8):
        (data / f"note{i}.md").write_text("x")
    args = ("--data", data, "--model", "demo-sd15", "--name", "x", "--caption", "c", "--check")
    result = run_cli("train", *args, *folders(tmp_path))
    assert result.returncode == 0, result.stderr
    assert all(f"note{i}.md" in result.stderr for i in range(8)) and "more" not in result.stderr


def test_generate_reads_prompt_weights_and_writes_the_prompt_as_typed(tmp_path):
    images = {}
    for prompt in ("(snowy:1.5) ridge", "snowy ridge"):
        out = tmp_path / prompt.replace(" ", "_").replace("(", "").replace(")", "").replace(":", "")
        args = ("--model", "demo-sd15", "--prompt", prompt, "--steps", 2, "--width", 64, "--height", 64)
        result = run_cli("generate", *args, "--seed", 5, "--out", out, *folders(tmp_path))
        assert result.returncode == 0, result.stderr
        (path,) = [Path(line) for line in result.stdout.split()]
        images[prompt] = np.asarray(Image.open(path), dtype=np.int16)
        assert infotext.parse_infotext(infotext.read_infotext(path))["Prompt"] == prompt
    assert np.abs(images["(snowy:1.5) ridge"] - images["snowy ridge"]).mean() > 0
