"""The Train tab in a real browser: data check, preset -> settings and VRAM estimate, Train to the end."""

from __future__ import annotations

import re

import pytest

from tests.browser import SCREENSHOTS, browser_context, require_browser  # noqa: F401  (browser_context: fixture)
from tests.helpers import make_photo_folder

expect = require_browser().expect


@pytest.fixture
def train_page(browser_context, studio_app):  # noqa: F811
    page = browser_context.new_page()
    page.goto(studio_app)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Image folder").wait_for()
    yield page
    page.close()


def test_check_preset_and_train_to_an_adapter(train_page, studio_running_app, tmp_path):
    page = train_page
    photos = make_photo_folder(tmp_path / "photos")
    page.get_by_label("Image folder").fill(str(photos))
    page.get_by_label("Caption for images without metadata.jsonl or .txt").fill("mountains")
    page.get_by_role("button", name="Check data").click()
    expect(page.locator("#train-data-report textarea")).to_have_value(re.compile("8 usable of 11 images"))

    # Picking a preset fills the settings, and the estimate follows.
    page.get_by_label("Preset (VRAM)").click()
    page.get_by_role("option", name="12 GB · SD1.5").click()
    expect(page.get_by_label("LoRA rank")).to_have_value("32")
    expect(page.locator("#train-vram-estimate")).to_contain_text("Estimated peak VRAM")

    for label, value in (
        ("Adapter name (loras/<name>)", "browser-alps"),
        ("Steps", "2"),
        ("Resolution", "64"),
        ("LoRA rank", "4"),
        ("Batch size", "1"),
    ):
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.locator("#train-status")).to_contain_text("Done", timeout=240_000)
    expect(page.locator("#train-samples img")).to_have_count(1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "train-tab.png"), full_page=True)
    assert (studio_running_app.loras_dir / "browser-alps" / "browser-alps.safetensors").is_file()
    expect(page.locator("#train-loss img")).to_be_visible()  # the loss curve is drawn

    # The new adapter shows up in the LoRA tab by itself, no rescan needed.
    page.get_by_role("tab", name="LoRA").click()
    expect(page.locator("#lora-library tr", has_text="browser-alps")).to_contain_text("ok")
