"""Every public API name of the launched app is driven by gradio_client somewhere in the tests.

This file covers the endpoints no tab's own tests call (Stop buttons with nothing running, the
Share tab's adapter list, Hub import with no network), and fails when a new public endpoint has no test at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError

from tests.helpers import add_lora

TESTS = Path(__file__).resolve().parent
NO_SLOTS = (None, None, None)
ONE = (1.0, 1.0, 1.0)


@pytest.fixture(scope="module", autouse=True)
def api_alps(studio_running_app):
    add_lora(studio_running_app.loras_dir, "api-alps", seed=4)


def test_every_public_api_name_is_called_by_some_test(client):
    names = {name.lstrip("/") for name in client.view_api(return_format="dict", print_info=False)["named_endpoints"]}
    assert {"generate", "train", "apply_blend", "push", "evaluate"} <= names  # the API is really listed
    test_text = "\n".join(path.read_text(encoding="utf-8") for path in TESTS.glob("test_*.py"))
    called = set(re.findall(r"""["']/([a-z0-9_]+)["']""", test_text))
    assert sorted(names - called) == [], "public API names without a gradio_client test"


@pytest.mark.parametrize("api_name", ["/stop_training", "/stop_push", "/stop_evaluation", "/stop"])
def test_stop_buttons_with_nothing_running_are_harmless(client, api_name):
    client.predict(api_name=api_name)
    assert "demo-sd15" in str(client.predict(api_name="/list_models"))  # the app keeps serving


def test_share_tab_lists_the_adapters_studio_wrote(client, studio_running_app):
    # Any adapter in loras/ can be shared (a card is built from its header); a saved blend appears at once.
    assert "api-mix" not in str(client.predict(api_name="/list_adapters"))
    status, _table, _previews = client.predict(
        "demo-sd15", "api-mix", False, 1.0, "api-alps", *NO_SLOTS, 0.5, *ONE, api_name="/save_blend"
    )
    assert status.startswith("Saved api-mix"), status
    choices = str(client.predict(api_name="/list_adapters"))
    assert "api-mix" in choices and "'api-alps'" in choices


def test_hub_import_without_network_is_a_clear_error_and_the_app_keeps_serving(client):
    with pytest.raises(AppError, match=r"(?i)offline|cannot reach|not .*reach"):
        client.predict("someone/mountain-lora", "", "demo-sd15", *NO_SLOTS, *ONE, api_name="/import_lora")
    assert "demo-sd15" in str(client.predict(api_name="/list_models"))
