"""Comparison grids: the same prompt and seed, rows = LoRAs or blends (and "no LoRA"), columns = strengths.

    grid = compare(manager, CompareRequest(model="demo-sd15", prompt="mountains", seed=42,
                                           rows=(CompareRow("no LoRA"), CompareRow("alps", (("alps", 1.0),))),
                                           strengths=(0, 0.5, 1)), outputs_dir=...)

Each cell is an ordinary generation (so it has its own A1111 infotext) whose LoRA weights are the row's
weights times the column's strength. A/B of base vs LoRA is the two-row, one-column case. The grid is
saved as one PNG: the labelled image, the first cell's infotext as `parameters` (what A1111's PNG Info
shows), and every cell's infotext under `cell <row>,<column>` plus a JSON `studio_grid` summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
import threading
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from studio.atomic import atomic_file
from studio.errors import CancelledError
from studio.generation.outputs import _next_number
from studio.generation.request import MAX_SEED
from studio.generation.run import generate
from studio.lora.requests import CompareRequest

_LABEL_HEIGHT = 28
_LABEL_WIDTH = 160


@dataclasses.dataclass(frozen=True)
class CompareResult:
    grid: Image.Image
    cells: list[list[Image.Image]]
    infotexts: list[list[str]]
    seed: int
    path: Path | None


def compare(
    manager,
    request: CompareRequest,
    *,
    outputs_dir: Path | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> CompareResult:
    """Render every cell with one seed, draw the labelled grid and (with `outputs_dir`) save it."""
    request.validate()
    seed = random.randint(0, MAX_SEED) if request.seed == -1 else request.seed
    request = dataclasses.replace(request, seed=seed)
    cancel = cancel or threading.Event()
    total = len(request.rows) * len(request.strengths)
    cells, infotexts = [], []
    for r, row in enumerate(request.rows):
        cells.append([])
        infotexts.append([])
        for c, strength in enumerate(request.strengths):
            if cancel.is_set():
                raise CancelledError("Comparison stopped; no grid was saved.")
            if on_progress:
                on_progress((r * len(request.strengths) + c) / total, f"{row.label} at {strength:g}")
            result = generate(manager, request.cell(row, strength), cancel=cancel)
            if result.interrupted or not result.images:
                raise CancelledError("Comparison stopped; no grid was saved.")
            cells[r].append(result.images[0])
            infotexts[r].append(result.infotexts[0])
    grid = draw_grid(cells, [row.label for row in request.rows], [f"strength {s:g}" for s in request.strengths])
    path = None
    if outputs_dir is not None:
        path = save_grid(grid, request, infotexts, Path(outputs_dir))
    if on_progress:
        on_progress(1.0, "Grid done")
    return CompareResult(grid=grid, cells=cells, infotexts=infotexts, seed=seed, path=path)


def draw_grid(cells: list[list[Image.Image]], row_labels: list[str], column_labels: list[str]) -> Image.Image:
    width, height = cells[0][0].size
    size = (_LABEL_WIDTH + width * len(column_labels), _LABEL_HEIGHT + height * len(row_labels))
    grid = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, label in enumerate(column_labels):
        draw.text((_LABEL_WIDTH + c * width + 4, 8), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        draw.text((4, _LABEL_HEIGHT + r * height + height // 2 - 6), _fit(label), fill="black", font=font)
        for c, image in enumerate(cells[r]):
            grid.paste(image.convert("RGB"), (_LABEL_WIDTH + c * width, _LABEL_HEIGHT + r * height))
    return grid


def _fit(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def save_grid(grid: Image.Image, request: CompareRequest, infotexts: list[list[str]], outputs_dir: Path) -> Path:
    """outputs/grids/<date>/<number>-grid-<seed>.png, written atomically, with every cell's infotext."""
    folder = outputs_dir / "grids" / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_next_number(folder):05d}-grid-{request.seed}.png"
    info = PngInfo()
    info.add_text("parameters", infotexts[0][0])
    for r, row in enumerate(infotexts):
        for c, text in enumerate(row):
            info.add_text(f"cell {r},{c}", text)
    summary = {
        "rows": [{"label": row.label, "loras": [list(pair) for pair in row.loras]} for row in request.rows],
        "strengths": list(request.strengths),
        "seed": request.seed,
        "model": request.model,
    }
    info.add_text("studio_grid", json.dumps(summary))
    with atomic_file(path) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info)
    return path


def read_grid_cells(path: Path) -> dict[tuple[int, int], str]:
    """The per-cell infotexts of a saved grid: {(row, column): infotext}."""
    with Image.open(path) as image:
        texts = dict(image.text)
    cells = {}
    for key, text in texts.items():
        if key.startswith("cell "):
            r, c = key[5:].split(",")
            cells[(int(r), int(c))] = text
    return cells
