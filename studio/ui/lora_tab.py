"""LoRA tab: the library (incompatible adapters greyed with the reason), a live blend with strength sliders,
fuse, "save blend as new LoRA", import from the Hub (same-seed comparisons are the Compare tab, plot_tab.py).

The blend applies as soon as a slider is released (one `set_adapters` call on adapters that stay loaded) and
is shared with the Generate tab through `lora_picks`, so the next generation uses it.
"""

from __future__ import annotations

import html
from contextlib import closing

import gradio as gr
from PIL import Image

from studio.engine import LoadProgress, Studio
from studio.errors import StudioError
from studio.lora.requests import BlendRequest, SaveBlendRequest
from studio.ui.common import GPU_QUEUE, user_errors

SLOTS = 4


def library_view(studio: Studio, model: str | None):
    """(HTML table, names usable with the model, preview images) for the current model."""
    try:
        kind = studio.model_kind(model) if model else None
    except StudioError:  # an unknown model name: list everything; applying the blend reports the real problem
        kind = None
    entries = studio.loras()
    rows, usable, previews = [], [], []
    for entry in entries:
        reason = entry.problem if kind is None else entry.incompatibility(kind)
        if reason is None:
            usable.append(entry.name)
        if entry.preview is not None and reason is None:
            previews.append((_thumbnail(entry.preview), entry.name))
        cells = [
            entry.name,
            entry.kind.label if entry.kind else "?",
            entry.format,
            entry.rank or "?",
            ", ".join(entry.components),
            ", ".join(entry.trigger_words),
            entry.addnet_hash or "",
            reason or "ok",
        ]
        style = ' style="opacity:0.45"' if reason else ""
        title = f' title="{html.escape(reason)}"' if reason else ""
        rows.append(f"<tr{style}{title}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ["Name", "Kind", "Format", "Rank", "Parts", "Triggers", "Hash", "Status"])
    table = (
        (
            f'<div style="overflow-x:auto"><table class="lora-library" style="font-size:0.85em">'
            f"<tr>{header}</tr>{''.join(rows)}</table></div>"
        )
        if rows
        else ("<p>No LoRAs yet: put .safetensors files or adapter folders in loras/, train one, or import one.</p>")
    )
    return table, usable, previews


def _thumbnail(path) -> Image.Image:
    """Previews live in loras/, which the server does not serve: hand Gradio a small in-memory copy."""
    with Image.open(path) as image:
        image.thumbnail((256, 256))
        return image.convert("RGB")


def _blend(names, weights) -> tuple[tuple[str, float], ...]:
    return tuple((name, float(weight)) for name, weight in zip(names, weights) if name)


def build_lora_tab(studio: Studio, *, model, lora_picks: gr.State) -> dict:
    """Build the tab; `model` is the Generate tab's model picker, `lora_picks` the blend it generates with."""
    with gr.Row():
        with gr.Column(scale=3):
            library = gr.HTML(elem_id="lora-library")
            rescan = gr.Button("↻ Rescan loras/", size="sm", elem_id="lora-rescan")
            previews = gr.Gallery(label="Previews", columns=4, height=200, elem_id="lora-previews")
            with gr.Accordion("Import from the Hugging Face Hub", open=False):
                repo_id = gr.Textbox(label="Repo id", placeholder="user/my-lora", elem_id="lora-import-repo")
                token = gr.Textbox(label="Token (only for private repos; never saved)", type="password")
                import_button = gr.Button("Import", elem_id="lora-import")
        with gr.Column(scale=2):
            picks, weights = [], []
            for i in range(SLOTS):
                with gr.Row():
                    # Custom values: API clients name adapters directly; the engine checks every name.
                    picks.append(
                        gr.Dropdown(
                            [],
                            value=None,
                            label=f"LoRA {i + 1}",
                            scale=3,
                            allow_custom_value=True,
                            elem_id=f"lora-pick-{i}",
                        )
                    )
                    weights.append(
                        gr.Slider(-2, 2, value=1.0, step=0.05, label="Strength", scale=2, elem_id=f"lora-weight-{i}")
                    )
            te_scale = gr.Slider(
                -2,
                2,
                value=1.0,
                step=0.05,
                label="Text-encoder strength (x each LoRA's strength)",
                elem_id="lora-te-scale",
            )
            fuse = gr.Checkbox(label="Fuse the blend into the weights (faster; undone when the blend changes)")
            apply_button = gr.Button("Apply blend", variant="primary", elem_id="lora-apply")
            status = gr.Markdown("No blend applied.", elem_id="lora-status")
            with gr.Accordion("Save blend as new LoRA", open=False):
                save_name = gr.Textbox(label="New LoRA name", placeholder="my_blend", elem_id="lora-save-name")
                overwrite = gr.Checkbox(label="Overwrite an existing LoRA of that name")
                save_button = gr.Button("Save blend", elem_id="lora-save")

    @user_errors
    def refresh(model_name, *slots):
        """The library for this model; picks it cannot use are cleared, and Generate's blend with them."""
        table, usable, images = library_view(studio, model_name)
        kept = [name if name in usable else None for name in slots[:SLOTS]]
        picked = [list(pair) for pair in _blend(kept, slots[SLOTS:])]
        return [table, images, picked, *[gr.update(choices=usable, value=name) for name in kept]]

    refresh_inputs = [model, *picks, *weights]
    refresh_outputs = [library, previews, lora_picks, *picks]
    rescan.click(refresh, inputs=refresh_inputs, outputs=refresh_outputs, api_name="lora_library")
    model.change(refresh, inputs=refresh_inputs, outputs=refresh_outputs, api_visibility="private")

    @user_errors
    def apply(model_name, te, fuse_on, *slots):
        blend = _blend(slots[:SLOTS], slots[SLOTS:])
        applied = studio.apply_blend(
            BlendRequest(model=model_name, loras=blend, text_encoder_scale=float(te), fuse=bool(fuse_on))
        )
        text = ", ".join(f"{name} {weight:g} ({short_hash})" for name, weight, short_hash in applied) or "no LoRA"
        fused = " · fused" if fuse_on and applied else ""
        return f"Blend on {model_name}: {text} · text encoders x{float(te):g}{fused}", [list(p) for p in blend]

    blend_inputs = [model, te_scale, fuse, *picks, *weights]
    apply_button.click(apply, inputs=blend_inputs, outputs=[status, lora_picks], api_name="apply_blend", **GPU_QUEUE)
    for control in [*weights, te_scale]:
        control.release(apply, inputs=blend_inputs, outputs=[status, lora_picks], api_visibility="private", **GPU_QUEUE)
    for control in [*picks, fuse]:
        control.input(apply, inputs=blend_inputs, outputs=[status, lora_picks], api_visibility="private", **GPU_QUEUE)

    @user_errors
    def save(model_name, name, overwrite_on, te, *slots):
        request = SaveBlendRequest(
            name=(name or "").strip(),
            loras=_blend(slots[:SLOTS], slots[SLOTS:]),
            kind=studio.model_kind(model_name),
            base_model=model_name,
            text_encoder_scale=float(te),
            overwrite=bool(overwrite_on),
        )
        folder = studio.save_blend(request)
        table, _usable, images = library_view(studio, model_name)
        return f"Saved {folder.name}: use it alone at strength 1 to get this blend.", table, images

    save_button.click(
        save,
        inputs=[model, save_name, overwrite, te_scale, *picks, *weights],
        outputs=[status, library, previews],
        api_name="save_blend",
    )

    @user_errors
    def import_lora(repo, token_value, *refresh_args):
        with closing(studio.import_lora_stream((repo or "").strip(), token_value or None)) as events:
            for event in events:
                if isinstance(event, LoadProgress):
                    yield [f"⏳ {event.message} ({event.fraction:.0%})"] + [gr.update()] * len(refresh_outputs)
                else:
                    yield [f"Imported into loras/{event.name}."] + refresh(*refresh_args)

    # Not a GPU event: a download must not wait behind a generation, nor block one.
    import_button.click(
        import_lora,
        inputs=[repo_id, token, *refresh_inputs],
        outputs=[status, *refresh_outputs],
        api_name="import_lora",
    )
    return {
        "library": library,
        "picks": picks,
        "weights": weights,
        "status": status,
        "refresh": (refresh, refresh_inputs, refresh_outputs),
    }
