"""Assemble the tabs into one Gradio app. Each tab lives in its own module."""

from __future__ import annotations

import gradio as gr

from studio.engine import Studio
from studio.ui.evaluate_tab import build_evaluate_tab
from studio.ui.generate_tab import build_generate_tab
from studio.ui.share_tab import build_share_tab

CSS = """
#generate-status { min-height: 2.5em; }
"""


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="Studio") as app:
        gr.Markdown("## Studio: Stable Diffusion 1.5 and SDXL on your own GPU")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                build_generate_tab(studio)
            with gr.Tab("Evaluate", id="evaluate"):
                build_evaluate_tab(studio)
            with gr.Tab("Share", id="share"):
                build_share_tab(studio)
    app.queue(default_concurrency_limit=1)
    return app


def launch_options(studio: Studio) -> dict:
    """Keyword arguments for `app.launch()` that belong to the app rather than to the command line."""
    return {
        "css": CSS,
        "theme": gr.themes.Soft(),
        # Served files stay inside the outputs folder; nothing else on disk is reachable.
        "allowed_paths": [str(studio.config.outputs_dir.resolve())],
    }
