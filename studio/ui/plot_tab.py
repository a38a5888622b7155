"""Compare tab: the X/Y/Z plot (any setting on an axis), A/B with a slider, one-click "base vs fine-tuned".

Everything not on an axis comes from the Generate tab's form and the LoRA tab's blend, so a plot shows what
Generate would draw. The grid is saved with its parameters; each cell can be opened (gallery) or sent to Generate.
"""

from __future__ import annotations

from contextlib import closing

import gradio as gr

from studio.engine import LoadProgress, Studio, form_from_png_info
from studio.generation.request import GenerationRequest
from studio.lora.compare import FINETUNE_STRENGTHS, ab_request, finetune_models, finetune_request
from studio.lora.plot_axes import AXIS_TYPES, make_axis
from studio.lora.requests import PlotRequest
from studio.ui.common import GPU_QUEUE, stopper, user_errors
from studio.ui.generate_tab import FORM_FIELDS

NOTHING = ("Nothing", "")


def axis_choices(studio: Studio) -> list[tuple[str, str]]:
    """The axis type picker: every setting, then "LoRA strength: NAME" for each adapter in loras/."""
    fixed = [(t.label, t.key) for t in AXIS_TYPES.values() if t.key != "lora"]
    return [NOTHING, *fixed, *((f"LoRA strength: {e.name}", f"lora:{e.name}") for e in studio.loras() if e.usable)]


def adapter_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(f"{e.name} ({e.kind.label if e.kind else '?'})", e.name) for e in studio.loras() if e.usable]


def _axis(key, values):
    return make_axis(key, values or "") if key else None


def base_request(form: dict, adapters, loras) -> GenerationRequest:
    """The Generate tab's settings as one request; the blend is the LoRA tab's plus the adapters picked here (at 1)."""
    blend = [(name, float(weight)) for name, weight in (loras or [])]
    blend += [(name, 1.0) for name in adapters or [] if name not in dict(blend)]
    return GenerationRequest(
        model=form["model"],
        prompt=form["prompt"] or "",
        negative_prompt=form["negative_prompt"] or "",
        steps=int(form["steps"]),
        cfg=float(form["cfg"]),
        seed=int(form["seed"] if form["seed"] is not None else -1),
        width=int(form["width"]),
        height=int(form["height"]),
        scheduler=form["scheduler"],
        clip_skip=int(form["clip_skip"]),
        loras=tuple(blend),
    )


