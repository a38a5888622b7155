"""Assemble the tabs into one Gradio app. Each tab lives in its own module."""

from __future__ import annotations

import gradio as gr

from studio.engine import Studio
from studio.ui.evaluate_tab import build_evaluate_tab
from studio.ui.generate_tab import build_generate_tab
from studio.ui.lora_tab import build_lora_tab
from studio.ui.plot_tab import build_plot_tab
from studio.ui.share_tab import build_share_tab
from studio.ui.train_tab import build_train_tab

CSS = """
#generate-status { min-height: 2.5em; }
"""


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="Studio") as app:
        gr.Markdown("## Studio: Stable Diffusion 1.5 and SDXL on your own GPU")
        lora_picks = gr.State([])  # the LoRA tab's blend, used by Generate: [(name, weight)]
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generate = build_generate_tab(studio, lora_picks=lora_picks)
            with gr.Tab("LoRA", id="lora"):
                lora = build_lora_tab(studio, model=generate["model"], lora_picks=lora_picks)
            with gr.Tab("Compare", id="compare") as compare_tab:
                build_plot_tab(studio, generate=generate, lora_picks=lora_picks, tab=compare_tab, tabs=tabs)
            with gr.Tab("Train", id="train"):
                train = build_train_tab(studio)
            with gr.Tab("Evaluate", id="evaluate"):
                build_evaluate_tab(studio)
            with gr.Tab("Share", id="share"):
                build_share_tab(studio)
        fn, inputs, outputs = lora["refresh"]
        app.load(fn, inputs=inputs, outputs=outputs, api_visibility="private")  # the LoRA list as of page load
        # The Train tab was built before the engine probed the GPU: pick its preset for this GPU on page load.
        preset = [train["model"], train["preset"]]
        app.load(train["preset_for_this_gpu"], inputs=preset, outputs=train["preset"], api_visibility="private")
        for run in train["runs"]:  # a finished (or stopped) training run: its adapter appears in the LoRA tab
            run.then(fn, inputs=inputs, outputs=outputs, api_visibility="private")
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
