"""X/Y/Z plot axes: what each axis type changes in a cell's request, and A1111's value syntax. Torch-free.

    axis = parse_axis("lora:alps=0-1 (+0.5)")      # Axis("lora:alps", (0.0, 0.5, 1.0))
    axis.apply(request, 0.5)                         # the request with alps at exactly 0.5

Values follow A1111's scripts/xyz_grid.py: comma-separated (CSV quoting allowed), and for numbers the ranges
`1-5` (step 1), `1-10 (+3)` (a step), `0-1 [5]` (a count, evenly spaced, ends included).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import re

import numpy as np

from studio.errors import InvalidRequestError
from studio.generation.request import GenerationRequest
from studio.generation.schedulers import SCHEDULER_NAMES

# A1111's range patterns: `start-end`, optional `(+step)` or `[count]`.
_RANGE_INT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_COUNT_INT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)\s*\[(\d+)\s*\]\s*")
_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE_FLOAT = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_COUNT_FLOAT = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[(\d+)\s*\]\s*")
_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*")

ON = ("on", "yes", "true", "1")
OFF = ("off", "no", "false", "0")


@dataclasses.dataclass(frozen=True)
class AxisType:
    key: str
    label: str
    kind: str
    """How values are read: "int", "float" or "text"."""

    help: str


AXIS_TYPES = {
    t.key: t
    for t in (
        AxisType("model", "Model", "text", "model names, e.g. demo-sd15, demo-sdxl (each drawn at its native size)"),
        AxisType("strength", "LoRA strength (every adapter)", "float", "strengths, e.g. 0, 0.5, 1 or 0-1 (+0.25)"),
        AxisType("lora", "LoRA strength of one adapter", "float", "lora:NAME=0, 0.5, 1"),
        AxisType("blend", "LoRA blend on/off", "text", "off, on"),
        AxisType("prompt", "Prompt S/R", "text", "the text to find, then its replacements: cat, dog, bird"),
        AxisType("seed", "Seed", "int", "seeds, e.g. 1, 2, 3 or 1-4 (-1 = random)"),
        AxisType("steps", "Steps", "int", "e.g. 10-30 (+10)"),
        AxisType("cfg", "CFG scale", "float", "e.g. 3-9 [4]"),
        AxisType("sampler", "Sampler", "text", ", ".join(SCHEDULER_NAMES)),
        AxisType("size", "Size", "text", "WxH, e.g. 512x512, 512x768"),
        AxisType("clip_skip", "Clip skip", "int", "e.g. 1, 2"),
    )
}


@dataclasses.dataclass(frozen=True)
class Axis:
    key: str
    """An AXIS_TYPES key, or `lora:NAME` for one adapter's strength."""

    values: tuple
    """Parsed values (numbers for number axes); for "prompt", the first value is the text searched for."""

    @property
    def type(self) -> AxisType:
        return AXIS_TYPES[self.key.split(":", 1)[0]]

    @property
    def adapter(self) -> str:
        return self.key.split(":", 1)[1] if self.key.startswith("lora:") else ""

    @property
    def label(self) -> str:
        return f"LoRA strength: {self.adapter}" if self.adapter else self.type.label

    def value_label(self, value) -> str:
        """What the grid writes next to a row or column of this value (A1111 style: `Steps: 20`)."""
        key = self.type.key
        if key == "model" or key == "sampler" or key == "prompt":
            return str(value)
        if key == "blend":
            return "blend on" if value else "no LoRA"
        if key == "size":
            return f"{value[0]}x{value[1]}"
        if key in ("strength", "lora"):
            name = self.adapter or "strength"
            return f"{name} {value:g}" if value else f"{name} 0 (no LoRA)"
        return f"{self.label}: {value:g}" if isinstance(value, float) else f"{self.label}: {value}"

    def text(self) -> str:
        """The values as typed back (for infotext and the CLI): `0, 0.5, 1`."""
        return ", ".join(_csv_text(_plain(self.key, v)) for v in self.values)

    def apply(self, request: GenerationRequest, value) -> GenerationRequest:
        """The cell's request: `request` with this axis set to `value` (the typed value, never rescaled)."""
        key = self.type.key
        replace = dataclasses.replace
        if key == "model":
            return replace(request, model=value)
        if key == "lora":
            kept = tuple((n, w) for n, w in request.loras if n != self.adapter)
            return replace(request, loras=kept + (((self.adapter, value),) if value else ()))
        if key == "strength":
            return replace(request, loras=tuple((n, value) for n, _w in request.loras) if value else ())
        if key == "blend":
            return request if value else replace(request, loras=())
        if key == "prompt":
            search = self.values[0]
            return replace(
                request,
                prompt=request.prompt.replace(search, value),
                negative_prompt=request.negative_prompt.replace(search, value),
            )
        if key == "size":
            return replace(request, width=value[0], height=value[1])
        field = {"cfg": "cfg", "seed": "seed", "steps": "steps", "sampler": "scheduler", "clip_skip": "clip_skip"}
        return replace(request, **{field[key]: value})

    def check(self, request: GenerationRequest) -> None:
        """Refuse what A1111 refuses before drawing: a Prompt S/R text that is not in the prompts."""
        if self.type.key == "prompt" and not any(self.values[0] in text for text in request_texts(request)):
            raise InvalidRequestError(
                f"Prompt S/R: {self.values[0]!r} is not in the prompt or the negative prompt; "
                "the first value must be text of the prompt (it is replaced by each value in turn)."
            )


