"""A real browser (Debian's Chromium, driven by Playwright) clicking through the Generate tab of the launched app.

Screenshots of every tab land in artifacts/screenshots/ (git-ignored) for a human look.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from studio.generation.infotext import parse_infotext, read_infotext
from tests.browser import (  # noqa: F401  (browser_context: fixture)
    SCREENSHOTS,
    browser_context,
    fill_form,
    require_browser,
    set_number,
)
from tests.helpers import TRAIN_FORM, app_client, make_photo_folder, pixels, wait_until

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


def test_a_failed_generate_is_told_in_the_status_line_with_no_error_overlay(page):
    fill_form(page, width=65)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("Not generated: width=65 must be a multiple of 8")
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)  # no overlay on the outputs or the fields
    expect(page.get_by_label("number input for Width")).to_be_visible()
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


# --- image to image, inpaint, and what the page shows around them -------------------------------------------

MODE_PANELS = {"Text to image": "#hires-fix", "Image to image": "#init-image", "Inpaint": "#inpaint-editor"}


def choose_mode(page, label: str) -> None:
    page.locator("#generate-mode").get_by_text(label, exact=True).click()


@pytest.mark.parametrize("width, height", [(1280, 720), (1440, 900)])
def test_generate_is_in_view_in_every_mode_and_each_mode_shows_only_its_controls(page, width, height):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": height})
    for label, panel in MODE_PANELS.items():
        choose_mode(page, label)
        expect(page.locator(panel)).to_be_visible()
        for other in set(MODE_PANELS.values()) - {panel}:
            expect(page.locator(other)).to_be_hidden()
        expect(page.locator("#generate-button")).to_be_in_viewport(ratio=1)  # without scrolling
        slug = label.lower().replace(" ", "-")
        page.screenshot(path=str(SCREENSHOTS / f"generate-{slug}-{width}x{height}.png"))


def saved(app, seed: int) -> list:
    """The app's saved images of one seed, oldest first."""
    return sorted(app.outputs_dir.glob(f"*/*/*-{seed}.png"), key=lambda p: p.stat().st_mtime_ns)


def test_a_gallery_image_shows_its_parameters_goes_to_img2img_then_inpaint_with_a_painted_mask(
    page, studio_running_app
):
    for seed in (51, 52):
        fill_form(page, seed=seed, steps=4)
        page.locator("#generate-button").click()
        expect(status(page)).to_contain_text(f"seed {seed}.")
    page.locator("#session-gallery img").nth(1).click()  # the older image: its own parameters, not the last run's
    expect(page.locator("#infotext textarea")).to_have_value(re.compile(r"Seed: 51, Size: 64x64"))

    page.locator("#gallery-to-img2img").click()
    expect(page.get_by_label("Image to image", exact=True)).to_be_checked()
    expect(page.locator("#init-image img")).to_be_visible()
    expect(page.get_by_label("Seed (-1 = random)")).to_have_value("51")
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("Done. 1 image(s)")
    expect(page.locator("#infotext textarea")).to_have_value(re.compile(r"Denoising strength: 0\.75"))
    img2img = saved(studio_running_app, 51)[-1]

    page.locator("#gallery-to-inpaint").click()  # the newest image: the img2img result
    expect(page.get_by_label("Inpaint", exact=True)).to_be_checked()
    editor = page.locator("#inpaint-editor")
    editor.get_by_role("button", name="Brush", exact=True).click()
    canvas = editor.locator("canvas").first
    expect(canvas).to_be_visible()
    # The picture sits centred in the canvas, as tall as it: paint a stroke down its left quarter.
    box = canvas.bounding_box()
    side = box["height"]
    left = box["x"] + (box["width"] - side) / 2
    page.mouse.move(left + side * 0.15, box["y"] + side * 0.1)
    page.mouse.down()
    page.mouse.move(left + side * 0.15, box["y"] + side * 0.9, steps=10)
    page.mouse.up()
    page.get_by_label("latent noise", exact=True).check()
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text("Done. 1 image(s)")
    inpainted = saved(studio_running_app, 51)[-1]
    assert inpainted != img2img
    before, after = pixels(Image.open(img2img)), pixels(Image.open(inpainted))
    change = np.abs(after - before).mean(axis=(0, 2))  # per column
    assert change[:16].mean() > 5 * max(change[40:].mean(), 0.5), change.round(1)  # painted left, kept right
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "generate-inpaint-done.png"))


def test_generate_during_a_training_run_says_it_waits_and_stop_training_lets_it_run(page, studio_running_app, tmp_path):
    photos = make_photo_folder(tmp_path / "photos")
    trainer = app_client(studio_running_app.url)
    form = {**TRAIN_FORM, "steps": 5000, "validation_every": 0, "checkpoint_every": 0}
    training = trainer.submit(data=str(photos), name="queued-behind", api_name="/train", **form)
    wait_until(lambda: any("step" in str(out[0]) for out in training.outputs()), 180, "the run reached a step")

    fill_form(page, seed=61)
    page.locator("#generate-button").click()
    expect(status(page)).to_contain_text(
        re.compile(r"Queued behind a LoRA training run \(step \d+/5000"), timeout=10_000
    )  # at once, not a silent spinner
    page.locator("#generate-stop-training").click()
    expect(status(page)).to_contain_text("Done. 1 image(s)", timeout=120_000)
    expect(page.locator("#generate-stop-training")).to_be_hidden()
    assert training.done() and "stopped" in training.result(timeout=10)[0].lower()
