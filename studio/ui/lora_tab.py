"""LoRA tab: the library (incompatible adapters greyed with the reason), adapter cards that add `<lora:name:1>` to
the Generate prompt, a live blend with strength sliders, fuse, "save blend as new LoRA", import from the Hub
(same-seed comparisons are the Compare tab, plot_tab.py).

The blend applies as soon as a slider is released (one `set_adapters` call on adapters that stay loaded) and
is shared with the Generate tab through `lora_picks`, so the next generation uses it. A blend belongs to a model
kind (`blends`, see studio.lora.kind_blends): switching to an SDXL model puts the SD1.5 blend aside, and switching
back restores it. Failures are written to the status line (studio.ui.status), not over the form.
"""

from __future__ import annotations

import html
from contextlib import closing

import gradio as gr
from PIL import Image, ImageDraw

from studio.engine import LoadProgress, Studio
from studio.errors import StudioError
from studio.lora import kind_blends
from studio.lora.requests import BlendRequest, SaveBlendRequest
from studio.ui.common import GPU_QUEUE
from studio.ui.status import QUIET, reported

SLOTS = 4


def _kind(studio: Studio, model: str | None):
    try:
        return studio.model_kind(model) if model else None
    except StudioError:  # an unknown model name: list everything; applying the blend reports the real problem
        return None


def library_view(studio: Studio, model: str | None):
    """(HTML table, names usable with the model, their cards as (image, caption)) for the current model."""
    kind = _kind(studio, model)
    entries = studio.loras()
    rows, usable, cards = [], [], []
    for entry in entries:
        reason = entry.problem if kind is None else entry.incompatibility(kind)
        if reason is None:
            usable.append(entry.name)
            cards.append((_card_image(entry), _card_caption(entry)))
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
    return table, usable, cards


def _card_image(entry) -> Image.Image:
    """The adapter's preview, or its name on a plain tile. Previews live in loras/, which the server does not
    serve: hand Gradio a small in-memory copy."""
    if entry.preview is not None:
        with Image.open(entry.preview) as image:
            image.thumbnail((256, 256))
            return image.convert("RGB")
    tile = Image.new("RGB", (256, 256), (226, 228, 236))
    ImageDraw.Draw(tile).text((16, 116), entry.name[:30], fill=(60, 60, 80))
    return tile


def _card_caption(entry) -> str:
    triggers = f" · triggers: {', '.join(entry.trigger_words)}" if entry.trigger_words else ""
    return f"{entry.name} · {entry.kind.label if entry.kind else '?'}{triggers}"


def add_to_prompt(prompt: str, entry, weight: float = 1.0) -> str:
    """The prompt with `<lora:name:w>` and the adapter's trigger words it does not have yet, as A1111's cards do."""
    words = [f"<lora:{entry.name}:{weight:g}>"] + [w for w in entry.trigger_words if w not in (prompt or "")]
    return ", ".join(part for part in [(prompt or "").strip().rstrip(","), " ".join(words)] if part)


def _blend(names, weights) -> tuple[tuple[str, float], ...]:
    return tuple((name, float(weight)) for name, weight in zip(names, weights) if name)


