"""Train tab: a folder of images -> a LoRA in loras/, with a data check, presets, live loss and samples.

Handlers only build a `TrainingRequest` and read `studio.train_stream` events; the run itself is a
child process (studio/training/worker.py), so this tab stays responsive and Stop always works.
"""

from __future__ import annotations

import inspect
import time

import gradio as gr

from studio.engine import Studio
from studio.errors import StudioError
from studio.models.kinds import ModelKind
from studio.training.events import TrainingEvent
from studio.training.plot import loss_curve
from studio.training.presets import PRESETS, estimate_vram, presets_for
from studio.training.request import LR_SCHEDULERS, MIXED_PRECISIONS, OPTIMIZERS, TrainingRequest, check_dataset
from studio.ui.common import GPU_QUEUE, stopper
from studio.ui.status import QUIET, reported

# Request fields set by the form, in the order of the handlers' parameters (and of the /train API).
FIELDS = [
    "data",
    "model",
    "name",
    "caption",
    "caption_column",
    "trigger",
    "steps",
    "rank",
    "alpha",
    "learning_rate",
    "resolution",
    "batch_size",
    "epochs",
    "gradient_accumulation",
    "lr_scheduler",
    "warmup_steps",
    "train_text_encoder",
    "gradient_checkpointing",
    "mixed_precision",
    "optimizer",
    "buckets",
    "random_flip",
    "seed",
    "min_snr_gamma",
    "noise_offset",
    "validation_prompt",
    "validation_every",
    "checkpoint_every",
    "samples",  # last: API callers that pass the fields by position keep working
]
PRESET_FIELDS = [
    "resolution",
    "batch_size",
    "gradient_accumulation",
    "rank",
    "alpha",
    "learning_rate",
    "gradient_checkpointing",
    "train_text_encoder",
    "mixed_precision",
    "optimizer",
]
UPDATE_EVERY = 0.5  # seconds between progress redraws; the loss curve keeps every step anyway


def _request(values: dict, *, resume: bool) -> TrainingRequest:
    """Form values -> request; blank/zero optional fields mean "not set"."""
    ints = {
        "steps",
        "rank",
        "resolution",
        "batch_size",
        "gradient_accumulation",
        "warmup_steps",
        "seed",
        "validation_every",
        "checkpoint_every",
    }
    values = {k: (int(v) if k in ints else v) for k, v in values.items()}
    values["epochs"] = int(values["epochs"]) if values["epochs"] else None
    values["min_snr_gamma"] = float(values["min_snr_gamma"]) if values["min_snr_gamma"] else None
    for key in ("caption", "trigger", "validation_prompt"):
        values[key] = (values[key] or "").strip() or None
    values["data"] = (values["data"] or "").strip()
    request = TrainingRequest(**values, resume=resume)
    request.validate()
    return request


