"""`python -m studio plot` in a child process, as a user runs it: the grid's path, then each cell's path and values."""

from pathlib import Path

import pytest
from PIL import Image

from studio.generation.infotext import parse_infotext, read_infotext
from studio.lora.plot import read_grid_cells
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # runs `python -m studio` in a child process


def test_plot_prints_the_grid_then_every_cell(tmp_path):
    args = ["plot", "--x", "seed=1, 2", "--y", "cfg=1-7 [2]", "--model", "demo-sd15", "--prompt", "ridges"]
    result = run_cli(*args, "--steps", "1", "--width", "64", "--height", "64", "--outputs-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    grid, *cells = result.stdout.strip().splitlines()
    assert Path(grid).parent.parent == tmp_path / "grids"
    assert [line.split("\t")[1] for line in cells] == ["Seed: 1 · CFG scale: 1", "Seed: 2 · CFG scale: 1",
                                                       "Seed: 1 · CFG scale: 7", "Seed: 2 · CFG scale: 7"]  # fmt: skip
    infos = [parse_infotext(read_infotext(line.split("\t")[0])) for line in cells]
    assert [(info["Seed"], info["CFG scale"]) for info in infos] == [("1", "1"), ("2", "1"), ("1", "7"), ("2", "7")]
    assert len(read_grid_cells(Path(grid))) == 4
    grid_info = parse_infotext(Image.open(grid).text["parameters"])
    assert (grid_info["X Type"], grid_info["X Values"], grid_info["Y Values"]) == ("Seed", "1, 2", "1, 7")
