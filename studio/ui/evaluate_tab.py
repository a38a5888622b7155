"""Evaluate tab: score models/LoRA blends against a folder of images, and export synthetic data sets.

Handlers only build requests and show what the engine streams back; the work is in studio/evaluation.
"""

from __future__ import annotations

from contextlib import closing

import gradio as gr
import pandas as pd

from studio.engine import Studio, scheduler_names
from studio.evaluation.requests import (
    DEFAULT_FEATURE_MODEL,
    EvaluationRequest,
    ExportRequest,
    SamplingSettings,
    export_folder,
    parse_candidate,
)
from studio.evaluation.results import EvaluationResult, ExportResult, Progress
from studio.ui.common import GPU_QUEUE, stopper
from studio.ui.status import QUIET, reported

CANDIDATES_HELP = "One per line: a model, optionally with LoRAs, e.g. `demo-sd15` and `demo-sd15 + my-lora:0.8`."


def _sampling(negative, steps, cfg, width, height, scheduler) -> SamplingSettings:
    return SamplingSettings(
        negative_prompt=negative or "",
        steps=int(steps),
        cfg=float(cfg),
        width=int(width or 0) or None,
        height=int(height or 0) or None,
        scheduler=scheduler,
    )


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


# Column widths (rank, candidate, CMMD, KID, closest data image, likely copies, note): without them the table is
# twice as wide as its column and scrolls sideways. Without KID the other columns take the first six.
COLUMN_WIDTHS = ["6%", "22%", "17%", "17%", "11%", "10%", "17%"]


