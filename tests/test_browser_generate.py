"""A real browser (Debian's Chromium, driven by Playwright) clicking through the Generate tab of the launched app.

Screenshots of every tab land in artifacts/screenshots/ (git-ignored) for a human look.
"""

from __future__ import annotations

import re
import shutil

import pytest

from studio.generation.infotext import parse_infotext, read_infotext
from tests.browser import (  # noqa: F401  (browser_context: fixture)
    SCREENSHOTS,
    browser_context,
    fill_form,
    require_browser,
    set_number,
)

expect = require_browser().expect


@pytest.fixture
def page(browser_context, studio_app):  # noqa: F811  (the fixture, not the import)
    page = browser_context.new_page()  # a new page is a new Gradio session: empty gallery, default form
    page.goto(studio_app)
    page.get_by_label("Prompt", exact=True).wait_for()
    yield page
    page.close()


def status(page):
    return page.locator("#generate-status")


def test_generate_shows_the_image_in_the_session_gallery(page):
    fill_form(page, seed=42)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("Done. 1 image(s)")
    expect(status(page)).to_contain_text("seed 42")
    expect(page.locator("#session-gallery img")).to_have_count(1)
    infotext = page.locator("#infotext textarea").input_value()
    assert infotext.startswith("snowy mountains\n") and "Seed: 42, Size: 64x64" in infotext

    fill_form(page, seed=43)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("seed 43")
    expect(page.locator("#session-gallery img")).to_have_count(2)  # the session keeps both, newest first
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "generate-after-two-images.png"), full_page=True)


def test_stop_ends_a_long_generation(page):
    fill_form(page, seed=1, steps=150, width=256, height=256)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text(re.compile(r"step \d+/150"))
    page.locator("#stop-button").click()
    expect(status(page)).to_contain_text("Stopped.")
    # The app keeps working after a stop.
    fill_form(page, seed=2)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("Done.")


def test_bad_size_shows_an_error_toast_and_the_next_generation_works(page):
    fill_form(page, width=65)
    page.locator("#generate-button").click()
    toast = page.locator(".toast-body")
    expect(toast).to_contain_text("width=65 must be a multiple of 8")
    set_number(page, "Width", 64)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("Done. 1 image(s)")
    expect(page.locator("#session-gallery img")).to_have_count(1)


def test_png_info_reads_an_image_and_sends_it_to_the_form(page, studio_running_app, tmp_path):
    typed = "a (glacier:1.3) at dawn BREAK [fog], [cat:dog:0.5]"  # A1111 syntax survives the round trip as typed
    fill_form(page, prompt=typed, seed=77)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("seed 77")
    saved = sorted(studio_running_app.outputs_dir.glob("txt2img/*/*-77.png"))[-1]
    upload = shutil.copy(saved, tmp_path / "dropped.png")

    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_text("PNG info: read the parameters").click()
    page.locator("#png-upload input[type=file]").set_input_files(str(upload))
    expect(page.locator("#png-info-text textarea")).to_have_value(read_infotext(saved))
    page.locator("#send-to-generate").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(typed)
    expect(page.get_by_label("Seed (-1 = random)")).to_have_value("77")
    assert parse_infotext(read_infotext(saved))["Seed"] == "77"


def test_screenshot_of_every_tab(page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tabs = page.get_by_role("tab")
    names = [tabs.nth(i).inner_text().strip() for i in range(tabs.count())]
    assert "Generate" in names
    for i, name in enumerate(names):
        tabs.nth(i).click()
        page.wait_for_timeout(300)  # let the tab's components render
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or f"tab-{i}"
        page.screenshot(path=str(SCREENSHOTS / f"{slug}.png"), full_page=True)
        assert (SCREENSHOTS / f"{slug}.png").stat().st_size > 0


def test_random_seed_is_shown_and_last_seed_puts_it_back(page):
    fill_form(page, seed=-1)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("Done.")
    used = re.search(r"seed (\d+)\.", status(page).inner_text()).group(1)
    assert f"Seed: {used}," in page.locator("#infotext textarea").input_value()
    page.get_by_role("button", name="♻ last seed").click()
    expect(page.get_by_label("Seed (-1 = random)")).to_have_value(used)


def test_output_history_shows_saved_images_when_opened(page, studio_running_app):
    fill_form(page, seed=99)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("seed 99")
    page.get_by_text("Output history").click()
    saved = len(list(studio_running_app.outputs_dir.glob("txt2img/*/*.png")))
    expect(page.locator("#history-gallery img")).to_have_count(min(saved, 60))
