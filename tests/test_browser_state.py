"""A real browser on the shared app, at 1280x720 and 1440x900: the state of the app is always in view.

The active LoRA blend is a chip on the Generate tab and follows a model switch (an SD1.5 blend is put aside on
SDXL and comes back); failures are told in the status line with no "Error" overlay over the fields to fix (a failed
push leaves the token box usable); adapter cards write `<lora:name:1>` into the prompt; lists refresh by
themselves; the data check lists every skipped file in a box that scrolls; the Evaluate table fits the page.
Screenshots go to artifacts/screenshots/state-*.png.
"""

from __future__ import annotations

import re
import time

import pytest
from PIL import Image

from studio.models.kinds import ModelKind
from tests.browser import SCREENSHOTS, browser_context, require_browser  # noqa: F401  (fixture)
from tests.builders import save_tiny_feature_model
from tests.helpers import add_lora

expect = require_browser().expect
VIEWPORTS = {"1280x720": {"width": 1280, "height": 720}, "1440x900": {"width": 1440, "height": 900}}
OVERLAY = "[data-testid='status-tracker'] .error"  # Gradio's "Error" label over a failed event's outputs


@pytest.fixture(scope="module")
def app(studio_running_app):
    add_lora(studio_running_app.loras_dir, "st-alps", seed=1)
    add_lora(studio_running_app.loras_dir, "st-xl", kind=ModelKind.SDXL, seed=2)
    return studio_running_app


@pytest.fixture(params=list(VIEWPORTS))
def page(request, browser_context, app):  # noqa: F811  (the fixture, not the import)
    """A fresh page (a new Gradio session: no blend yet) at each viewport size."""
    page = browser_context.new_page()
    page.set_viewport_size(VIEWPORTS[request.param])
    page.size = request.param
    page.goto(app.url)
    expect(page.locator("#blend-chip")).to_contain_text("LoRA blend (SD1.5): no LoRA")
    yield page
    page.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"state-{name}-{page.size}.png"))


def choose(page, box_selector: str, option) -> None:
    box = page.locator(f"{box_selector} input")
    box.click()
    page.get_by_role("option", name=option).first.click()


def visible_overlays(page) -> int:
    return page.evaluate(
        f"""() => [...document.querySelectorAll("{OVERLAY}")].filter(e => {{
            const wrap = e.closest('.wrap'); const r = e.getBoundingClientRect();
            return r.width > 0 && !(wrap && wrap.classList.contains('hide'));
        }}).length"""
    )


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and box["width"] > 0


def test_the_blend_chip_follows_a_model_switch_and_back(page):
    page.get_by_role("tab", name="LoRA").click()
    choose(page, "#lora-pick-0", re.compile(r"^st-alps$"))
    status = page.locator("#lora-status")
    expect(status).to_contain_text(re.compile(r"Blend on demo-sd15: st-alps 1 \("))

    page.get_by_role("tab", name="Generate").click()
    chip = page.locator("#blend-chip")
    expect(chip).to_contain_text("LoRA blend (SD1.5): st-alps 1")
    assert in_view(page, "#blend-chip")  # at the top of the tab: seen before pressing Generate

    choose(page, "#model-picker", re.compile(r"^demo-sdxl"))
    expect(chip).to_contain_text("LoRA blend (SDXL): no LoRA")
    expect(chip).to_contain_text("SD1.5 blend not applied: st-alps 1")
    shot(page, "chip-after-switch")
    page.get_by_role("tab", name="LoRA").click()
    expect(status).to_contain_text("The SD1.5 blend (st-alps 1) is not applied here")  # not the stale SD1.5 line
    expect(page.locator("#lora-pick-0 input")).to_have_value("")
    shot(page, "lora-status-after-switch")

    page.get_by_role("tab", name="Generate").click()
    choose(page, "#model-picker", re.compile(r"^demo-sd15"))
    expect(chip).to_contain_text("LoRA blend (SD1.5): st-alps 1")
    expect(chip).not_to_contain_text("not applied")
    page.get_by_role("tab", name="LoRA").click()
    expect(page.locator("#lora-pick-0 input")).to_have_value("st-alps")  # restored, with its strength
    expect(status).to_contain_text("LoRA blend on demo-sd15 (SD1.5): st-alps 1.")
    shot(page, "chip-restored")


def test_a_failed_push_is_told_in_the_status_line_and_the_token_box_stays_usable(page):
    page.get_by_role("tab", name="Share").click()
    page.locator("#share-adapter input").fill("st-alps")
    page.locator("#share-repo textarea, #share-repo input").first.fill("alice/st-alps")
    token = page.locator("#share-token input")
    token.fill("hf_first_try")
    page.locator("#push-button").click()
    # The test app is offline (HF_HUB_OFFLINE=1): the push cannot reach the Hub.
    expect(page.locator("#push-status")).to_contain_text("❌ Push failed:")
    assert visible_overlays(page) == 0
    token.click(timeout=5_000)  # nothing lies over the box: a click reaches it
    token.fill("hf_second_try")
    expect(token).to_have_value("hf_second_try")
    expect(token).to_be_editable()
    shot(page, "failed-push")


