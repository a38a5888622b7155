"""X/Y/Z plot: one ordinary generation per cell (same seed unless a seed axis says otherwise), drawn as a labelled grid.

    result = plot(manager, PlotRequest(base=GenerationRequest(model="demo-sd15", prompt="mountains", seed=42),
                                       x=parse_axis("lora:alps=0,0.5,1"), y=parse_axis("model=demo-sd15,demo-sdxl")),
                  outputs_dir=...)

Each cell goes through `studio.generation.run.generate`, so LoRA blends, A1111 prompts, samplers and memory modes
behave as on the Generate tab; cells are rendered grouped by model (no model swap back and forth) and identical cells
once. Every cell is saved as its own PNG with its infotext; the grid PNG carries A1111's grid parameters (the first
cell's infotext plus `X Type` / `X Values` ...), every cell's infotext under `cell x,y,z` and a `studio_grid` summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
import threading
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

from studio.atomic import atomic_file
from studio.errors import CancelledError, StudioError
from studio.generation import infotext, outputs
from studio.generation.request import MAX_SEED
from studio.generation.run import generate
from studio.lora.library import find_lora
from studio.lora.requests import PlotRequest
from studio.models.sources import resolve_model


@dataclasses.dataclass(frozen=True)
class PlotResult:
    grid: Image.Image
    images: list[Image.Image]
    """One per cell, z then y then x (x fastest), at the size it was drawn."""

    infotexts: list[str]
    labels: list[str]
    """Each cell's axis values, e.g. `demo-sdxl (1024x1024) · alps: 0.5`."""

    cell_paths: list[Path]
    path: Path | None
    seed: int
    rendered: int
    """Generations run (identical cells are drawn once)."""


