"""Helpers shared by the tabs: the one place where engine errors become Gradio messages."""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from studio.errors import StudioError

# Every event that uses the GPU shares this queue, so requests run one at a time, in order.
GPU_QUEUE = dict(concurrency_id="gpu", concurrency_limit=1)


def user_errors(fn):
    """Show StudioError as a red toast (the app keeps running); let real bugs surface with a traceback."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except StudioError as e:
                raise gr.Error(str(e), print_exception=False) from e

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StudioError as e:
            raise gr.Error(str(e), print_exception=False) from e

    return wrapper


def stopper(studio, slot: str):
    """The click handler of a Stop button: stops the jobs of its own slot (see studio.engine), nothing else."""

    def stop() -> None:
        studio.stop(slot)

    stop.__name__ = f"stop_{slot}"
    return stop


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
