"""Generate tab: the prompt form, live progress with preview, Stop, the session gallery, PNG info."""

from __future__ import annotations

from contextlib import closing

import gradio as gr

from studio.engine import Finished, LoadProgress, Studio, form_from_png_info, scheduler_names, size_presets
from studio.generation.request import GenerationRequest, StepInfo
from studio.ui.common import GPU_QUEUE, format_seconds, stopper, user_errors

FORM_FIELDS = [
    "model",
    "prompt",
    "negative_prompt",
    "steps",
    "cfg",
    "seed",
    "width",
    "height",
    "scheduler",
    "batch_size",
    "batch_count",
    "clip_skip",
]


def model_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(source.label, source.name) for source in studio.models()]


def build_generate_tab(studio: Studio, *, lora_picks: gr.State | None = None) -> dict:
    """Build the tab inside the current Blocks; returns its components for other tabs to wire to."""
    with gr.Row():
        # Custom values: a Hub id or a file added after start can be typed (the engine checks the name).
        model = gr.Dropdown(
            model_choices(studio),
            value=studio.config.default_model,
            label="Model",
            scale=4,
            allow_custom_value=True,
            elem_id="model-picker",
        )
        refresh = gr.Button("↻ Rescan models", scale=1, size="sm")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="satellite image of snowy mountains, high detail")
            prompt_tokens = gr.Markdown("0/75", elem_id="prompt-token-count")
            negative = gr.Textbox(label="Negative prompt", lines=2, placeholder="blurry, low quality")
            negative_tokens = gr.Markdown("0/75", elem_id="negative-token-count")
            with gr.Row():
                steps = gr.Slider(1, 150, value=25, step=1, label="Steps")
                cfg = gr.Slider(0, 30, value=7.0, step=0.5, label="CFG scale")
                scheduler = gr.Dropdown(list(scheduler_names()), value="DPM++ 2M Karras", label="Sampler")
            with gr.Row():
                width = gr.Slider(64, 2048, value=512, step=8, label="Width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height")
                size_preset = gr.Dropdown(size_presets(), value=None, label="Size preset")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                random_seed = gr.Button("Random seed", size="sm", min_width=40)
                reuse_seed = gr.Button("♻ last seed", size="sm", min_width=40)
            with gr.Row():
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size")
                batch_count = gr.Slider(1, 32, value=1, step=1, label="Batch count")
                clip_skip = gr.Slider(1, 4, value=1, step=1, label="Clip skip")
            with gr.Row():
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button")
            # Under the buttons, so the form column is not half empty next to the tall results column.
            with gr.Accordion("PNG info: read the parameters of a generated image", open=False):
                with gr.Row():
                    png_upload = gr.Image(
                        type="filepath", label="Drop a PNG", sources=["upload"], height=256, elem_id="png-upload"
                    )
                    with gr.Column():
                        png_text = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="png-info-text")
                        send_to_form = gr.Button("Send to Generate", elem_id="send-to-generate")
            with gr.Accordion("Embeddings: write a name in a prompt to use it", open=False) as embeddings_panel:
                embeddings_table = gr.Dataframe(
                    headers=["name", "base", "vectors", "hash", "problem"],
                    interactive=False,
                    wrap=True,
                    elem_id="embeddings-table",
                )
                embeddings_refresh = gr.Button("↻ Rescan embeddings", size="sm")
            with gr.Accordion("Output history", open=False) as history_panel:
                history_gallery = gr.Gallery(
                    columns=6, height=360, label="Saved images (newest first)", elem_id="history-gallery"
                )
                history_refresh = gr.Button("↻ Refresh history", size="sm")
        with gr.Column(scale=2):
            status = gr.Markdown("Ready.", elem_id="generate-status")
            preview = gr.Image(label="Preview", interactive=False, height=256, elem_id="live-preview")
            gallery = gr.Gallery(label="This session", columns=3, height=420, elem_id="session-gallery", format="png")
            infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="infotext")
            # Hidden: an empty Number shows "0", a valid seed. The seed is in the status line and the infotext;
            # this holds it for "♻ last seed" and returns it as an int to API clients.
            last_seed = gr.Number(label="Seed used", precision=0, interactive=False, visible=False)

    session_images = gr.State([])
    form = [model, prompt, negative, steps, cfg, seed, width, height, scheduler, batch_size, batch_count, clip_skip]
    lora_inputs = [lora_picks] if lora_picks is not None else []

    @user_errors
    def run_generation(
        model,
        prompt,
        negative_prompt,
        steps,
        cfg,
        seed,
        width,
        height,
        scheduler,
        batch_size,
        batch_count,
        clip_skip,
        session,
        loras=None,
    ):
        # Named parameters become the keyword names of the /generate API for gradio_client.
        request = GenerationRequest(
            model=model,
            prompt=prompt or "",
            negative_prompt=negative_prompt or "",
            steps=int(steps),
            cfg=float(cfg),
            seed=int(seed if seed is not None else -1),
            width=int(width),
            height=int(height),
            scheduler=scheduler,
            batch_size=int(batch_size),
            batch_count=int(batch_count),
            clip_skip=int(clip_skip),
            loras=tuple((name, float(weight)) for name, weight in (loras or [])),
        )
        total = request.batch_count
        with closing(studio.generate_stream(request)) as events:  # a closed page stops the work
            for event in events:
                if isinstance(event, LoadProgress):
                    yield {status: f"⏳ {event.message} ({event.fraction:.0%})"}
                elif isinstance(event, StepInfo):
                    yield {
                        status: f"Image {event.image_index + 1}/{total} · step {event.step}/{event.total_steps} · "
                        f"ETA {format_seconds(event.eta)}",
                        preview: event.preview,
                    }
                elif isinstance(event, Finished):
                    paths = [str(p) for p in event.paths]
                    session = paths[::-1] + list(session)
                    result = event.result
                    note = "Stopped." if result.interrupted else "Done."
                    first_seed = result.seeds[0] if result.seeds else "-"
                    yield {
                        status: f"{note} {len(paths)} image(s) in {result.seconds:.1f}s, seed {first_seed}.",
                        # The last step's preview is a small latent sketch; show the finished image instead.
                        preview: paths[0] if paths else None,
                        gallery: session,
                        session_images: session,
                        infotext: result.infotexts[0] if result.infotexts else "",
                        last_seed: result.seeds[0] if result.seeds else None,
                    }

    generate_button.click(
        run_generation,
        inputs=form + [session_images] + lora_inputs,
        outputs=[status, preview, gallery, session_images, infotext, last_seed],
        api_name="generate",
        **GPU_QUEUE,
    )
    stop_button.click(stopper(studio, "generate"), api_name="stop", queue=False)

    def refresh_models():
        return gr.Dropdown(choices=model_choices(studio))

    refresh.click(refresh_models, outputs=model, api_name="list_models")

    def native_size(name):
        # SDXL draws badly at 512 px and SD1.5 at 1024: follow the model's native size on a switch.
        kinds = {source.name: source.kind for source in studio.models()}
        kind = kinds.get(name)
        if kind is None:
            return gr.update(), gr.update()
        return kind.native_size, kind.native_size

    model.input(native_size, inputs=model, outputs=[width, height], api_visibility="private")

    def count_tokens(model, text):
        return studio.count_tokens(model, text or "")

    # Light and frequent (every keystroke): no queue, so the counter never waits behind a generation.
    counter = dict(api_visibility="private", queue=False, show_progress="hidden")
    for box, shown in ((prompt, prompt_tokens), (negative, negative_tokens)):
        box.change(count_tokens, inputs=[model, box], outputs=shown, **counter)
        model.change(count_tokens, inputs=[model, box], outputs=shown, **counter)

    random_seed.click(lambda: -1, outputs=seed, api_visibility="private")
    reuse_seed.click(
        lambda used: -1 if used is None else used, inputs=last_seed, outputs=seed, api_visibility="private"
    )

    def apply_preset(label):
        if not label:
            return gr.update(), gr.update()
        w, h = label.split(" ")[0].split("x")
        return int(w), int(h)

    size_preset.change(apply_preset, inputs=size_preset, outputs=[width, height], api_visibility="private")

    @user_errors
    def read_png(upload):
        if not upload:
            return ""
        info = studio.read_png_info(upload["path"] if isinstance(upload, dict) else upload)
        return info.get("infotext", "This image has no generation parameters.")

    # preprocess=False: gradio's Image preprocessing decodes the upload (and fails on bombs and truncated files
    # with a generic error) before read_png could refuse it by name; the reader only needs the cached file.
    png_upload.change(read_png, inputs=png_upload, outputs=png_text, api_name="png_info", preprocess=False)

    def fill_form(text):
        from studio.generation.infotext import parse_infotext

        values = form_from_png_info(parse_infotext(text)) if text else {}
        return [gr.update(value=values[name]) if name in values else gr.update() for name in FORM_FIELDS]

    send_to_form.click(fill_form, inputs=png_text, outputs=form, api_visibility="private")

    def list_embeddings():
        return studio.embeddings()

    embeddings_refresh.click(list_embeddings, outputs=embeddings_table, api_name="list_embeddings", queue=False)
    embeddings_panel.expand(list_embeddings, outputs=embeddings_table, api_visibility="private", queue=False)

    def list_history():
        return [str(p) for p in studio.history()]

    history_refresh.click(list_history, outputs=history_gallery, api_name="history")
    history_panel.expand(list_history, outputs=history_gallery, api_visibility="private")  # fresh on every open

    return {
        "model": model,
        "prompt": prompt,
        "seed": seed,
        "width": width,
        "height": height,
        "gallery": gallery,
        "form": form,  # in FORM_FIELDS order: the Compare tab plots with these settings and fills them back
    }
