"""Headless Chromium for the browser tests: one launch recipe and one skip-or-fail rule, imported by every test
that drives the app in a real browser (Debian's Chromium through Playwright; `playwright install` cannot download
browsers here).

A module of browser tests starts with `expect = require_browser().expect`; it takes the `browser_context` fixture
by importing it from here (module scope: one Chromium per module). `fill_form` fills the Generate tab's form.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
TIMEOUT_MS = 60_000  # a loaded CI machine is slow: the first click may load a model
VIEWPORT = {"width": 1400, "height": 1000}


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"browser tests need Chromium at {CHROMIUM} (Debian package `chromium`)"
    if importlib.util.find_spec("playwright") is None:
        return "browser tests need `pip install playwright` (requirements-dev.txt)"
    return None


def _required() -> bool:
    return os.environ.get("STUDIO_REQUIRE_BROWSER") == "1"  # set by .ci/run: there a skip would hide a broken setup


def available() -> bool:
    """For a test with a browser part among other checks: False without a browser (fails when one is required)."""
    reason = _missing()
    if reason and _required():
        pytest.fail(reason, pytrace=False)
    return reason is None


def require_browser():
    """playwright.sync_api, or skip the calling module without a browser (fail under STUDIO_REQUIRE_BROWSER=1)."""
    reason = _missing()
    if reason:
        if _required():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    from playwright import sync_api

    sync_api.expect.set_options(timeout=TIMEOUT_MS)  # assertions wait as long as actions do
    return sync_api


@contextmanager
def chromium_context(profile_dir: Path, *, viewport: dict | None = None) -> Iterator:
    """Headless Chromium with a new, empty profile (nothing cached from a previous run or a user's browser)."""
    playwright_api = require_browser()
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=viewport or VIEWPORT,
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


# --- the Generate form, for every test that draws an image in the browser ------------------------------------


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def fill_form(page, *, prompt="snowy mountains", seed=42, steps=2, width=64, height=64) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Seed (-1 = random)").fill(str(seed))
    set_number(page, "Steps", steps)
    set_number(page, "Width", width)
    set_number(page, "Height", height)
