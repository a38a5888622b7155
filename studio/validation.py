"""Checks shared by the request dataclasses' `validate()`, so every range error reads the same way."""

from __future__ import annotations

import re

from studio.errors import InvalidRequestError

MAX_TEXT_CHARS = 10_000
"""Longest prompt, negative prompt or caption accepted: about 30 CLIP chunks of 75 tokens, far past what any
model reads. Longer text is a paste gone wrong (or an attack) that would hold the queue and memory."""


NAME_MAX_BYTES = 255
"""Longest file or folder name the common file systems accept (ext4, APFS, NTFS)."""

PATH_MAX_BYTES = 4096


def check_text_length(name: str, text: str, *, limit: int = MAX_TEXT_CHARS) -> None:
    """Refuse text longer than `limit` characters ("prompt is 52,431 characters long; use at most 10,000."), and
    text with a NUL character: C libraries (tokenizers, PNG text chunks, file names) cut it there."""
    if "\0" in text:
        raise InvalidRequestError(f"{name} contains a NUL character (at position {text.index(chr(0))}); remove it.")
    if len(text) > limit:
        raise InvalidRequestError(f"{name} is {len(text):,} characters long; use at most {limit:,}.")


def check_path_text(name: str, value) -> None:
    """Refuse a name or path no file system takes, before it reaches `open` or `Path.resolve` (which would raise
    "embedded null byte" or "File name too long" from deep inside): a NUL character, a part longer than 255 bytes,
    more than 4096 bytes in all. `name` says what it is: "LoRA name", "Data folder"."""
    text = str(value)
    shown = repr(text if len(text) <= 40 else text[:40] + "...")
    if "\0" in text:
        raise InvalidRequestError(f"{name} {shown} contains a NUL character; remove it.")
    size = len(text.encode("utf-8", "surrogateescape"))
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in re.split(r"[\\/]", text)), default=0)
    if longest > NAME_MAX_BYTES or size > PATH_MAX_BYTES:
        raise InvalidRequestError(
            f"{name} {shown} is too long ({size:,} bytes); a file name can have at most {NAME_MAX_BYTES} bytes "
            f"and a path {PATH_MAX_BYTES:,}."
        )


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
