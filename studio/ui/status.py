"""Failed actions report in the tab's status line, not over the form.

A handler that raises `gr.Error` makes Gradio mark every output of the event as failed, and each shows an "Error"
overlay until clicked away, over the very fields the user has to fix (the Share tab's token box is an output: it
is cleared after a push). `reported` instead writes what failed and what to do into the status line, then raises
the error so API clients still get it; the page shows no toast (the status line has the message, and a toast would
sit over the page). Events that use it pass `show_progress="hidden"` (`QUIET`), which hides the overlay; their status
line shows the progress instead.
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from studio.errors import StudioError

QUIET = dict(show_progress="hidden")


def failure_text(action: str, error: StudioError) -> str:
    """The status line after a failure: the action, then the error (which names the input and what to do)."""
    return f"❌ {action} failed: {error}"


def reported(status, action: str):
    """Decorate a handler (function or generator) whose event has `status` among its outputs."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                if inspect.isgeneratorfunction(fn):
                    yield from fn(*args, **kwargs)
                else:
                    yield fn(*args, **kwargs)
            except StudioError as e:
                yield {status: failure_text(action, e)}
                raise gr.Error(str(e), visible=False, print_exception=False) from e

        return wrapper

    return decorate
