"""X/Y/Z plots on tiny real SD1.5 and SDXL pipelines: one seed, typed strengths, native sizes, saved cells and grid."""

import json

import numpy as np
from PIL import Image, ImageChops

from studio.engine import LoadProgress, Studio
from studio.generation.infotext import parse_infotext, read_infotext
from studio.generation.request import GenerationRequest
from studio.lora.plot import draw_grid, read_grid_cells
from studio.lora.plot_axes import parse_axis
from studio.lora.requests import PlotRequest
from studio.models.kinds import ModelKind
from tests.helpers import add_lora, pixels


def test_sd15_and_sdxl_against_their_loras_in_one_plot(studio_config):
    add_lora(studio_config.loras_dir, "alps", seed=1)
    add_lora(studio_config.loras_dir, "alps-xl", kind=ModelKind.SDXL, seed=2)
    studio = Studio(studio_config)
    base = GenerationRequest(
        model="demo-sd15", prompt="mountains", steps=1, width=64, height=64, seed=11,
        loras=(("alps", 0.7), ("alps-xl", 0.7)),  # the blend's slider weights: an axis value replaces them
    )  # fmt: skip
    request = PlotRequest(base, parse_axis("strength=0, 0.5"), parse_axis("model=demo-sd15, demo-sdxl"))
    events = list(studio.plot_stream(request))
    result = events[-1]
    assert any(isinstance(e, LoadProgress) and "demo-sdxl" in e.message for e in events[:-1])
    assert result.rendered == 4
    assert [image.size for image in result.images] == [(64, 64), (64, 64), (128, 128), (128, 128)]
    cells = [parse_infotext(text) for text in result.infotexts]
    assert {cell["Seed"] for cell in cells} == {"11"}
    assert [cell["Prompt"] for cell in cells] == [
        "mountains",
        "mountains <lora:alps:0.5>",
        "mountains",
        "mountains <lora:alps-xl:0.5>",
    ]
    assert [cell["Model"] for cell in cells] == ["demo-sd15", "demo-sd15", "demo-sdxl", "demo-sdxl"]
    assert np.abs(pixels(result.images[0]) - pixels(result.images[1])).mean() > 0
    assert result.labels[3] == "strength 0.5 · demo-sdxl (128x128)"
    # Cells are scaled to one size (the smaller) in the grid; every cell is saved at its own size with its infotext.
    assert result.grid.width > 2 * 64 and result.grid.height > 2 * 64
    for path, text, image in zip(result.cell_paths, result.infotexts, result.images):
        assert read_infotext(path) == text and Image.open(path).size == image.size
    saved = Image.open(result.path)
    assert result.path.parent.parent.name == "grids" and saved.size == result.grid.size
    grid_params = parse_infotext(saved.text["parameters"])
    assert grid_params["X Type"] == "LoRA strength (every adapter)" and grid_params["X Values"] == "0, 0.5"
    assert grid_params["Y Type"] == "Model" and grid_params["Y Values"] == "demo-sd15, demo-sdxl"
    assert read_grid_cells(result.path) == {(0, 0, 0): result.infotexts[0], (1, 0, 0): result.infotexts[1],
                                            (0, 1, 0): result.infotexts[2], (1, 1, 0): result.infotexts[3]}  # fmt: skip
    summary = json.loads(saved.text["studio_grid"])
    assert summary["shape"] == [2, 2, 1] and summary["seed"] == 11


def test_seed_axis_and_identical_cells_drawn_once(studio_config):
    studio = Studio(studio_config)
    base = GenerationRequest(model="demo-sd15", prompt="ridges", steps=1, width=64, height=64)
    # No blend: "blend on" is the base image, so two of the four cells are repeats and are not drawn again.
    request = PlotRequest(base, parse_axis("seed=3, 4"), parse_axis("blend=off, on"))
    result = list(studio.plot_stream(request))[-1]
    assert result.rendered == 2
    assert [parse_infotext(t)["Seed"] for t in result.infotexts] == ["3", "4", "3", "4"]
    assert result.cell_paths[0] == result.cell_paths[2]
    assert np.abs(pixels(result.images[0]) - pixels(result.images[1])).mean() > 0


def _text_rows(image: Image.Image, box) -> int:
    """Height in pixels of the dark (text) pixels inside box."""
    band = np.asarray(image.crop(box).convert("L")) < 128
    rows = np.flatnonzero(band.any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def test_label_text_is_sized_to_the_cells_and_long_labels_wrap():
    ratios = []
    for side in (128, 512, 1024):
        cells = [Image.new("RGB", (side, side), "white")] * 2
        grid = draw_grid((2, 1, 1), cells, [["Steps: 20", "Steps: 30"], [""], [""]])
        top = grid.height - side
        ratios.append(_text_rows(grid, (0, 0, side, top)) / side)
    assert all(0.03 < r < 0.12 for r in ratios), ratios  # legible when the grid is shown shrunk to a screen
    assert max(ratios) / min(ratios) < 1.6, ratios
    side = 512
    long = "a very long prompt replacement that cannot fit on one line of a cell"
    grid = draw_grid((2, 1, 1), [Image.new("RGB", (side, side), "white")] * 2, [[long, "short"], [""], [""]])
    top = grid.height - side
    line = _text_rows(draw_grid((1, 1, 1), [Image.new("RGB", (side, side))], [["short"], [""], [""]]), (0, 0, side, 40))
    assert _text_rows(grid, (0, 0, side, top)) > 2 * line  # wrapped onto several lines
    spill = ImageChops.difference(grid.crop((side, 0, 2 * side, top)), Image.new("RGB", (side, top), "white"))
    right = np.asarray(spill.convert("L"))[:, : side // 2 - 60]  # the "short" label sits in the middle of its cell
    assert not right.any(), "the long label ran into the next column"