def request_texts(request: GenerationRequest) -> tuple[str, str]:
    return request.prompt, request.negative_prompt


def parse_axis(spec: str) -> Axis:
    """`TYPE=VALUES` (the CLI's --x/--y/--z): `model=a,b`, `lora:alps=0-1 [3]`, `steps=10-30 (+10)`."""
    key, sep, values = (spec or "").partition("=")
    if not sep:
        raise InvalidRequestError(
            f"Axis {spec!r} needs TYPE=VALUES, e.g. lora:my-lora=0,0.5,1 or model=demo-sd15,demo-sdxl. "
            f"Types: {', '.join(_type_keys())}."
        )
    return make_axis(key.strip(), values)


def make_axis(key: str, values: str) -> Axis:
    """An axis from a type key and the values as typed (the UI's type dropdown and values box)."""
    base, _sep, adapter = key.partition(":")
    if base not in AXIS_TYPES or (base == "lora") != bool(adapter.strip()):
        close = difflib.get_close_matches(base, list(AXIS_TYPES), n=1)
        hint = f" Did you mean {close[0]}?" if close and close[0] != base else ""
        raise InvalidRequestError(f"Unknown axis type {key!r}; use one of: {', '.join(_type_keys())}.{hint}")
    key = f"lora:{adapter.strip()}" if base == "lora" else base
    items = _split(values)
    if not items:
        raise InvalidRequestError(f"The {key} axis has no values; e.g. {AXIS_TYPES[base].help}.")
    kind = AXIS_TYPES[base].kind
    parsed: list = []
    for item in items:
        parsed += _numbers(key, item, int) if kind == "int" else _numbers(key, item, float) if kind == "float" else []
        if kind == "text":
            parsed.append(_text_value(key, item))
    return Axis(key, tuple(parsed))


def _type_keys() -> list[str]:
    return [("lora:NAME" if key == "lora" else key) for key in AXIS_TYPES]


def _split(values: str) -> list[str]:
    """A1111's csv_string_to_list_strip: comma-separated, CSV quotes allowed, blanks dropped."""
    rows = list(csv.reader([values or ""], skipinitialspace=True))
    return [item.strip() for item in (rows[0] if rows else []) if item.strip()]


def _numbers(key: str, item: str, cast) -> list:
    is_int = cast is int
    ranged = (_RANGE_INT if is_int else _RANGE_FLOAT).fullmatch(item)
    counted = (_COUNT_INT if is_int else _COUNT_FLOAT).fullmatch(item)
    try:
        if ranged:
            start, end = (cast(g.replace(" ", "")) for g in ranged.group(1, 2))
            step = cast(ranged.group(3)) if ranged.group(3) else cast(1)
            if step == 0:
                raise ValueError
            if is_int:
                return list(range(start, end + 1, step))  # A1111: end included (for steps up)
            return [round(float(v), 6) for v in np.arange(start, end + step, step)]
        if counted:
            start, end = (cast(g.replace(" ", "")) for g in counted.group(1, 2))
            values = np.linspace(start, end, int(counted.group(3)))
            return [int(v) for v in values] if is_int else [round(float(v), 6) for v in values]
        return [cast(item)]
    except ValueError:
        example = "1, 2, 3 or 1-5 (+2) or 1-9 [3]" if is_int else "0, 0.5, 1 or 0-1 (+0.25) or 0-1 [5]"
        raise InvalidRequestError(f"The {key} axis: {item!r} is not a number or a range; e.g. {example}.") from None


def _text_value(key: str, item: str):
    base = key.split(":", 1)[0]
    if base == "blend":
        if item.lower() in ON + OFF:
            return item.lower() in ON
        raise InvalidRequestError(f"The blend axis takes on or off, not {item!r}.")
    if base == "sampler":
        names = {name.lower(): name for name in SCHEDULER_NAMES}
        if item.lower() not in names:
            raise InvalidRequestError(f"The sampler axis: unknown sampler {item!r}; use {', '.join(SCHEDULER_NAMES)}.")
        return names[item.lower()]
    if base == "size":
        match = _SIZE.fullmatch(item)
        if not match:
            raise InvalidRequestError(f"The size axis: {item!r} is not WIDTHxHEIGHT, e.g. 512x768.")
        width = int(match.group(1))
        return (width, int(match.group(2) or width))
    return item


def _plain(key: str, value):
    if key.startswith("size"):
        return f"{value[0]}x{value[1]}"
    if key == "blend":
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else value


def _csv_text(value) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if "," in text or '"' in text else text
