"""Generate tab: text to image, image to image and inpaint with one set of settings; progress, Stop, gallery, PNG info.

The page's Generate button reads every control and picks the mode; scripts get one endpoint per mode with plain
parameters (`/generate`, `/img2img`, `/inpaint`: images as files), whose every parameter but the prompt (and the
image) has a default. On the page a failure is told in the status line, never as an overlay on the fields.
"""

from __future__ import annotations

import time
from contextlib import closing

import gradio as gr
from PIL import Image

from studio.engine import Finished, LoadProgress, Studio, form_from_png_info, scheduler_names, size_presets
from studio.errors import InvalidRequestError, StudioError
from studio.generation.request import GenerationRequest, StepInfo
from studio.ui import image_inputs as modes
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
TRAINING_POLL = 1.0  # seconds between "queued behind training" updates


def model_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(source.label, source.name) for source in studio.models()]


def build_request(studio: Studio, mode: str, values: dict) -> GenerationRequest:
    """Form values of one mode -> request. Numbers arrive as floats from sliders and JSON; the request wants ints."""
    fields = {name: values[name] for name in FORM_FIELDS}
    for name in ("steps", "seed", "width", "height", "batch_size", "batch_count", "clip_skip"):
        fields[name] = int(fields[name] if fields[name] is not None else -1)
    fields["cfg"] = float(fields["cfg"])
    fields["model"] = (fields["model"] or "").strip() or studio.config.default_model
    fields["prompt"], fields["negative_prompt"] = fields["prompt"] or "", fields["negative_prompt"] or ""
    fields.update(modes.typed({name: values[name] for name in modes.MODE_FIELDS[mode] if name in values}))
    if mode != "txt2img":
        fields["init_image"] = values.get("image")
    if mode == "inpaint":
        fields["mask"] = values.get("mask")
    loras = tuple((name, float(weight)) for name, weight in (values.get("loras") or []))
    return GenerationRequest(**fields, loras=loras)


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
        mode = gr.Radio(list(modes.MODES), value="Text to image", label="Mode", scale=4, elem_id="generate-mode")
    with gr.Row():
        with gr.Column(scale=3):
            # The buttons sit beside the prompts, so Generate is in view on a 1280x720 screen whatever is below.
            with gr.Row(equal_height=False):
                with gr.Column(scale=5):
                    with gr.Row(equal_height=False):
                        prompt = gr.Textbox(
                            label="Prompt", lines=3, scale=12, placeholder="satellite image of snowy mountains"
                        )
                        prompt_tokens = gr.Markdown("0/75", elem_id="prompt-token-count", min_width=50)
                    with gr.Row(equal_height=False):
                        negative = gr.Textbox(
                            "", label="Negative prompt", lines=2, scale=12, placeholder="blurry, low quality"
                        )
                        negative_tokens = gr.Markdown("0/75", elem_id="negative-token-count", min_width=50)
                with gr.Column(scale=1, min_width=130):
                    generate_button = gr.Button("Generate", variant="primary", size="lg", elem_id="generate-button")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button")
                    stop_training = gr.Button("Stop training", visible=False, elem_id="generate-stop-training")
            boxes: dict = {}  # the containers that a mode shows or hides
            images = modes.build_image_inputs(boxes)
            with gr.Row():
                steps = gr.Slider(1, 150, value=25, step=1, precision=0, label="Steps")
                cfg = gr.Slider(0, 30, value=7.0, step=0.5, label="CFG scale")
                scheduler = gr.Dropdown(list(scheduler_names()), value="DPM++ 2M Karras", label="Sampler")
            with gr.Row():
                width = gr.Slider(64, 2048, value=512, step=8, precision=0, label="Width")
                height = gr.Slider(64, 2048, value=512, step=8, precision=0, label="Height")
                size_preset = gr.Dropdown(size_presets(), value=None, label="Size preset")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                random_seed = gr.Button("Random seed", size="sm", min_width=40)
                reuse_seed = gr.Button("♻ last seed", size="sm", min_width=40)
            with gr.Row():
                batch_size = gr.Slider(1, 8, value=1, step=1, precision=0, label="Batch size")
                batch_count = gr.Slider(1, 32, value=1, step=1, precision=0, label="Batch count")
                clip_skip = gr.Slider(1, 4, value=1, step=1, precision=0, label="Clip skip")
            hires = modes.build_hires_inputs(studio.upscalers(), boxes)
            with gr.Accordion("PNG info: read the parameters of a generated image", open=False):
                with gr.Row():
                    png_upload = gr.Image(
                        type="filepath", label="Drop a PNG", sources=["upload"], height=256, elem_id="png-upload"
                    )
                    with gr.Column():
                        png_text = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="png-info-text")
                        send_to_form = gr.Button("Send to Generate", elem_id="send-to-generate")
                        with gr.Row():
                            png_to_img2img = gr.Button("Send to img2img", size="sm", elem_id="png-to-img2img")
                            png_to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="png-to-inpaint")
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
            with gr.Row():
                gallery_to_img2img = gr.Button("Send to img2img", size="sm", elem_id="gallery-to-img2img")
                gallery_to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="gallery-to-inpaint")
            infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="infotext")
            # Hidden: an empty Number shows "0", a valid seed. The seed is in the status line and the infotext;
            # this holds it for "♻ last seed" and returns it as an int to API clients.
            last_seed = gr.Number(label="Seed used", precision=0, interactive=False, visible=False)
    # The inputs of the scripts' endpoints that the page does not show: a model name of any kind, images as files.
    with gr.Group(visible=False):
        api_model = gr.Textbox(studio.config.default_model, label="model")
        api_image = gr.Image(type="pil", image_mode="RGB", format="png", label="image")
        api_mask = gr.Image(type="pil", image_mode="L", format="png", label="mask (white = repaint)")
        # A1111's two switches, which the page shows as radios.
        api_switches = {name: gr.Checkbox(False, label=name) for name in ("inpaint_not_masked", "inpaint_full_res")}
        api_trigger = gr.Button("API")  # never shown or clicked: only carries the /generate, /img2img, /inpaint events

    session_images = gr.State([])
    selected = gr.State(None)  # the gallery image the Send buttons use: the clicked one, else the newest
    form = [model, prompt, negative, steps, cfg, seed, width, height, scheduler, batch_size, batch_count, clip_skip]
    shared = dict(zip(FORM_FIELDS, form))
    mode_controls = {name: images[name] for name in modes.INPAINT_FIELDS if name in images} | api_switches
    mode_controls |= {name: hires[name] for name in modes.HIRES_FIELDS}
    extras = {"session": session_images} | ({"loras": lora_picks} if lora_picks is not None else {})
    outputs = [status, preview, gallery, session_images, infotext, last_seed, selected]

    def stream(request: GenerationRequest, session: list, *, page: bool = False):
        total = request.batch_count
        with closing(studio.generate_stream(request)) as events:  # a closed page stops the work
            for event in events:
                if isinstance(event, LoadProgress):
                    yield {status: f"⏳ {event.message} ({event.fraction:.0%})"}
                elif isinstance(event, StepInfo) and event.stage == "first pass":
                    yield {status: f"Image {event.image_index + 1}/{total} · first pass done", preview: event.preview}
                elif isinstance(event, StepInfo):
                    shown = {preview: event.preview} if event.stage != "hires" else {}  # keep the first pass in view
                    yield {
                        status: f"Image {event.image_index + 1}/{total} · {'hires ' if event.stage else ''}step "
                        f"{event.step}/{event.total_steps} · ETA {format_seconds(event.eta)}",
                        **shown,
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
                        # On the page: back to the thumbnails (an enlarged older pick would not be what Send sends).
                        gallery: gr.Gallery(session, selected_index=None) if page else session,
                        session_images: session,
                        infotext: result.infotexts[0] if result.infotexts else "",
                        last_seed: result.seeds[0] if result.seeds else None,
                        selected: session[0] if session else None,
                    }

    def endpoint(mode_name: str):
        @user_errors
        def run(**values):  # the keyword names are the endpoint's parameter names for gradio_client
            yield from stream(build_request(studio, mode_name, values), values.get("session") or [])

        run.__name__ = mode_name
        return run

    endpoints = {
        "generate": ("txt2img", {}),
        "img2img": ("img2img", {"image": api_image}),
        "inpaint": ("inpaint", {"image": api_image, "mask": api_mask}),
    }
    for api_name, (mode_name, files) in endpoints.items():
        own = {name: mode_controls[name] for name in modes.MODE_FIELDS[mode_name]}
        named = files | shared | {"model": api_model} | own | extras
        api_trigger.click(endpoint(mode_name), inputs_kwargs=named, outputs=outputs, api_name=api_name, **GPU_QUEUE)

    def page_request(values: dict) -> GenerationRequest:
        picked = modes.MODES[values[mode]]
        fields = {name: values[component] for name, component in shared.items()}
        fields |= modes.page_values(images | hires, values)
        fields["loras"] = values.get(lora_picks) if lora_picks is not None else None
        if picked == "img2img":
            fields["image"] = values[images["init_image"]]
            if fields["image"] is None:
                raise InvalidRequestError(
                    "Image to image needs an input picture: drop, upload or paste one, or use Send to img2img."
                )
        elif picked == "inpaint":
            fields["image"], fields["mask"] = modes.editor_image_and_mask(
                values[images["editor"]], values[images["mask_upload"]]
            )
        return build_request(studio, picked, fields)

    def from_page(values):
        """The page's Generate (all controls as a dict); a failure goes to the status line, not an overlay."""
        try:
            yield from stream(page_request(values), values[session_images], page=True)
        except StudioError as error:
            yield {status: f"❌ Not generated: {error}"}

    def wait_for_training():
        # Generate shares the GPU queue with training; without this the page would show a silent spinner for hours.
        while (progress := studio.training_progress()) is not None:
            yield {
                status: f"⏳ Queued behind a LoRA training run ({progress}). Generate starts when it ends, "
                "or press Stop training.",
                stop_training: gr.update(visible=True),
            }
            time.sleep(TRAINING_POLL)
        yield {stop_training: gr.update(visible=False)}

    page_inputs = {mode, session_images, *form, *images.values(), *hires.values()}
    if lora_picks is not None:
        page_inputs.add(lora_picks)
    generate_button.click(
        wait_for_training,
        outputs=[status, stop_training],
        api_visibility="private",
        concurrency_id="training-wait",
        concurrency_limit=None,
        show_progress="hidden",
    ).then(from_page, inputs=page_inputs, outputs=outputs, api_visibility="private", **GPU_QUEUE)
    stop_button.click(stopper(studio, "generate"), api_name="stop", queue=False)
    stop_training.click(
        stopper(studio, "training"), api_name="generate_tab_stop_training", api_visibility="private", queue=False
    )

    mode.change(
        lambda label: modes.mode_visibility(boxes, label),
        inputs=mode,
        outputs=list(boxes.values()),
        api_visibility="private",
        queue=False,
    )

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

    def png_text_of(path) -> str:
        info = studio.read_png_info(path)
        return info.get("infotext", "This image has no generation parameters.")

    def show_png_info(upload):
        if not upload:
            return ""
        try:
            return png_text_of(_path(upload))
        except StudioError as error:  # in the box, where the user looks; the upload stays usable
            return f"❌ {error}"

    # preprocess=False: gradio's Image preprocessing decodes the upload (and fails on bombs and truncated files
    # with a generic error) before the reader could refuse it by name; the reader only needs the cached file.
    png_upload.change(show_png_info, inputs=png_upload, outputs=png_text, api_visibility="private", preprocess=False)
    api_trigger.click(
        user_errors(lambda upload: png_text_of(_path(upload)) if upload else ""),
        inputs=png_upload,
        outputs=png_text,
        api_name="png_info",
        preprocess=False,
    )

    # What an infotext can set: the shared settings, hires fix, and the image-to-image / inpaint controls.
    image_controls = ["strength", "resize_mode", "mask_blur", "masked_content", "inpaint_full_res_padding"]
    fillable = (
        dict(shared)
        | {name: hires[name] for name in modes.HIRES_FIELDS}
        | {name: images[name] for name in [*image_controls, "mask_mode", "inpaint_area"]}
    )

    def form_values(text: str, **known) -> list:
        from studio.generation.infotext import parse_infotext

        values = (form_from_png_info(parse_infotext(text)) if text else {}) | known
        if "inpaint_not_masked" in values:  # the page shows these two switches as radios
            values["mask_mode"] = modes.MASK_MODES[int(values.pop("inpaint_not_masked"))]
        if "inpaint_full_res" in values:
            values["inpaint_area"] = modes.INPAINT_AREAS[int(values.pop("inpaint_full_res"))]
        return [gr.update(value=values[name]) if name in values else gr.update() for name in fillable]

    send_to_form.click(form_values, inputs=png_text, outputs=list(fillable.values()), api_visibility="private")

    def send(target: str):
        """Send an image (a gallery pick or a PNG-info upload) to img2img or inpaint, with its parameters."""
        unchanged = [gr.update()] * (len(fillable) + 3)

        def handler(image):
            path = _path(image) if image else None
            if path is None:
                return unchanged + ["Pick an image in the gallery (or drop a PNG) first."]
            try:
                text = studio.read_png_info(path).get("infotext", "")  # refuses bombs before the size is read
                with Image.open(path) as opened:
                    width, height = (max(64, round(side / 8) * 8) for side in opened.size)
            except (StudioError, OSError) as error:
                return unchanged + [f"❌ {error}"]
            editor = {"background": path, "layers": [], "composite": path} if target == "inpaint" else gr.update()
            init = path if target == "img2img" else gr.update()
            note = f"Sent to {target}: paint a mask, then Generate." if target == "inpaint" else "Sent to img2img."
            # The picture's own size: after a hires fix it is larger than the infotext's first-pass size.
            return form_values(text, width=width, height=height) + [modes.mode_label(target), init, editor, note]

        return handler

    send_outputs = list(fillable.values()) + [mode, images["init_image"], images["editor"], status]
    for button, source, target in (
        (gallery_to_img2img, selected, "img2img"),
        (gallery_to_inpaint, selected, "inpaint"),
        (png_to_img2img, png_upload, "img2img"),
        (png_to_inpaint, png_upload, "inpaint"),
    ):
        button.click(send(target), inputs=source, outputs=send_outputs, api_visibility="private", preprocess=False)

    def pick(session, event: gr.SelectData):
        """A click on a session image shows its own parameters (read back from the PNG) and selects it."""
        path = session[event.index] if session and event.index < len(session) else None
        if path is None:
            return gr.update(), None
        try:
            return png_text_of(path), path
        except StudioError as error:
            return f"❌ {error}", path

    gallery.select(pick, inputs=session_images, outputs=[infotext, selected], api_visibility="private", queue=False)

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


def _path(value) -> str | None:
    """The file path of an Image value that was not preprocessed (a dict from the page) or a plain path."""
    if isinstance(value, dict):
        return value.get("path")
    return value