def build_evaluate_tab(studio: Studio) -> dict:
    gr.Markdown(
        "How close do generated images come to your data? Each candidate draws the same seeds; scores are CMMD "
        "(CLIP embeddings, lower = closer) and KID on the same CLIP features (not Inception KID; FID is not "
        "offered). The floor is your data scored against itself in two halves."
    )
    with gr.Row():
        with gr.Column(scale=3):
            candidates = gr.Textbox(
                label="Candidates", lines=3, value=studio.config.default_model, info=CANDIDATES_HELP
            )
            data = gr.Textbox(label="Data folder (your training images)", placeholder="/home/me/datasets/mountains")
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="satellite image of mountains")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                count = gr.Slider(2, 100, value=16, step=1, label="Images per candidate")
                seed = gr.Number(value=0, precision=0, label="First seed")
                steps = gr.Slider(1, 150, value=25, step=1, label="Steps")
                cfg = gr.Slider(0, 30, value=7.0, step=0.5, label="CFG scale")
            with gr.Row():
                width = gr.Number(value=0, precision=0, label="Width (0 = model's native)")
                height = gr.Number(value=0, precision=0, label="Height (0 = model's native)")
                scheduler = gr.Dropdown(list(scheduler_names()), value="DPM++ 2M Karras", label="Sampler")
            with gr.Row():
                feature_model = gr.Textbox(value=DEFAULT_FEATURE_MODEL, label="Feature model (CLIP: Hub id or folder)")
                kid = gr.Checkbox(value=True, label="Also KID (CLIP features)")
            with gr.Row():
                evaluate_button = gr.Button("Evaluate", variant="primary", elem_id="evaluate-button")
                stop_button = gr.Button("Stop", variant="stop", elem_id="evaluate-stop")
        with gr.Column(scale=3):
            status = gr.Markdown("Ready.", elem_id="evaluate-status")
            preview = gr.Image(label="Preview", interactive=False, height=192)
            table = gr.Dataframe(
                label="Ranked (lower = closer)",
                interactive=False,
                wrap=True,
                column_widths=COLUMN_WIDTHS,
                elem_id="evaluate-table",
            )
            chart = gr.BarPlot(x="candidate", y="score", color="kind", sort="y", title="CMMD", height=260)
            grids = gr.Gallery(
                label="Chart with intervals, then generated | nearest data image",
                columns=1,
                height=480,
                object_fit="contain",
                format="png",
                elem_id="evaluate-grids",
            )
            folder = gr.Textbox(label="Results folder", interactive=False)
    sampling_inputs = [negative, steps, cfg, width, height, scheduler]

    @reported(status, "Evaluation")
    def run_evaluation(
        candidates, data, prompt, count, seed, feature_model, kid, negative, steps, cfg, width, height, scheduler
    ):
        request = EvaluationRequest(
            candidates=tuple(parse_candidate(line) for line in _lines(candidates)),
            data=(data or "").strip(),
            prompt=prompt or "",
            count=int(count),
            seed=int(seed or 0),
            sampling=_sampling(negative, steps, cfg, width, height, scheduler),
            feature_model=(feature_model or "").strip() or DEFAULT_FEATURE_MODEL,
            kid=bool(kid),
        )
        # At once: loading the feature model may take a while (and fails within seconds when it cannot).
        yield {status: f"⏳ Loading the feature model {request.feature_model} and reading the data folder…"}
        with closing(studio.evaluate_stream(request)) as events:  # a closed page stops the work
            for event in events:
                if isinstance(event, Progress):
                    shown = gr.skip() if event.preview is None else event.preview
                    yield {status: f"⏳ {event.message} ({event.fraction:.0%})", preview: shown}
                elif isinstance(event, EvaluationResult):
                    yield _show(event)

    def _show(result: EvaluationResult) -> dict:
        done = "Stopped: partial results." if result.interrupted else "Done."
        best = f" Closest to the data: **{result.candidates[0].label}**." if result.candidates else ""
        images = ([str(result.chart)] if result.chart else []) + [str(r.grid) for r in result.candidates]
        return {
            status: f"{done}{best} {result.data_images} data images, seeds {result.seeds[0]}-{result.seeds[-1]}.",
            table: pd.DataFrame(result.table()),
            chart: pd.DataFrame(result.chart_rows()),
            grids: images,
            folder: str(result.folder),
        }

    evaluate_button.click(
        run_evaluation,
        inputs=[candidates, data, prompt, count, seed, feature_model, kid] + sampling_inputs,
        outputs=[status, preview, table, chart, grids, folder],
        api_name="evaluate",
        **GPU_QUEUE,
        **QUIET,
    )
    stop_button.click(stopper(studio, "evaluate"), api_name="stop_evaluation", queue=False)

    with gr.Accordion("Export a synthetic data set (Hugging Face imagefolder with metadata.jsonl)", open=False):
        with gr.Row():
            with gr.Column(scale=3):
                export_model = gr.Textbox(
                    label="Model (+ LoRAs)",
                    value=studio.config.default_model,
                    info="e.g. `demo-sd15 + my-lora:0.8`; sampling as above",
                )
                prompts = gr.Textbox(label="Prompts, one per line", lines=4)
                with gr.Row():
                    per_prompt = gr.Slider(1, 100, value=4, step=1, label="Images per prompt")
                    export_seed = gr.Number(value=0, precision=0, label="First seed")
                    name = gr.Textbox(label="Data set name (in outputs/datasets/)", value="synthetic")
                with gr.Row():
                    export_button = gr.Button("Export data set", variant="primary", elem_id="export-button")
                    export_stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=3):
                export_status = gr.Markdown("Ready.", elem_id="export-status")
                export_gallery = gr.Gallery(label="Exported images", columns=4, height=320, format="png")
                export_path = gr.Textbox(label="Data set folder", interactive=False)

    @reported(export_status, "Export")
    def run_export(model, prompts, per_prompt, seed, name, negative, steps, cfg, width, height, scheduler):
        request = ExportRequest(
            candidate=parse_candidate(model or ""),
            prompts=tuple(_lines(prompts)),
            folder=export_folder(studio.config.outputs_dir, name),
            count=int(per_prompt),
            seed=int(seed or 0),
            sampling=_sampling(negative, steps, cfg, width, height, scheduler),
        )
        yield {export_status: f"⏳ Exporting {request.count} image(s) per prompt…"}
        with closing(studio.export_dataset_stream(request)) as events:  # a closed page stops the work
            for event in events:
                if isinstance(event, Progress):
                    yield {export_status: f"⏳ {event.message} ({event.fraction:.0%})"}
                elif isinstance(event, ExportResult):
                    note = "Stopped early; kept" if event.interrupted else "Done:"
                    yield {
                        export_status: f"{note} {len(event.images)} images with metadata.jsonl. Load with "
                        f'`datasets.load_dataset("imagefolder", data_dir=...)` or train on the folder.',
                        export_gallery: [str(p) for p in event.images],
                        export_path: str(event.folder),
                    }

    export_button.click(
        run_export,
        inputs=[export_model, prompts, per_prompt, export_seed, name] + sampling_inputs,
        outputs=[export_status, export_gallery, export_path],
        api_name="export_dataset",
        **GPU_QUEUE,
        **QUIET,
    )
    export_stop.click(stopper(studio, "export"), api_visibility="private", queue=False)
    return {"candidates": candidates, "data": data, "prompt": prompt}
