"""Start-up: the web app builds and serves its page before torch and diffusers load; the engine comes after.

A fresh child process, because this test session has imported torch long ago: only a new interpreter shows what
the UI build path imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.app_server import ROOT, app_env
from tests.helpers import make_config

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft")

SCRIPT = """
import json, sys
from pathlib import Path
from studio.config import StudioConfig
from studio.engine import Finished, LoadProgress, Studio
from studio.generation.request import GenerationRequest
from studio.ui.app import build_app, launch_options

heavy = {heavy!r}
loaded = lambda: sorted(name for name in heavy if name in sys.modules)
config = StudioConfig(models_dir=Path({models!r}), loras_dir=Path({loras!r}), outputs_dir=Path({outputs!r}),
                      device="cpu")
studio = Studio(config, lazy=True)
app = build_app(studio)
launch_options(studio)
report = {{"after_build": loaded(), "ready_after_build": studio.engine_ready}}

# A click before the engine has started: the first event says so, then the image comes as usual.
request = GenerationRequest(model="demo-sd15", prompt="mountains", steps=2, width=64, height=64, seed=7)
events = list(studio.generate_stream(request))
report["first_event"] = events[0].message if isinstance(events[0], LoadProgress) else repr(events[0])
report["paths"] = [str(p) for p in events[-1].paths] if isinstance(events[-1], Finished) else []
report["after_engine"] = loaded()
report["ready"] = studio.engine_ready
print(json.dumps(report))
"""


@pytest.mark.slow  # a child process imports gradio, then torch
def test_the_ui_builds_without_torch_and_a_click_waits_for_the_engine(tmp_path):
    config = make_config(tmp_path)
    script = SCRIPT.format(
        heavy=HEAVY, models=str(config.models_dir), loras=str(config.loras_dir), outputs=str(config.outputs_dir)
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=app_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["after_build"] == [], f"the UI build imported {report['after_build']}"
    assert report["ready_after_build"] is False
    assert report["first_event"].startswith("Loading the engine"), report["first_event"]
    assert len(report["paths"]) == 1 and report["paths"][0].endswith(".png")
    assert {"torch", "diffusers"} <= set(report["after_engine"]) and report["ready"] is True


def test_a_started_engine_is_shared_and_started_once(studio_config):
    from studio.engine import Studio

    studio = Studio(studio_config, lazy=True)
    assert not studio.engine_ready
    studio.start_engine()  # in a background thread, as launch.py does once the page is served
    studio.start_engine()  # a second call (another tab, a retry) starts nothing new
    manager = studio.manager  # waits for the thread
    assert studio.engine_ready and studio.manager is manager
    assert manager.device.type == "cpu"
