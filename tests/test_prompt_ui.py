"""The Generate tab's token counters, in a real browser on the launched app: A1111's `32/75`, `80/150`."""

from __future__ import annotations

import re

import pytest

from tests.browser import browser_context, require_browser  # noqa: F401  (browser_context: fixture)

expect = require_browser().expect


@pytest.fixture
def page(browser_context, studio_app):  # noqa: F811  (the fixture, not the import)
    page = browser_context.new_page()
    page.goto(studio_app)
    page.get_by_label("Prompt", exact=True).wait_for()
    yield page
    page.close()


def test_the_counters_follow_the_prompts_into_a_second_chunk(page):
    prompt_count = page.locator("#prompt-token-count")
    negative_count = page.locator("#negative-token-count")
    expect(prompt_count).to_have_text(re.compile(r"^\s*0/75\s*$"))

    page.get_by_label("Prompt", exact=True).fill("a photo of snowy mountains")  # 5 CLIP tokens
    expect(prompt_count).to_have_text(re.compile(r"^\s*5/75\s*$"))

    # "word, " is two tokens: 40 of them (the last comma dropped, as A1111 does) are 79, past the first chunk.
    page.get_by_label("Prompt", exact=True).fill("peak, " * 40)
    expect(prompt_count).to_have_text(re.compile(r"/150\s*$"))

    page.get_by_label("Negative prompt").fill("blurry, low quality")
    expect(negative_count).to_have_text(re.compile(r"^\s*4/75\s*$"))
    expect(prompt_count).to_have_text(re.compile(r"/150\s*$"))  # each box keeps its own count
