"""The LoRA tab of the launched app, driven by gradio_client: library, live blend used by Generate, save."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from studio.generation.infotext import parse_infotext
from studio.models.kinds import ModelKind
from tests.helpers import add_lora

NO_SLOTS = (None, None, None)
ONE = (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def app(studio_running_app, client):
    loras = studio_running_app.loras_dir
    add_lora(loras, "ui-alps", seed=1)
    add_lora(loras, "ui-xl", kind=ModelKind.SDXL, seed=2)
    (loras / "ui-broken.safetensors").write_bytes(b"\x00" * 4)
    return studio_running_app, client


def test_library_greys_out_what_the_model_cannot_use(app):
    _running, client = app
    table, _previews, *_picks = client.predict("demo-sd15", *NO_SLOTS, None, *ONE, 1.0, api_name="/lora_library")
    rows = {row.split("</td>")[0].rsplit(">", 1)[-1]: row for row in table.split("<tr")[2:]}
    assert "opacity" not in rows["ui-alps"] and "<td>ok</td>" in rows["ui-alps"]
    assert "opacity" in rows["ui-xl"] and "ui-xl is an SDXL LoRA; the loaded model is SD1.5." in rows["ui-xl"]
    assert "opacity" in rows["ui-broken"] and "Re-download" in rows["ui-broken"]
    # Switching to an SDXL model: the SD1.5 pick is cleared (and so is the blend Generate would use).
    table_xl, _previews, first_pick, *_ = client.predict(
        "demo-sdxl", "ui-alps", None, None, None, 1.0, *ONE, api_name="/lora_library"
    )
    assert "ui-alps is an SD1.5 LoRA; the loaded model is SDXL." in table_xl
    assert first_pick["value"] is None and ["ui-xl", "ui-xl"] in first_pick["choices"]


def test_applied_blend_is_used_by_generate_and_recorded(app):
    _running, client = app
    status = client.predict("demo-sd15", 1.0, False, "ui-alps", *NO_SLOTS, 0.5, *ONE, api_name="/apply_blend")
    assert status.startswith("Blend on demo-sd15: ui-alps 0.5 (")
    _status, _preview, gallery, infotext, _seed = client.predict(
        model="demo-sd15",
        prompt="mountains",
        negative_prompt="",
        seed=1,
        steps=2,
        cfg=7.0,
        width=64,
        height=64,
        scheduler="Euler",
        batch_size=1,
        batch_count=1,
        clip_skip=1,
        api_name="/generate",
    )
    parsed = parse_infotext(infotext)
    assert "<lora:ui-alps:0.5>" in parsed["Prompt"]
    assert parsed["Lora hashes"].startswith("ui-alps: ")


def test_wrong_base_is_refused_with_the_reason(app):
    _running, client = app
    with pytest.raises(AppError, match="ui-xl is an SDXL LoRA; the loaded model is SD1.5"):
        client.predict("demo-sd15", 1.0, False, "ui-xl", *NO_SLOTS, 1.0, *ONE, api_name="/apply_blend")


def test_save_blend(app):
    running, client = app
    status, _table, _previews = client.predict(
        "demo-sd15", "ui-mix", False, 1.0, "ui-alps", *NO_SLOTS, 0.7, *ONE, api_name="/save_blend"
    )
    assert status.startswith("Saved ui-mix")
    assert (running.loras_dir / "ui-mix" / "ui-mix.safetensors").is_file()