def plot(
    manager,
    request: PlotRequest,
    *,
    outputs_dir: Path | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> PlotResult:
    request.validate()
    seed = random.randint(0, MAX_SEED) if request.base.seed == -1 else request.base.seed
    request = dataclasses.replace(request, base=dataclasses.replace(request.base, seed=seed))  # one seed for all
    config = manager.config
    cells = request.cells(
        model_kind=lambda name: resolve_model(name, config).kind,
        adapter_kind=lambda name: _adapter_kind(config.loras_dir, name),
    )
    requests = [cell.request for cell in cells]
    requests = [r if r.seed != -1 else dataclasses.replace(r, seed=random.randint(0, MAX_SEED)) for r in requests]
    unique = sorted(set(requests), key=lambda r: (r.model, r.loras, requests.index(r)))  # grouped by model
    cancel = cancel or threading.Event()
    drawn: dict = {}
    for n, cell_request in enumerate(unique):
        label = _caption(request, cells[requests.index(cell_request)].position)

        def on_step(info, n=n, label=label):
            if on_progress:
                on_progress((n + info.step / max(1, info.total_steps)) / len(unique), f"{n + 1}/{len(unique)} {label}")

        def on_load(_fraction, message, n=n):
            if on_progress:
                on_progress(n / len(unique), message)

        if cancel.is_set():
            raise CancelledError("Plot stopped; no grid was saved.")
        on_load(0.0, f"{n + 1}/{len(unique)} {label}")
        result = generate(manager, cell_request, on_step=on_step, on_load=on_load, cancel=cancel)
        if result.interrupted or not result.images:
            raise CancelledError("Plot stopped; no grid was saved.")
        drawn[cell_request] = (result.images[0], result.infotexts[0], result.seeds[0])
    images = [drawn[r][0] for r in requests]
    texts = [drawn[r][1] for r in requests]
    labels = axis_labels(request, [image.size for image in images])
    grid = draw_grid(request.shape, images, labels)
    paths: list[Path] = []
    path = None
    if outputs_dir is not None:
        saved = outputs.save_images(
            [drawn[r][0] for r in unique], [drawn[r][1] for r in unique], [drawn[r][2] for r in unique],
            outputs_dir, kind="plot",
        )  # fmt: skip
        by_request = dict(zip(unique, saved))
        paths = [by_request[r] for r in requests]
        path = save_grid(grid, request, cells, texts, paths, Path(outputs_dir))
    if on_progress:
        on_progress(1.0, "Plot done")
    captions = [" · ".join(labels[i][cell.position[i]] for i in range(3) if request.axes[i]) for cell in cells]
    return PlotResult(grid, images, texts, captions, paths, path, seed, len(unique))


def _adapter_kind(loras_dir: Path, name: str):
    try:
        return find_lora(loras_dir, name).kind
    except StudioError:
        return None  # generate() names a missing adapter with its own message


def _caption(request: PlotRequest, position) -> str:
    return " · ".join(axis.value_label(axis.values[position[i]]) for i, axis in enumerate(request.axes) if axis)


def axis_labels(request: PlotRequest, sizes: list[tuple[int, int]]) -> list[list[str]]:
    """Labels of each axis's values; a model axis whose models draw at different sizes names each one's size."""
    labels = [[axis.value_label(v) for v in axis.values] if axis else [""] for axis in request.axes]
    positions = [cell.position for cell in request.cells()]
    for i, axis in enumerate(request.axes):
        if not axis or axis.key != "model":
            continue
        per_value = [{size for size, at in zip(sizes, positions) if at[i] == v} for v in range(len(axis.values))]
        if all(len(s) == 1 for s in per_value) and len(set.union(*per_value)) > 1:
            labels[i] = [f"{label} ({w}x{h})" for label, ((w, h),) in zip(labels[i], per_value)]
    return labels


# --- drawing -----------------------------------------------------------------------------------------------


def font_size(cell: tuple[int, int]) -> int:
    """Label text scales with the cells (A1111: (width + height) / 25), so it stays legible when the grid is shrunk."""
    return max(12, (cell[0] + cell[1]) // 25)


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word longer than a line is cut between characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:
                cut = max(1, next((k for k in range(len(word), 0, -1) if font.getlength(word[:k]) <= width), 1))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines or [""]


def _draw_lines(draw, lines, font, box, line_height) -> None:
    """Lines centred in box (left, top, right, bottom)."""
    left, top, right, bottom = box
    y = top + (bottom - top - line_height * len(lines)) / 2
    for line in lines:
        x = left + (right - left - font.getlength(line)) / 2
        draw.text((x, y), line, fill="black", font=font)
        y += line_height


def draw_grid(shape: tuple[int, int, int], images: list[Image.Image], labels: list[list[str]]) -> Image.Image:
    """Cells (z, y, x order, x fastest) scaled to one size, X labels on top, Y on the left, one block per Z value."""
    nx, ny, nz = shape
    cell = (min(i.width for i in images), min(i.height for i in images))  # scale down, never up
    size = font_size(cell)
    font = ImageFont.load_default(size=size)
    line_height = round(size * 1.25)
    pad = size // 2
    x_lines = [_wrap(label, font, cell[0] - 2 * pad) for label in labels[0]]
    # Row labels get the width of their longest line, between a few characters and one cell (then they wrap).
    widest = max(font.getlength(label) for label in labels[1]) + 2 * pad
    left_width = round(min(max(widest, size * 4), max(cell[0], size * 10))) if any(labels[1]) else 0
    y_lines = [_wrap(label, font, left_width - 2 * pad) for label in labels[1]]
    z_lines = [_wrap(label, font, left_width + nx * cell[0] - 2 * pad) for label in labels[2]]
    top = max(len(lines) for lines in x_lines) * line_height + 2 * pad if any(labels[0]) else 0
    title = max(len(lines) for lines in z_lines) * line_height + 2 * pad if any(labels[2]) else 0
    block = (left_width + nx * cell[0], title + top + ny * cell[1])
    gap = size if nz > 1 else 0
    grid = Image.new("RGB", (nz * block[0] + (nz - 1) * gap, block[1]), "white")
    draw = ImageDraw.Draw(grid)
    for z in range(nz):
        origin = z * (block[0] + gap)
        if title:
            _draw_lines(draw, z_lines[z], font, (origin, 0, origin + block[0], title), line_height)
        for x in range(nx):
            if top:
                left = origin + left_width + x * cell[0]
                _draw_lines(draw, x_lines[x], font, (left, title, left + cell[0], title + top), line_height)
        for y in range(ny):
            upper = title + top + y * cell[1]
            if left_width:
                _draw_lines(draw, y_lines[y], font, (origin, upper, origin + left_width, upper + cell[1]), line_height)
            for x in range(nx):
                image = images[(z * ny + y) * nx + x].convert("RGB")
                if image.size != cell:
                    image = ImageOps.pad(image, cell, method=Image.Resampling.LANCZOS, color="white")
                grid.paste(image, (origin + left_width + x * cell[0], upper))
    return grid


# --- saving ------------------------------------------------------------------------------------------------


def grid_infotext(request: PlotRequest, first_cell: str) -> str:
    """A1111's grid `parameters`: the first cell's infotext plus each axis's type and values."""
    extra = []
    for name, axis in zip("XYZ", request.axes):
        if axis:
            extra.append(f"{name} Type: {infotext.quote(axis.label)}, {name} Values: {infotext.quote(axis.text())}")
    return first_cell + (", " + ", ".join(extra) if extra else "")


def save_grid(grid, request: PlotRequest, cells, texts, paths, outputs_dir: Path) -> Path:
    """outputs/grids/<date>/<number>-grid-<seed>.png, written atomically, carrying every cell's infotext."""
    folder = outputs_dir / "grids" / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{outputs._next_number(folder):05d}-grid-{request.base.seed}.png"
    info = PngInfo()
    info.add_text("parameters", grid_infotext(request, texts[0]))
    for cell, text in zip(cells, texts):
        info.add_text("cell {},{},{}".format(*cell.position), text)
    summary = {
        "axes": {
            name: {"type": axis.key, "label": axis.label, "values": axis.text()}
            for name, axis in zip("xyz", request.axes)
            if axis
        },
        "shape": list(request.shape),
        "seed": request.base.seed,
        "cells": [
            {"position": list(cell.position), "file": str(p.relative_to(outputs_dir))} for cell, p in zip(cells, paths)
        ],
    }
    info.add_text("studio_grid", json.dumps(summary))
    with atomic_file(path) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info, compress_level=3)
    return path


def read_grid_cells(path: Path) -> dict[tuple[int, int, int], str]:
    """The per-cell infotexts of a saved grid: {(x, y, z): infotext}."""
    with Image.open(path) as image:
        texts = dict(image.text)
    return {tuple(int(v) for v in key[5:].split(",")): text for key, text in texts.items() if key.startswith("cell ")}
