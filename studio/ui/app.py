"""Assemble the tabs into one Gradio app. Each tab lives in its own module."""

from __future__ import annotations

import gradio as gr

from studio.engine import Studio
from studio.ui import blend_chip
from studio.ui.evaluate_tab import build_evaluate_tab
from studio.ui.generate_tab import build_generate_tab
from studio.ui.lora_tab import build_lora_tab
from studio.ui.plot_tab import build_plot_tab
from studio.ui.share_tab import build_share_tab
from studio.ui.train_tab import build_train_tab

CSS = (
    """
#generate-status { min-height: 2.5em; }
#evaluate-table table { font-size: 0.85em; }
"""
    + blend_chip.CSS
)


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="Studio") as app:
        gr.Markdown("## Studio: Stable Diffusion 1.5 and SDXL on your own GPU")
        lora_picks = gr.State([])  # the blend Generate uses, for the model in the picker: [(name, weight)]
        blends = gr.State({})  # the blend of each model kind (studio.lora.kind_blends)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                chip = blend_chip.build_blend_chip(studio)  # first in the tab: the blend is seen before Generate
                generate = build_generate_tab(studio, lora_picks=lora_picks)
            with gr.Tab("LoRA", id="lora"):
                lora = build_lora_tab(
                    studio,
                    model=generate["model"],
                    lora_picks=lora_picks,
                    blends=blends,
                    generate_prompt=generate["prompt"],
                )
            with gr.Tab("Compare", id="compare") as compare_tab:
                build_plot_tab(studio, generate=generate, lora_picks=lora_picks, tab=compare_tab, tabs=tabs)
            with gr.Tab("Train", id="train"):
                train = build_train_tab(studio)
            with gr.Tab("Evaluate", id="evaluate"):
                build_evaluate_tab(studio)
            with gr.Tab("Share", id="share"):
                share = build_share_tab(studio)
        blend_chip.wire_blend_chip(chip, studio, model=generate["model"], blends=blends)
        _refresh_lists(app, lora, share, train)
        # The Train tab was built before the engine probed the GPU: pick its preset for this GPU on page load.
        preset = [train["model"], train["preset"]]
        app.load(train["preset_for_this_gpu"], inputs=preset, outputs=train["preset"], api_visibility="private")
    app.queue(default_concurrency_limit=1)
    return app


def _refresh_lists(app: gr.Blocks, lora: dict, share: dict, train: dict) -> None:
    """Lists read loras/ afresh by themselves: at page load, and after every event that adds an adapter."""
    quiet = dict(api_visibility="private", show_progress="hidden")
    fn, inputs, outputs = lora["switch"]
    app.load(fn, inputs=inputs, outputs=outputs, **quiet)  # the LoRA list, pickers and status as of page load
    share_fn, share_inputs, share_outputs = share["refresh"]
    app.load(share_fn, inputs=share_inputs, outputs=share_outputs, **quiet)
    fn, inputs, outputs = lora["refresh"]
    for run in train["runs"]:  # a finished (or stopped) training run: its adapter appears in the LoRA tab
        run.then(fn, inputs=inputs, outputs=outputs, **quiet)
    for event in [*train["runs"], *lora["changed"]]:  # trained, saved blend, imported: Share lists it
        event.then(share_fn, inputs=share_inputs, outputs=share_outputs, **quiet)


def launch_options(studio: Studio) -> dict:
    """Keyword arguments for `app.launch()` that belong to the app rather than to the command line."""
    return {
        "css": CSS,
        "theme": gr.themes.Soft(),
        # Served files stay inside the outputs folder; nothing else on disk is reachable.
        "allowed_paths": [str(studio.config.outputs_dir.resolve())],
    }
