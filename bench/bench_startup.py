"""Start-up: `python launch.py --demo` to its first HTTP 200, vs a minimal Gradio app started the same way.

All are fresh processes polled on 127.0.0.1 until they answer. No model may load before it is needed, and the
page is served before torch and diffusers are imported: the engine starts in the background once the server
answers (`Studio(config, lazy=True)`, `start_engine()`). Goal: at most 1.3x a bare Gradio app. The second
baseline, the same app that also imports torch and diffusers, shows what the lazy engine saves (no goal).

    python bench/bench_startup.py [--quick]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, ratio_row

from tests.app_server import app_env, free_port, running_app, stop, wait_for_http

MAX_RATIO = 1.3
BARE_APP = """
import sys
import gradio as gr
if sys.argv[2] == "with-torch":
    import diffusers, torch
with gr.Blocks() as app:
    gr.Textbox(label="Prompt")
    gr.Button("Generate")
app.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]))
"""


def bare_gradio_start(folder: Path, variant: str) -> float:
    port = free_port()
    log = folder / f"bare-{variant}.log"
    started = time.monotonic()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", BARE_APP, str(port), variant],
            cwd=ROOT,
            env=app_env({"GRADIO_TEMP_DIR": str(folder / "cache")}),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", process, timeout=120, log=log)
        return time.monotonic() - started
    finally:
        stop(process)


def studio_start(folder: Path) -> float:
    with running_app(folder, timeout=120) as app:
        return app.startup_seconds


def run(quick: bool) -> list[Row]:
    repeat = 2 if quick else 5
    times: dict[str, list[float]] = {"studio": [], "bare": [], "with-torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):  # in turns, so load from other processes hits each alike
            times["bare"].append(bare_gradio_start(Path(tmp), "bare"))
            times["with-torch"].append(bare_gradio_start(Path(tmp), "with-torch"))
            times["studio"].append(studio_start(Path(tmp) / f"studio-{i}"))
    median = {name: statistics.median(values) for name, values in times.items()}
    name = "start to first HTTP 200: launch.py --demo vs"
    return [
        ratio_row(f"{name} bare Gradio app", median["studio"], median["bare"], "s", max_ratio=MAX_RATIO),
        ratio_row(
            f"{name} Gradio app importing torch+diffusers",
            median["studio"],
            median["with-torch"],
            "s",
            note="info: torch and diffusers load after the page",
        ),
    ]


if __name__ == "__main__":
    from common import main_for

    main_for(run)
