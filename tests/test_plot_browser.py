"""A real browser (Debian's Chromium, Playwright) on the Compare tab: the one-click SD1.5 + SDXL "base vs fine-tuned"
plot with the Generate tab's settings, seen at 1280x720 and 1440x900, a cell sent back to Generate, then A/B."""

from __future__ import annotations

import re

import pytest

from studio.lora.plot import font_size
from studio.models.kinds import ModelKind
from tests.browser import SCREENSHOTS, browser_context, fill_form, require_browser  # noqa: F401  (browser_context: fixture)
from tests.helpers import add_lora

expect = require_browser().expect
VIEWPORTS = [(1280, 720), (1440, 900)]


@pytest.fixture(scope="module")
def page(browser_context, studio_running_app):  # noqa: F811  (the fixture, not the import)
    add_lora(studio_running_app.loras_dir, "br-plot-alps", seed=6)
    add_lora(studio_running_app.loras_dir, "br-plot-xl", kind=ModelKind.SDXL, seed=7)
    page = browser_context.new_page()  # one page (one Gradio session): the tests build on each other
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(studio_running_app.url)
    yield page
    page.close()


def _pick(page, name: str) -> None:
    box = page.locator("#plot-adapters input")
    box.click()
    box.fill(name)
    page.get_by_role("option", name=re.compile(re.escape(name))).first.click()


def test_one_click_plots_sd15_and_sdxl_against_their_adapters(page):
    fill_form(page, prompt="ridges", seed=7, steps=1, width=64, height=64)  # on the Generate tab
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "br-plot-alps")
    _pick(page, "br-plot-xl")
    page.locator("#plot-finetune").click()
    status = page.locator("#plot-status")
    expect(status).to_contain_text("Done: seed 7, 6 cells", timeout=400_000)
    expect(page.locator("#plot-X-values textarea, #plot-X-values input")).to_have_value("0, 0.5, 1")
    expect(page.locator("#plot-Y-values textarea, #plot-Y-values input")).to_have_value("demo-sd15, demo-sdxl")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    grid = page.locator("#plot-grid img")
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        grid.scroll_into_view_if_needed()
        expect(grid).to_be_visible()
        natural = grid.evaluate("img => img.naturalWidth")
        shown = grid.bounding_box()
        assert shown["x"] >= 0 and shown["x"] + shown["width"] <= width, shown  # the whole grid is on screen
        # The label text as the user sees it: the grid's font (sized to its 64 px cells) times the display scale.
        seen = font_size((64, 64)) * shown["width"] / natural
        assert seen >= 9, f"labels drawn {seen:.1f} px high at {width}x{height}"
        page.screenshot(path=str(SCREENSHOTS / f"compare-plot-{width}x{height}.png"))


def test_a_picked_cell_goes_to_generate(page):
    cells = page.locator("#plot-cells")
    expect(cells.locator("img")).to_have_count(6)  # the one-click plot: 2 models x 3 strengths
    cells.locator("img").nth(5).click()  # the SDXL row at strength 1
    text = page.locator("#plot-cell-text textarea")
    expect(text).to_have_value(re.compile(r"<lora:br-plot-xl:1>[\s\S]*Model: demo-sdxl"))
    page.keyboard.press("Escape")
    page.locator("#plot-send").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("ridges <lora:br-plot-xl:1>")
    expect(page.locator("#model-picker input")).to_have_value(re.compile("demo-sdxl"))


def test_ab_shows_base_and_blend_behind_a_slider(page):
    fill_form(page, prompt="ridges", seed=7, steps=1, width=64, height=64)  # Generate now has demo-sdxl (sent above)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#plot-ab").click()  # the SDXL adapter of the two picked: the SD1.5 one is left out for this model
    expect(page.locator("#plot-status")).to_contain_text("Done: seed 7, 2 cells (2 drawn)", timeout=300_000)
    slider = page.locator("#plot-ab-slider")
    expect(slider.locator("img")).to_have_count(2)
    page.screenshot(path=str(SCREENSHOTS / "compare-ab.png"))