def test_failures_in_lora_train_and_evaluate_are_told_in_their_status_lines(page, tmp_path):
    page.get_by_role("tab", name="LoRA").click()
    box = page.locator("#lora-pick-0 input")  # typed by name: the picker offers only SD1.5 adapters
    box.fill("st-xl")
    box.press("Enter")
    expect(page.locator("#lora-status")).to_contain_text(
        "❌ Applying the blend failed: Cannot use LoRA 'st-xl': st-xl is an SDXL LoRA; the loaded model is SD1.5."
    )
    assert visible_overlays(page) == 0
    shot(page, "failed-blend")

    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Image folder").fill(str(tmp_path / "no-such-folder"))
    page.get_by_label("Adapter name (loras/<name>)").fill("st-never")
    page.locator("#train-button").click()
    expect(page.locator("#train-status")).to_contain_text("❌ Training failed:")
    expect(page.locator("#train-status")).to_contain_text("no-such-folder")
    assert visible_overlays(page) == 0
    expect(page.locator(".toast-body")).to_have_count(0)  # no toast over the page either: the status line says it
    page.get_by_label("Image folder").click(timeout=5_000)
    shot(page, "failed-training")

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.effect_noise((40, 40), 30 + 15 * i).convert("RGB").save(data / f"{i}.png")
    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_label("Data folder (your training images)").fill(str(data))
    page.get_by_label("Prompt", exact=True).locator("visible=true").fill("gray")
    start = time.monotonic()
    page.locator("#evaluate-button").click()
    # The default feature model is a Hub id that is not cached, and the app is offline: it fails in seconds.
    status = page.locator("#evaluate-status")
    expect(status).to_contain_text("❌ Evaluation failed:", timeout=20_000)
    expect(status).to_contain_text("is not in the local Hub cache")
    assert time.monotonic() - start < 20
    assert visible_overlays(page) == 0
    status.scroll_into_view_if_needed()
    shot(page, "failed-evaluation")


def test_clicking_an_adapter_card_adds_its_tag_to_the_prompt(page):
    page.get_by_role("tab", name="LoRA").click()
    cards = page.locator("#lora-cards")
    card = cards.locator("button", has_text="st-alps · SD1.5")
    expect(card).to_have_count(1)
    expect(cards).not_to_contain_text("st-xl")  # cards show what the model in the picker can use
    shot(page, "adapter-cards")
    card.click()
    expect(page.locator("#lora-status")).to_contain_text("Added <lora:st-alps:1> to the Generate prompt")
    page.get_by_role("tab", name="Generate").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(re.compile(r"<lora:st-alps:1>$"))


def test_a_saved_blend_shows_up_in_the_pickers_and_the_share_list_by_itself(page):
    name = f"st-saved-{page.size}"
    page.get_by_role("tab", name="LoRA").click()
    choose(page, "#lora-pick-0", re.compile(r"^st-alps$"))
    expect(page.locator("#lora-status")).to_contain_text("Blend on demo-sd15: st-alps 1")
    page.get_by_text("Save blend as new LoRA").click()
    page.locator("#lora-save-name input, #lora-save-name textarea").first.fill(name)
    page.locator("#lora-save").click()
    expect(page.locator("#lora-status")).to_contain_text(f"Saved {name}")
    expect(page.locator("#lora-cards")).to_contain_text(name)
    page.locator("#lora-pick-1 input").click()
    expect(page.get_by_role("option", name=name, exact=True)).to_have_count(1)
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="Share").click()
    page.locator("#share-adapter input").click()
    expect(page.get_by_role("option", name=name, exact=True)).to_have_count(1)  # no Rescan pressed


def test_the_data_check_lists_every_skipped_file_in_a_box_that_scrolls(page, tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    Image.new("RGB", (96, 96), "green").save(data / "ok.png")
    for i in range(25):
        (data / f"broken{i:02d}.png").write_bytes(b"not a png")
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Image folder").fill(str(data))
    page.get_by_label("Caption for images without metadata.jsonl or .txt").fill("green")
    page.get_by_role("button", name="Check data").click()
    report = page.locator("#train-data-report textarea")
    expect(report).to_have_value(re.compile("broken24.png"))
    text = report.input_value()
    assert all(f"broken{i:02d}.png" in text for i in range(25)) and "more" not in text
    heights = report.evaluate("e => [e.scrollHeight, e.clientHeight]")
    assert heights[0] > heights[1] and heights[1] < page.viewport_size["height"]  # folded: it scrolls
    shot(page, "data-check")


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory):
    return save_tiny_feature_model(tmp_path_factory.mktemp("state-clip") / "clip")


def test_the_evaluate_table_fits_the_page(page, tmp_path, feature_model):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.effect_noise((40, 40), 30 + 15 * i).convert("RGB").save(data / f"{i}.png")
    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_label("Candidates").fill("demo-sd15\ndemo-sd15 + st-alps:0.8")
    page.get_by_label("Data folder (your training images)").fill(str(data))
    page.get_by_label("Prompt", exact=True).locator("visible=true").fill("noise")
    page.get_by_label("Feature model (CLIP: Hub id or folder)").fill(str(feature_model))
    for label, value in (("Images per candidate", 2), ("Steps", 2), ("Width (0 = model's native)", 64)):
        box = page.get_by_label(f"number input for {label}").locator("visible=true")
        if box.count() == 0:
            box = page.get_by_label(label).locator("visible=true")
        box.fill(str(value))
        box.press("Enter")
    set_height = page.get_by_label("Height (0 = model's native)")
    set_height.fill("64")
    page.locator("#evaluate-button").click()
    expect(page.locator("#evaluate-status")).to_contain_text("Done.", timeout=180_000)
    table = page.locator("#evaluate-table")
    expect(table).to_contain_text("floor")
    sizes = table.evaluate(
        """e => { const t = e.querySelector('table'); const r = e.getBoundingClientRect();
                  return [t.scrollWidth, e.clientWidth, r.right, document.documentElement.clientWidth]; }"""
    )
    table_width, box_width, right, page_width = sizes
    assert table_width <= box_width + 2 and right <= page_width, sizes  # no sideways scrolling, inside the page
    table.scroll_into_view_if_needed()
    shot(page, "evaluate-table")