def build_plot_tab(studio: Studio, *, generate: dict, lora_picks: gr.State, tab: gr.Tab, tabs: gr.Tabs) -> dict:
    """Build the tab; `generate` is the Generate tab's components (its "form" list in FORM_FIELDS order)."""
    choices = axis_choices(studio)
    axes = []
    for name, key, default in (("X", "strength", "0, 0.5, 1"), ("Y", "model", ""), ("Z", "", "")):
        with gr.Row():
            kind = gr.Dropdown(
                choices, value=key, label=f"{name} type", scale=1, allow_custom_value=True, elem_id=f"plot-{name}-type"
            )
            values = gr.Textbox(
                value=default, label=f"{name} values", scale=3, elem_id=f"plot-{name}-values",
                placeholder="0, 0.5, 1 · 0-1 (+0.25) · 1-3 [5] · demo-sd15, demo-sdxl",
            )  # fmt: skip
        axes += [kind, values]
    adapters = gr.Dropdown(
        adapter_choices(studio),
        multiselect=True,
        label="Adapters (strength 1, added to the LoRA tab's blend; each model uses the ones made for it)",
        allow_custom_value=True,  # API clients name adapters added after the page loaded; the engine checks names
        elem_id="plot-adapters",
    )
    with gr.Row():
        plot_button = gr.Button("Plot", variant="primary", elem_id="plot-run")
        finetune_button = gr.Button("Base vs fine-tuned (SD1.5 + SDXL)", elem_id="plot-finetune")
        ab_button = gr.Button("A/B: base vs blend", elem_id="plot-ab")
        stop_button = gr.Button("Stop", variant="stop", elem_id="plot-stop")
    status = gr.Markdown("Settings not on an axis come from the Generate tab.", elem_id="plot-status")
    with gr.Row():
        with gr.Column(scale=3):
            grid = gr.Image(
                label="Grid (saved with its parameters)", type="filepath", interactive=False, elem_id="plot-grid"
            )
        with gr.Column(scale=2):
            ab = gr.ImageSlider(label="A/B: drag the line to compare", type="filepath", elem_id="plot-ab-slider")
    with gr.Row():
        with gr.Column(scale=3):
            cells = gr.Gallery(label="Cells (click to open)", columns=6, height=300, elem_id="plot-cells")
        with gr.Column(scale=2):
            cell_text = gr.Textbox(
                label="Picked cell's parameters", lines=5, interactive=False, elem_id="plot-cell-text"
            )
            send = gr.Button("Send to Generate", elem_id="plot-send")
    with gr.Accordion("Every cell's parameters", open=False):
        cell_table = gr.JSON(label="Cells", elem_id="plot-cell-json")

    form = generate["form"]
    outputs = [status, grid, ab, cells, cell_table]

    def stream(request: PlotRequest, *, slider: bool):
        with closing(studio.plot_stream(request)) as events:  # a closed page stops the work
            for event in events:
                if isinstance(event, LoadProgress):
                    yield [f"⏳ {event.message} ({event.fraction:.0%})", *[gr.update()] * 4]
                    continue
                paths = [str(p) for p in event.cell_paths]
                table = [
                    {"label": lab, "file": p, "infotext": t} for lab, p, t in zip(event.labels, paths, event.infotexts)
                ]
                note = f"Done: seed {event.seed}, {len(paths)} cells ({event.rendered} drawn), saved {event.path.name}."
                pair = (paths[0], paths[-1]) if slider else None
                yield [note, str(event.path), pair, list(zip(paths, event.labels)), table]

    def parts(args):
        """The handlers' inputs (see `inputs` below): axis specs, the tab's adapters, the Generate request."""
        specs, adapters_picked, form_values, loras = args[:6], args[6], args[7:-1], args[-1]
        return specs, base_request(dict(zip(FORM_FIELDS, form_values)), adapters_picked, loras)

    @user_errors
    def run_plot(
        x_type, x_values, y_type, y_values, z_type, z_values, adapters, model, prompt, negative_prompt, steps, cfg,
        seed, width, height, scheduler, batch_size, batch_count, clip_skip, loras=None,
    ):  # fmt: skip
        # Named parameters become the keyword names of the /plot API for gradio_client.
        form_values = [model, prompt, negative_prompt, steps, cfg, seed, width, height, scheduler]
        specs, base = parts([x_type, x_values, y_type, y_values, z_type, z_values, adapters, *form_values,
                             batch_size, batch_count, clip_skip, loras])  # fmt: skip
        request = PlotRequest(base, *(_axis(specs[i], specs[i + 1]) for i in (0, 2, 4)))
        yield from stream(request, slider=False)

    @user_errors
    def run_ab(*args):
        yield from stream(ab_request(parts(args)[1]), slider=True)

    @user_errors
    def run_finetune(*args):
        base = parts(args)[1]
        models = finetune_models(base.model, studio.models())
        shown = ["strength", ", ".join(f"{s:g}" for s in FINETUNE_STRENGTHS), "model", ", ".join(models), "", ""]
        for update in stream(finetune_request(base, models), slider=False):
            yield update + shown

    inputs = [*axes, adapters, *form, lora_picks]
    plot_run = plot_button.click(run_plot, inputs=inputs, outputs=outputs, api_name="plot", **GPU_QUEUE)
    ab_run = ab_button.click(run_ab, inputs=inputs, outputs=outputs, api_name="ab", **GPU_QUEUE)
    finetune_run = finetune_button.click(
        run_finetune, inputs=inputs, outputs=outputs + axes, api_name="compare_finetuned", **GPU_QUEUE
    )
    stop_button.click(
        stopper(studio, "plot"), cancels=[plot_run, ab_run, finetune_run], api_visibility="private", queue=False
    )

    def pick(table, evt: gr.SelectData):
        return table[evt.index]["infotext"] if table and evt.index is not None else ""

    cells.select(pick, inputs=cell_table, outputs=cell_text, api_visibility="private")

    def send_to_generate(text):
        from studio.generation.infotext import parse_infotext

        values = form_from_png_info(parse_infotext(text)) if text else {}
        updates = [gr.update(value=values[name]) if name in values else gr.update() for name in FORM_FIELDS]
        return [*updates, gr.Tabs(selected="generate") if text else gr.Tabs()]

    send.click(send_to_generate, inputs=cell_text, outputs=[*form, tabs], api_visibility="private")

    def refresh():
        return gr.update(choices=adapter_choices(studio)), *[gr.update(choices=axis_choices(studio))] * 3

    tab.select(refresh, outputs=[adapters, *axes[::2]], api_visibility="private", queue=False)
    return {"grid": grid, "cells": cells, "status": status}
