"""A real browser (Debian's Chromium, Playwright) on the LoRA tab: greyed adapters; a slider release applies
the blend."""

from __future__ import annotations

import re

import pytest

from studio.models.kinds import ModelKind
from tests.browser import SCREENSHOTS, browser_context, fill_form, require_browser  # noqa: F401  (browser_context: fixture)
from tests.helpers import add_lora

expect = require_browser().expect


@pytest.fixture(scope="module")
def page(browser_context, studio_running_app):  # noqa: F811  (the fixture, not the import)
    add_lora(studio_running_app.loras_dir, "br-alps", seed=1)
    add_lora(studio_running_app.loras_dir, "br-xl", kind=ModelKind.SDXL, seed=2)
    page = browser_context.new_page()  # one page (one Gradio session) for the module: the tests build on each other
    page.set_viewport_size({"width": 1400, "height": 1100})  # room for the library table and both sliders
    page.goto(studio_running_app.url)
    page.get_by_role("tab", name="LoRA").click()
    yield page
    page.close()


def test_library_shows_incompatible_adapters_greyed_with_the_reason(page):
    library = page.locator("#lora-library")
    expect(library).to_contain_text("br-alps")
    xl_row = library.locator("tr", has_text="br-xl")
    expect(xl_row).to_have_css("opacity", "0.45")
    expect(xl_row).to_contain_text("br-xl is an SDXL LoRA; the loaded model is SD1.5.")
    expect(library.locator("tr", has_text="br-alps")).to_have_css("opacity", "1")


def test_picking_an_adapter_and_releasing_a_slider_applies_the_blend(page):
    pick = page.locator("#lora-pick-0 input")
    pick.click()
    page.get_by_role("option", name="br-alps", exact=True).click()
    status = page.locator("#lora-status")
    expect(status).to_contain_text(re.compile(r"Blend on demo-sd15: br-alps 1 \("))
    slider = page.locator("#lora-weight-0 input[type=range]")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)  # -2..2: a quarter is -1
    expect(status).to_contain_text(re.compile(r"br-alps -1(\.\d+)? \("))  # the thumb lands near -1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "lora-tab.png"), full_page=True)


def test_two_adapters_a_slider_move_then_generate_draws_with_the_blend(page, studio_running_app):
    add_lora(studio_running_app.loras_dir, "br-snow", seed=3)
    page.locator("#lora-rescan").click()
    for slot, name in ((0, "br-alps"), (1, "br-snow")):
        box = page.locator(f"#lora-pick-{slot} input")
        box.click()
        # Each dropdown renders its own option list; take the one this input controls.
        options = page.locator(f"#{box.get_attribute('aria-controls')}") if box.get_attribute("aria-controls") else page
        options.get_by_role("option", name=name, exact=True).click()
    status = page.locator("#lora-status")
    expect(status).to_contain_text(re.compile(r"br-alps .*br-snow"))
    slider = page.locator("#lora-weight-1 input[type=range]")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)  # -2..2: three quarters is +1
    expect(status).to_contain_text(re.compile(r"br-snow 1(\.\d+)? \("))

    page.get_by_role("tab", name="Generate").click()
    fill_form(page, prompt="ridges", seed=5)
    page.locator("#generate-button").click()
    expect(page.locator("#generate-status")).to_contain_text("Done. 1 image(s)", timeout=120_000)
    infotext = page.locator("#infotext textarea").input_value()
    assert "<lora:br-alps:" in infotext and "<lora:br-snow:" in infotext, infotext
    assert "Lora hashes: " in infotext and "br-snow: " in infotext