def build_lora_tab(studio: Studio, *, model, lora_picks: gr.State, blends: gr.State, generate_prompt=None) -> dict:
    """Build the tab; `model` is the Generate tab's model picker, `lora_picks` the blend it generates with,
    `blends` the blend of each model kind, `generate_prompt` the prompt box the adapter cards write to."""
    with gr.Row():
        with gr.Column(scale=3):
            library = gr.HTML(elem_id="lora-library")
            rescan = gr.Button("↻ Rescan loras/", size="sm", elem_id="lora-rescan")
            cards = gr.Gallery(
                label="Adapters for this model: click one to add it to the Generate prompt",
                columns=4,
                height=240,
                allow_preview=False,
                elem_id="lora-cards",
            )
            card_names = gr.State([])  # the adapter of each card, in order
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

    def library_outputs(model_name, stored, *slots):
        """The library for this model; picks it cannot use are dropped, from Generate's blend too."""
        table, usable, card_list = library_view(studio, model_name)
        kept = [name if name in usable else None for name in slots[:SLOTS]]
        picked = [list(pair) for pair in _blend(kept, slots[SLOTS:])]
        dropped = [name for name in slots[:SLOTS] if name and name not in usable]
        kind = _kind(studio, model_name)
        stored = kind_blends.remember(stored, kind, picked)
        note = gr.update()
        if dropped:  # say so: the status line must not describe a blend that is gone
            note = f"Not usable with {model_name}, taken out of the blend: {', '.join(dropped)}. "
            note += kind_blends.summary(stored, kind, model_name)
        return [
            table,
            card_list,
            picked,
            stored,
            usable,  # one card per usable adapter, in this order
            *[gr.update(choices=usable, value=name) for name in kept],
            note,
        ]

    @reported(status, "Rescanning loras/")
    def refresh(model_name, stored, *slots):
        return library_outputs(model_name, stored, *slots)

    refresh_inputs = [model, blends, *picks, *weights]
    refresh_outputs = [library, cards, lora_picks, blends, card_names, *picks, status]
    rescan.click(refresh, inputs=refresh_inputs, outputs=refresh_outputs, api_name="lora_library", **QUIET)

    @reported(status, "Switching the model")
    def switch(model_name, stored):
        """Another model in the picker: show the blend of its kind (kept from the last time), not the old one."""
        kind = _kind(studio, model_name)
        blend = kind_blends.blend_of(stored, kind)
        table, usable, card_list = library_view(studio, model_name)
        blend = [[name, weight] for name, weight in blend if name in usable]  # a deleted adapter is left out
        stored = kind_blends.remember(stored, kind, blend)
        slots = blend + [[None, 1.0]] * (SLOTS - len(blend))
        return [
            table,
            card_list,
            blend,
            stored,
            usable,
            *[gr.update(choices=usable, value=name) for name, _w in slots[:SLOTS]],
            *[weight for _name, weight in slots[:SLOTS]],
            kind_blends.summary(stored, kind, model_name or "?"),
        ]

    switch_outputs = [library, cards, lora_picks, blends, card_names, *picks, *weights, status]
    model.change(switch, inputs=[model, blends], outputs=switch_outputs, api_visibility="private", **QUIET)

    @reported(status, "Applying the blend")
    def apply(model_name, te, fuse_on, stored, *slots):
        blend = _blend(slots[:SLOTS], slots[SLOTS:])
        applied = studio.apply_blend(
            BlendRequest(model=model_name, loras=blend, text_encoder_scale=float(te), fuse=bool(fuse_on))
        )
        kind = studio.model_kind(model_name)
        stored = kind_blends.remember(stored, kind, blend)
        text = ", ".join(f"{name} {weight:g} ({short_hash})" for name, weight, short_hash in applied) or "no LoRA"
        fused = " · fused" if fuse_on and applied else ""
        waiting = "".join(
            f" · {other.label} blend kept, not applied: {kind_blends.blend_text(b)}"
            for other, b in kind_blends.waiting(stored, kind)
        )
        status_text = f"Blend on {model_name}: {text} · text encoders x{float(te):g}{fused}{waiting}"
        return status_text, [list(p) for p in blend], stored

    blend_inputs = [model, te_scale, fuse, blends, *picks, *weights]
    blend_outputs = [status, lora_picks, blends]
    apply_button.click(apply, inputs=blend_inputs, outputs=blend_outputs, api_name="apply_blend", **GPU_QUEUE, **QUIET)
    for control in [*weights, te_scale]:
        control.release(
            apply, inputs=blend_inputs, outputs=blend_outputs, api_visibility="private", **GPU_QUEUE, **QUIET
        )
    for control in [*picks, fuse]:
        control.input(apply, inputs=blend_inputs, outputs=blend_outputs, api_visibility="private", **GPU_QUEUE, **QUIET)

    @reported(status, "Saving the blend")
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
        table, _usable, card_list = library_view(studio, model_name)
        return f"Saved {folder.name}: use it alone at strength 1 to get this blend.", table, card_list

    saved = save_button.click(
        save,
        inputs=[model, save_name, overwrite, te_scale, *picks, *weights],
        outputs=[status, library, cards],
        api_name="save_blend",
        **QUIET,
    )
    saved.success(refresh, inputs=refresh_inputs, outputs=refresh_outputs, api_visibility="private", **QUIET)

    if generate_prompt is not None:  # (`prompt` below is the comparison's own prompt box)

        @reported(status, "Adding the LoRA to the prompt")
        def card_clicked(prompt_text, names, selected: gr.SelectData):
            entry = kind_blends.usable_lora(studio.config.loras_dir, names[selected.index], None)
            new_prompt = add_to_prompt(prompt_text, entry)
            return new_prompt, f"Added `<lora:{entry.name}:1>` to the Generate prompt: `{new_prompt}`"

        cards.select(
            card_clicked,
            inputs=[generate_prompt, card_names],
            outputs=[generate_prompt, status],
            api_visibility="private",
        )

    @reported(status, "Import")
    def import_lora(repo, token_value, *refresh_args):
        yield {status: f"⏳ Importing {repo}…"}
        with closing(studio.import_lora_stream((repo or "").strip(), token_value or None)) as events:
            for event in events:
                if isinstance(event, LoadProgress):
                    yield {status: f"⏳ {event.message} ({event.fraction:.0%})"}
                else:  # the new adapter shows up in the list, the cards and the pickers at once
                    yield library_outputs(*refresh_args)[:-1] + [f"Imported into loras/{event.name}."]

    # Not a GPU event: a download must not wait behind a generation, nor block one.
    imported = import_button.click(
        import_lora,
        inputs=[repo_id, token, *refresh_inputs],
        outputs=refresh_outputs,
        api_name="import_lora",
        **QUIET,
    )
    return {
        "library": library,
        "cards": cards,
        "picks": picks,
        "weights": weights,
        "status": status,
        "refresh": (refresh, refresh_inputs, refresh_outputs),
        "switch": (switch, [model, blends], switch_outputs),
        "changed": [saved, imported],  # events after which loras/ holds a new adapter
    }
