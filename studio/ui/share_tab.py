"""Share tab: push an adapter from loras/ to a Hugging Face Hub repository, with progress and the repo URL.

The token field is a password box used for this push only: it is cleared when the push ends and never saved.
A failed push says in the status line what failed and what to do, and leaves the form (token included) as it was.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import gradio as gr

from studio.engine import LoadProgress, Studio
from studio.hub.adapters import PushRequest
from studio.ui.common import stopper
from studio.ui.status import QUIET, reported


def build_share_tab(studio: Studio) -> dict:
    """Build the tab inside the current Blocks; returns its components."""
    gr.Markdown(
        "Upload any adapter of the LoRA folder (its LoRA files, samples and a model card built from its header) "
        "to the Hugging Face Hub. Local paths are reduced to names. "
        "The repository is created if needed; pushing again updates it."
    )
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                # Custom values: an adapter made after the page (or an API session) opened is pushable by name;
                # the engine checks every name against the LoRA folder.
                adapter = gr.Dropdown(
                    studio.shareable_adapters(),
                    label="Adapter",
                    scale=4,
                    elem_id="share-adapter",
                    allow_custom_value=True,
                )
                refresh = gr.Button("↻ Rescan", scale=1, size="sm")
            repo_id = gr.Textbox(label="Repository", placeholder="your-name/alps-lora", elem_id="share-repo")
            with gr.Row():
                private = gr.Checkbox(label="Private (when created)", value=False)
                license = gr.Textbox(label="License", placeholder="default: the base model's", scale=2)
            tags = gr.Textbox(label="Extra tags (comma-separated)", placeholder="remote-sensing, mountains")
            message = gr.Textbox(label="Commit message", placeholder="Upload <adapter> with Studio")
            token_field = gr.Textbox(
                label="Hub token (optional; otherwise HF_TOKEN or your hf auth login is used)",
                type="password",
                placeholder="hf_... (write access; used for this push only, never saved)",
                elem_id="share-token",
            )
            with gr.Row():
                push_button = gr.Button("Push to the Hub", variant="primary", elem_id="push-button")
                stop_button = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            status = gr.Markdown("Ready.", elem_id="push-status")
            url = gr.Textbox(label="Repository URL", interactive=False, elem_id="push-url", buttons=["copy"])
            preview_button = gr.Button("Preview the model card", size="sm")
            card = gr.Code(label="README.md that will be uploaded", language="markdown", lines=12, elem_id="card")

    def request_from(adapter, repo_id, private, tags, license, message, token) -> PushRequest:
        return PushRequest(
            name=adapter or "",
            repo_id=(repo_id or "").strip(),
            loras_dir=Path(studio.config.loras_dir),
            private=bool(private),
            tags=tuple(t.strip() for t in (tags or "").split(",") if t.strip()),
            license=(license or "").strip() or None,
            message=message or "",
            token=token or None,
        )

    @reported(status, "Push")
    def push(adapter, repo_id, private, tags, license, message, token):
        # Named parameters become the keyword names of the /push API for gradio_client.
        request = request_from(adapter, repo_id, private, tags, license, message, token)
        yield {status: f"⏳ Pushing **{adapter}** to {request.repo_id}…"}
        with closing(studio.push_stream(request)) as events:  # a closed page stops the work
            for event in events:
                if isinstance(event, LoadProgress):
                    yield {status: f"⏳ {event.fraction:.0%} · {event.message}"}
                else:
                    yield {status: f"Done: pushed **{adapter}** to [{event}]({event})", url: event, token_field: ""}

    pushed = push_button.click(
        push,
        inputs=[adapter, repo_id, private, tags, license, message, token_field],
        outputs=[status, url, token_field],
        api_name="push",
        concurrency_id="hub",
        concurrency_limit=1,
        **QUIET,
    )

    @reported(status, "Model card preview")
    def preview_card(adapter, repo_id, private, tags, license, message):
        return {card: studio.model_card_preview(request_from(adapter, repo_id, private, tags, license, message, None))}

    preview_button.click(
        preview_card,
        inputs=[adapter, repo_id, private, tags, license, message],
        outputs=[card, status],
        api_name="preview_card",
        **QUIET,
    )
    stop_button.click(stopper(studio, "push"), api_name="stop_push", queue=False)

    def list_adapters():
        return gr.Dropdown(choices=studio.shareable_adapters())

    refresh.click(list_adapters, outputs=adapter, api_name="list_adapters")
    # A push can also add a model card or samples to an adapter: the list is read afresh after one.
    pushed.then(list_adapters, outputs=adapter, api_visibility="private")
    return {
        "adapter": adapter,
        "repo_id": repo_id,
        "status": status,
        "url": url,
        "token": token_field,
        "refresh": (list_adapters, [], [adapter]),
    }
