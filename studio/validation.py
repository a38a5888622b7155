"""Checks shared by the request dataclasses' `validate()`, so every range error reads the same way."""

from __future__ import annotations

from studio.errors import InvalidRequestError

MAX_TEXT_CHARS = 10_000
"""Longest prompt, negative prompt or caption accepted: about 30 CLIP chunks of 75 tokens, far past what any
model reads. Longer text is a paste gone wrong (or an attack) that would hold the queue and memory."""


def check_text_length(name: str, text: str, *, limit: int = MAX_TEXT_CHARS) -> None:
    """Refuse text longer than `limit` characters: "prompt is 52,431 characters long; use at most 10,000."."""
    if len(text) > limit:
        raise InvalidRequestError(f"{name} is {len(text):,} characters long; use at most {limit:,}.")


def check_range(name: str, value: float, low: float, high: float, *, hint: str | None = None) -> None:
    """Refuse a value outside [low, high] (NaN included): "steps=0 is out of range; use a value from 1 to 150."

    `name` is a request field (shown as `steps=0`) or, for one item of a list, a phrase that names it
    (`LoRA 'alps' weight`, shown as `LoRA 'alps' weight 9.0`). `hint` replaces the advice after "use".
    """
    if low <= value <= high:
        return
    shown = f"{name}={value}" if name.isidentifier() else f"{name} {value}"
    raise InvalidRequestError(
        f"{shown} is out of range; use {hint or f'a value from {_number(low)} to {_number(high)}'}."
    )


def _number(x: float) -> str:
    # ints in full (a seed limit of 4294967295, not 4.29497e+09); floats without a trailing .0
    return str(x) if isinstance(x, int) else f"{x:g}"
