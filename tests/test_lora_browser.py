"""A real browser (Debian's Chromium, Playwright) on the LoRA tab: greyed adapters; a slider release applies
the blend."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from studio.models.kinds import ModelKind
from tests.test_lora_blend import add_lora

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"

if not CHROMIUM.exists():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (Debian package `chromium`)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need `pip install playwright`")
expect = playwright_api.expect
expect.set_options(timeout=60_000)  # the first apply loads the model, on a busy CI machine


@pytest.fixture(scope="module")
def page(studio_running_app, tmp_path_factory):
    add_lora(studio_running_app.loras_dir, "br-alps", seed=1)
    add_lora(studio_running_app.loras_dir, "br-xl", kind=ModelKind.SDXL, seed=2)
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-lora")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1100},
        )  # fmt: skip
        context.set_default_timeout(60_000)
        page = context.new_page()
        page.goto(studio_running_app.url)
        page.get_by_role("tab", name="LoRA").click()
        yield page
        context.close()


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
