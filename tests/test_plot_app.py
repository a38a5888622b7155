"""The Compare tab's API on the launched app, driven by gradio_client: /plot with two axes, /ab, bad axes."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from studio.generation.infotext import parse_infotext
from studio.lora.plot import read_grid_cells
from tests.helpers import add_lora

FORM = dict(
    model="demo-sd15", prompt="ridges", negative_prompt="", steps=1, cfg=7.0, seed=21, width=64, height=64,
    scheduler="Euler", batch_size=1, batch_count=1, clip_skip=1,
)  # fmt: skip
NO_Z = dict(z_type="", z_values="")


@pytest.fixture(scope="module", autouse=True)
def plot_alps(studio_running_app):
    add_lora(studio_running_app.loras_dir, "plot-alps", seed=5)


def test_plot_with_two_axes_returns_the_grid_and_every_cells_infotext(client, studio_running_app):
    status, grid, _ab, cells, table = client.predict(
        x_type="lora:plot-alps", x_values="0, 1", y_type="steps", y_values="1-2", **NO_Z, adapters=[], **FORM,
        api_name="/plot",
    )  # fmt: skip
    assert status.startswith("Done: seed 21, 4 cells (4 drawn)"), status
    assert [row["label"] for row in table] == [
        "plot-alps 0 (no LoRA) · Steps: 1",
        "plot-alps 1 · Steps: 1",
        "plot-alps 0 (no LoRA) · Steps: 2",
        "plot-alps 1 · Steps: 2",
    ]
    infos = [parse_infotext(row["infotext"]) for row in table]
    assert [info["Steps"] for info in infos] == ["1", "1", "2", "2"]
    assert [("<lora:plot-alps:1>" in info["Prompt"]) for info in infos] == [False, True, False, True]
    assert {info["Seed"] for info in infos} == {"21"} and {info["Sampler"] for info in infos} == {"Euler"}
    assert all(Path(row["file"]).is_relative_to(studio_running_app.outputs_dir) for row in table)
    assert len(cells) == 4 and Image.open(cells[0]["image"]).size == (64, 64)
    assert read_grid_cells(Path(grid))[(1, 1, 0)] == table[3]["infotext"]
    assert parse_infotext(Image.open(grid).text["parameters"])["Y Values"] == "1, 2"


def test_ab_is_the_base_and_the_blend_behind_a_slider(client):
    # The axis boxes are ignored (positional: the shortcut's handler takes the tab's inputs as they come).
    status, grid, pair, cells, table = client.predict(*[""] * 6, ["plot-alps"], *FORM.values(), api_name="/ab")
    assert status.startswith("Done: seed 21, 2 cells"), status
    before, after = (Image.open(path) for path in pair)
    assert before.size == after.size == (64, 64)
    assert [("<lora:plot-alps:1>" in row["infotext"]) for row in table] == [False, True]


def test_a_bad_axis_is_a_clear_error_and_the_app_keeps_serving(client):
    with pytest.raises(AppError, match="'ten' is not a number or a range"):
        client.predict(
            x_type="steps", x_values="ten", y_type="", y_values="", **NO_Z, adapters=[], **FORM, api_name="/plot"
        )
    assert "demo-sd15" in str(client.predict(api_name="/list_models"))


def test_base_vs_fine_tuned_without_adapters_says_what_to_pick(client):
    # The one-click plot itself (two models x three strengths) is drawn in tests/test_plot_browser.py.
    with pytest.raises(AppError, match="pick an SD1.5 and an SDXL LoRA under 'Adapters'"):
        client.predict(*[""] * 6, [], *FORM.values(), api_name="/compare_finetuned")
