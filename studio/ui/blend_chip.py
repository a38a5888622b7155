"""The "active blend" chip at the top of the Generate tab: which LoRAs the next image is drawn with.

The blend is chosen in the LoRA tab and belongs to a model kind (studio.lora.kind_blends): after a switch from an
SD1.5 model to an SDXL one the chip says the SD1.5 blend is kept but not applied, and switching back shows it again.
"""

from __future__ import annotations

import html

import gradio as gr

from studio.engine import Studio
from studio.errors import StudioError
from studio.lora import kind_blends

CSS = """
#blend-chip .chips { display: flex; flex-wrap: wrap; gap: 0.4em; font-size: 0.9em; }
#blend-chip .chip { border-radius: 999px; padding: 0.15em 0.8em; border: 1px solid var(--border-color-primary); }
#blend-chip .active { background: var(--color-accent-soft); }
#blend-chip .waiting { opacity: 0.75; font-style: italic; }
"""


def chip_html(studio: Studio, model: str | None, blends: dict | None) -> str:
    try:
        kind = studio.model_kind(model) if model else None
    except StudioError:  # a model name still being typed: its kind is not known
        kind = None
    if kind is None:
        active = "LoRA blend: none (the model's kind is not known until it loads)"
    else:
        active = f"LoRA blend ({kind.label}): {kind_blends.blend_text(kind_blends.blend_of(blends, kind))}"
    chips = [f'<span class="chip active" title="Change it in the LoRA tab">{html.escape(active)}</span>']
    for other, blend in kind_blends.waiting(blends, kind):
        text = f"{other.label} blend not applied: {kind_blends.blend_text(blend)}"
        title = f"Kept for {other.label} models; pick one to use it again."
        chips.append(f'<span class="chip waiting" title="{html.escape(title)}">{html.escape(text)}</span>')
    return f'<div class="chips">{"".join(chips)}</div>'


def build_blend_chip(studio: Studio) -> gr.HTML:
    """Place the chip where the layout is being built; `wire_blend_chip` connects it once both tabs exist."""
    return gr.HTML(chip_html(studio, studio.config.default_model, {}), elem_id="blend-chip")


def wire_blend_chip(chip: gr.HTML, studio: Studio, *, model, blends: gr.State) -> None:
    def show(model_name, stored):
        return chip_html(studio, model_name, stored)

    for event in (model.change, blends.change):
        event(show, inputs=[model, blends], outputs=chip, api_visibility="private", queue=False, show_progress="hidden")
