"""Comparison grids: one seed, rows = no LoRA / adapters / blends, columns = strengths, saved with every infotext."""

import json

import numpy as np
import pytest
from PIL import Image

from studio.engine import LoadProgress, Studio
from studio.errors import InvalidRequestError
from studio.generation.infotext import parse_infotext
from studio.lora.compare import draw_grid, read_grid_cells
from studio.lora.requests import CompareRequest, CompareRow
from tests.helpers import add_lora, pixels


def test_grid_rows_columns_labels_and_infotexts(studio_config):
    add_lora(studio_config.loras_dir, "alps", seed=1)
    add_lora(studio_config.loras_dir, "sketch", seed=2, kohya=True)
    studio = Studio(studio_config)
    request = CompareRequest(
        model="demo-sd15",
        prompt="mountains",
        seed=11,
        steps=1,
        width=64,
        height=64,
        strengths=(0.0, 0.5, 1.0),
        rows=(
            CompareRow("no LoRA"),
            CompareRow("alps", (("alps", 1.0),)),
            CompareRow("alps+sketch", (("alps", 0.6), ("sketch", 0.6))),
        ),
    )
    events = list(studio.compare_stream(request))
    result = events[-1]
    assert any(isinstance(e, LoadProgress) for e in events[:-1])
    cells = [[pixels(image) for image in row] for row in result.cells]
    # The "no LoRA" row and every strength-0 cell are the base image, to the pixel.
    for image in cells[0][1:] + [cells[1][0], cells[2][0]]:
        assert np.array_equal(image, cells[0][0])
    # The effect grows with strength along a row.
    assert 0 < np.abs(cells[1][1] - cells[0][0]).mean() < np.abs(cells[1][2] - cells[0][0]).mean()
    assert result.grid.size == (160 + 3 * 64, 28 + 3 * 64)
    # Saved: one PNG with the first cell's infotext as A1111 "parameters" and every cell's infotext.
    saved = Image.open(result.path)
    assert result.path.parent.parent.name == "grids" and saved.size == result.grid.size
    assert saved.text["parameters"] == result.infotexts[0][0]
    texts = read_grid_cells(result.path)
    assert len(texts) == 9
    cell = parse_infotext(texts[(2, 1)])
    assert cell["Seed"] == "11"
    assert "<lora:alps:0.3> <lora:sketch:0.3>" in cell["Prompt"]
    assert cell["Lora hashes"].startswith("alps: ")
    assert json.loads(saved.text["studio_grid"])["strengths"] == [0.0, 0.5, 1.0]


def test_a_b_base_versus_lora(studio_config):
    add_lora(studio_config.loras_dir, "alps", seed=1)
    studio = Studio(studio_config)
    request = CompareRequest(
        model="demo-sd15",
        prompt="mountains",
        seed=3,
        steps=1,
        width=64,
        height=64,
        rows=(CompareRow("base"), CompareRow("alps", (("alps", 1.0),))),
        strengths=(1.0,),
    )
    result = list(studio.compare_stream(request))[-1]
    assert result.grid.size == (160 + 64, 28 + 2 * 64)
    assert np.abs(pixels(result.cells[0][0]) - pixels(result.cells[1][0])).mean() > 0


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rows=()), "at least one row"),
        (dict(strengths=()), "at least one strength"),
        (dict(strengths=(3.0,)), "out of range"),
        (dict(strengths=tuple(i / 10 for i in range(20)), rows=(CompareRow("a"),) * 4), "at most 64"),
        (dict(rows=(CompareRow("x", (("alps", 9.0),)),)), "out of range"),
    ],
)
def test_bad_requests_are_refused_before_any_work(change, message):
    fields = {"rows": (CompareRow("base"),), "strengths": (1.0,), **change}
    request = CompareRequest(model="demo-sd15", prompt="p", **fields)
    with pytest.raises(InvalidRequestError, match=message):
        request.validate()


def test_draw_grid_places_cells_under_their_labels():
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    grid = draw_grid([[red, blue]], ["row"], ["0", "1"])
    assert grid.getpixel((160 + 4, 28 + 4)) == (255, 0, 0)
    assert grid.getpixel((160 + 8 + 4, 28 + 4)) == (0, 0, 255)