def build_train_tab(studio: Studio) -> dict:
    kinds = {source.name: source.kind for source in studio.models()}
    default_kind = kinds.get(studio.config.default_model) or ModelKind.SD15
    preset = studio.training_preset(default_kind, wait=False)  # app.py refreshes it once the engine runs
    settings = preset.settings

    with gr.Row():
        data = gr.Textbox(label="Image folder", placeholder="/home/me/pictures/mountains", scale=4)
        check_button = gr.Button("Check data", scale=1)
    with gr.Row():
        caption_column = gr.Textbox("text", label="metadata.jsonl caption column")
        caption = gr.Textbox(label="Caption for images without metadata.jsonl or .txt", placeholder="satellite image")
        trigger = gr.Textbox(label="Trigger word (prepended)", placeholder="mtnsat")
    # Every skipped file is listed (a caption line naming a missing file must not hide); a long list scrolls.
    report = gr.Textbox(label="Data check", lines=6, max_lines=14, interactive=False, elem_id="train-data-report")
    with gr.Row():
        model = gr.Dropdown(
            [(s.label, s.name) for s in studio.models()], value=studio.config.default_model, label="Base model", scale=3
        )
        preset_box = gr.Dropdown(_preset_choices(default_kind), value=preset.name, label="Preset (VRAM)", scale=2)
        name = gr.Textbox(label="Adapter name (loras/<name>)", placeholder="alps-v1", scale=2)
    estimate = gr.Markdown(elem_id="train-vram-estimate")
    with gr.Row():
        steps = gr.Number(500, precision=0, label="Steps")
        rank = gr.Number(settings["rank"], precision=0, label="LoRA rank")
        alpha = gr.Number(settings["alpha"], label="LoRA alpha")
        learning_rate = gr.Number(settings["learning_rate"], label="Learning rate")
        resolution = gr.Number(settings["resolution"], precision=0, label="Resolution")
        batch_size = gr.Number(settings["batch_size"], precision=0, label="Batch size")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            epochs = gr.Number(0, precision=0, label="Epochs (0 = use steps)")
            gradient_accumulation = gr.Number(
                settings["gradient_accumulation"], precision=0, label="Gradient accumulation"
            )
            lr_scheduler = gr.Dropdown(list(LR_SCHEDULERS), value="constant_with_warmup", label="LR scheduler")
            warmup_steps = gr.Number(0, precision=0, label="Warm-up steps")
            seed = gr.Number(42, precision=0, label="Seed")
        with gr.Row():
            train_text_encoder = gr.Checkbox(settings["train_text_encoder"], label="Train text encoder(s)")
            gradient_checkpointing = gr.Checkbox(settings["gradient_checkpointing"], label="Gradient checkpointing")
            buckets = gr.Checkbox(True, label="Aspect-ratio buckets")
            random_flip = gr.Checkbox(True, label="Random flip")
            mixed_precision = gr.Dropdown(
                list(MIXED_PRECISIONS), value=settings["mixed_precision"], label="Mixed precision"
            )
            optimizer = gr.Dropdown(list(OPTIMIZERS), value=settings["optimizer"], label="Optimizer")
        with gr.Row():
            min_snr_gamma = gr.Number(0, label="Min-SNR gamma (0 = off, 5 typical)")
            noise_offset = gr.Number(0.0, label="Noise offset (0-0.1)")
            validation_prompt = gr.Textbox(label="Validation prompt (empty: first caption)")
            validation_every = gr.Number(100, precision=0, label="Sample every N steps (0 = end only)")
            checkpoint_every = gr.Number(100, precision=0, label="Checkpoint every N steps")
            samples = gr.Checkbox(True, label="Sample images (small, quick previews)")
    with gr.Row():
        start_button = gr.Button("Train", variant="primary", elem_id="train-button")
        stop_button = gr.Button("Stop", variant="stop", elem_id="train-stop-button")
        resume_button = gr.Button("Resume", elem_id="train-resume-button")
    status = gr.Markdown("Pick a folder and a base model, then press Train.", elem_id="train-status")
    with gr.Row():
        curve = gr.Image(loss_curve([]), label="Loss", interactive=False, format="png", elem_id="train-loss")
        gallery = gr.Gallery(
            label="Validation images (same seed each time)", columns=3, height=300, elem_id="train-samples"
        )

    form = [
        data,
        model,
        name,
        caption,
        caption_column,
        trigger,
        steps,
        rank,
        alpha,
        learning_rate,
        resolution,
        batch_size,
        epochs,
        gradient_accumulation,
        lr_scheduler,
        warmup_steps,
        train_text_encoder,
        gradient_checkpointing,
        mixed_precision,
        optimizer,
        buckets,
        random_flip,
        seed,
        min_snr_gamma,
        noise_offset,
        validation_prompt,
        validation_every,
        checkpoint_every,
        samples,
    ]
    preset_outputs = [
        resolution,
        batch_size,
        gradient_accumulation,
        rank,
        alpha,
        learning_rate,
        gradient_checkpointing,
        train_text_encoder,
        mixed_precision,
        optimizer,
    ]

    def stream(request: TrainingRequest):
        losses, images, shown, phases = [], [], 0.0, ""
        for event in studio.train_stream(request):
            if event.losses:  # a resumed run: the curve continues from the checkpoint's history
                losses = [tuple(point) for point in event.losses]
            if event.kind == "step":
                losses.append((event.step, event.loss))
            elif event.kind == "sample":
                images.append((event.path, f"step {event.step}"))
            elif event.kind == "phases":  # shown with the result: where the run's time went
                phases = f"\n\n```\n{event.message}\n```"
                continue
            if event.kind == "step" and time.monotonic() - shown < UPDATE_EVERY:
                continue  # skip redraws, not data
            shown = time.monotonic()
            text = _status_text(event) + (phases if event.kind == "done" else "")
            yield {status: text, curve: loss_curve(losses), gallery: list(images)}

    @reported(status, "Training")
    @_form_parameters
    def train(*values):
        yield from stream(_request(dict(zip(FIELDS, values)), resume=False))

    @reported(status, "Resume")
    @_form_parameters
    def resume(*values):
        yield from stream(_request(dict(zip(FIELDS, values)), resume=True))

    outputs = [status, curve, gallery]
    trained = start_button.click(train, inputs=form, outputs=outputs, api_name="train", **GPU_QUEUE, **QUIET)
    resumed = resume_button.click(
        resume, inputs=form, outputs=outputs, api_name="resume_training", **GPU_QUEUE, **QUIET
    )
    stop_button.click(stopper(studio, "training"), api_name="stop_training", queue=False)

    @reported(report, "Data check")  # the report box is the data check's status line
    @_form_parameters
    def check(*values):
        values = dict(zip(FIELDS, values))
        values["name"] = values["name"] or "unnamed"  # the data check does not need a name yet
        return check_dataset(_request(values, resume=False)).summary(max_skipped=None)

    check_button.click(check, inputs=form, outputs=report, api_name="check_training_data", **QUIET)

    def show_estimate(*values):
        values = dict(zip(FIELDS, values))
        kind = {s.name: s.kind for s in studio.models()}.get(values["model"]) or ModelKind.SD15
        try:
            values["name"], values["data"] = "estimate", values["data"] or "."
            request = _request(values, resume=False)
        except (StudioError, TypeError, ValueError) as error:  # half-typed fields: say why, not a stale number
            return f"VRAM estimate: fill in the settings ({error})"
        return estimate_vram(request, kind).summary() + f" for full-size {kind.label} on a GPU."

    gr.on(
        [c.change for c in [model] + preset_outputs],
        show_estimate,
        inputs=form,
        outputs=estimate,
        api_visibility="private",
    )

    def apply_preset(preset_name):
        preset = PRESETS.get(preset_name)
        if preset is None:
            return [gr.update()] * len(preset_outputs)
        return [preset.settings[field] for field in PRESET_FIELDS]

    preset_box.change(apply_preset, inputs=preset_box, outputs=preset_outputs, api_visibility="private")

    def preset_for(model_name):
        kind = {s.name: s.kind for s in studio.models()}.get(model_name) or ModelKind.SD15
        return kind, studio.training_preset(kind)

    def follow_model(model_name):
        kind, chosen = preset_for(model_name)
        return gr.Dropdown(choices=_preset_choices(kind), value=chosen.name)

    model.input(follow_model, inputs=model, outputs=preset_box, api_visibility="private")

    def preset_for_this_gpu(model_name, current):
        # The tab was built before the engine probed the GPU: on page load, switch only if this GPU takes another
        # preset (an unchanged dropdown fires no change, so settings typed meanwhile are kept).
        kind, chosen = preset_for(model_name)
        return gr.update() if chosen.name == current else gr.Dropdown(choices=_preset_choices(kind), value=chosen.name)

    # app.py chains the LoRA tab's rescan to these, so a finished adapter shows up there by itself.
    return {
        "model": model,
        "status": status,
        "gallery": gallery,
        "runs": [trained, resumed],
        "preset": preset_box,
        "preset_for_this_gpu": preset_for_this_gpu,
    }


def _form_parameters(handler):
    """Name a `*values` handler's parameters after FIELDS: they are the keyword names of its API endpoint."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__signature__ = inspect.Signature([inspect.Parameter(field, kind) for field in FIELDS])
    return handler


def _preset_choices(kind: ModelKind) -> list[tuple[str, str]]:
    return [(p.label, p.name) for p in presets_for(kind)]


def _status_text(event: TrainingEvent) -> str:
    if event.kind == "step":
        return event.progress_text()
    if event.kind == "done":
        return f"Done. The adapter is in `{event.path}` and in the LoRA tab's list."
    if event.kind == "stopped":
        kept = f" Checkpoint: `{event.path}`; press Resume with the same settings to continue." if event.path else ""
        return event.message + kept
    if event.kind in ("sample", "checkpoint"):
        return f"step {event.step}: {event.kind} saved"
    return event.message.splitlines()[0] if event.message else event.kind
