"""The Evaluate tab's APIs on the launched app, driven by gradio_client: /evaluate and /export_dataset."""

import json
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from tests.builders import save_tiny_feature_model

SAMPLING = dict(negative="", steps=2, cfg=7.0, width=64, height=64, scheduler="Euler")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-ui")
    data = root / "data"
    data.mkdir()
    for i in range(5):
        Image.effect_noise((40, 40), 30 + 15 * i).convert("RGB").save(data / f"{i}.png")
    return {"data": str(data), "feature_model": str(save_tiny_feature_model(root / "clip"))}


def test_evaluate_returns_a_ranked_table_chart_and_grids(client, inputs, studio_running_app):
    status, _preview, table, chart, grids, folder = client.predict(
        candidates="demo-sd15\ndemo-sdxl",
        prompt="noise",
        count=2,
        seed=3,
        kid=True,
        api_name="/evaluate",
        **inputs,
        **SAMPLING,
    )
    assert status.startswith("Done.") and "5 data images, seeds 3-4" in status
    rows = table["data"]
    assert table["headers"][:3] == ["rank", "candidate", "CMMD"]
    assert sorted(row[1] for row in rows[:2]) == ["demo-sd15", "demo-sdxl"] and rows[2][1].startswith("floor")
    bars = chart["data"]  # ranked like the table: best first, the floor last
    assert [bar[0] for bar in bars] == [f"1. {rows[0][1]}", f"2. {rows[1][1]}", "floor: data vs itself"]
    assert bars[0][1] <= bars[1][1] and f"{bars[0][1]:.3f}" == rows[0][2].split(" ")[0]
    assert len(grids) == 3  # the chart with intervals, then one nearest-neighbour grid per candidate
    run = Path(folder)
    assert run.is_relative_to(studio_running_app.outputs_dir / "evaluations")
    assert json.loads((run / "results.json").read_text())["seeds"] == [3, 4]


def test_evaluate_user_errors_show_as_messages(client, inputs):
    with pytest.raises(AppError, match="does not exist"):
        client.predict(
            candidates="demo-sd15",
            data="/no/such/data",
            prompt="x",
            count=2,
            seed=0,
            kid=True,
            feature_model=inputs["feature_model"],
            api_name="/evaluate",
            **SAMPLING,
        )
    with pytest.raises(AppError, match="not a number"):
        client.predict(
            candidates="demo-sd15 + style:strong",
            prompt="x",
            count=2,
            seed=0,
            kid=False,
            api_name="/evaluate",
            **inputs,
            **SAMPLING,
        )


def test_export_dataset_writes_into_outputs_datasets_only(client, studio_running_app):
    status, gallery, folder = client.predict(
        model="demo-sd15",
        prompts="a glacier\nsnowy peaks",
        per_prompt=1,
        seed=9,
        name="ui-synthetic",
        api_name="/export_dataset",
        **SAMPLING,
    )
    assert status.startswith("Done:") and len(gallery) == 2
    assert Path(folder) == (studio_running_app.outputs_dir / "datasets" / "ui-synthetic").resolve()
    rows = [json.loads(line) for line in (Path(folder) / "metadata.jsonl").read_text().splitlines()]
    assert [(row["text"], row["seed"]) for row in rows] == [("a glacier", 9), ("snowy peaks", 10)]
    with pytest.raises(AppError, match="plain folder name"):
        client.predict(
            model="demo-sd15",
            prompts="x",
            per_prompt=1,
            seed=0,
            name="../../escape",
            api_name="/export_dataset",
            **SAMPLING,
        )
