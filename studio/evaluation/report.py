"""Evaluation results on disk: nearest-neighbour grids, a ranked bar chart, report.md and results.json.

Everything is drawn with Pillow (no plotting library needed) and written atomically.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from studio.atomic import write_bytes
from studio.evaluation.metrics import MEMORIZED_SIMILARITY, METRICS, Score
from studio.evaluation.results import EvaluationResult, Neighbour

THUMB = 128
PAIRS_PER_ROW = 4
LABEL_HEIGHT = 18
GAP = 8


def save_image(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())


def _thumb(path: Path) -> Image.Image:
    from studio.training.dataset import load_image

    image = ImageOps.contain(load_image(path), (THUMB, THUMB))  # scales small images up, large ones down
    cell = Image.new("RGB", (THUMB, THUMB), "white")
    cell.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return cell


def neighbour_grid(title: str, neighbours: list[Neighbour]) -> Image.Image:
    """Pairs of (generated | nearest data image), four pairs a row, each labelled with seed and similarity."""
    font = ImageFont.load_default(size=12)
    pair_width = 2 * THUMB + GAP
    columns = max(1, min(PAIRS_PER_ROW, len(neighbours)))
    rows = -(-len(neighbours) // columns)
    row_height = THUMB + LABEL_HEIGHT + GAP
    grid = Image.new("RGB", (columns * (pair_width + 2 * GAP), 24 + rows * row_height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((GAP, 4), f"{title}   (generated | nearest data image, cosine similarity)", fill="black", font=font)
    for i, neighbour in enumerate(neighbours):
        x = (i % columns) * (pair_width + 2 * GAP) + GAP
        y = 24 + (i // columns) * row_height
        grid.paste(_thumb(neighbour.image), (x, y))
        grid.paste(_thumb(neighbour.nearest), (x + THUMB + GAP, y))
        colour = "red" if neighbour.similarity >= MEMORIZED_SIMILARITY else "black"
        label = f"seed {neighbour.seed}  sim {neighbour.similarity:.3f}  {neighbour.nearest.name}"
        draw.text((x, y + THUMB + 2), label[:44], fill=colour, font=font)
    return grid


def bar_chart(result: EvaluationResult, metric_key: str = "cmmd", *, width: int = 760) -> Image.Image:
    """Ranked horizontal bars with 95% intervals; the shaded band is the data set's own floor."""
    font = ImageFont.load_default(size=12)
    metric = METRICS[metric_key]
    scores: list[tuple[str, Score]] = [(r.label, r.scores[metric_key]) for r in result.candidates]
    floor = result.floor[metric_key]
    label_width, row, top = 260, 28, 30
    values = [v for _, s in scores for v in (s.low, s.high, s.value)] + [floor.low, floor.high, 0.0]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    plot = width - label_width - 20

    def x_of(value: float) -> float:
        return label_width + (value - low) / span * plot

    image = Image.new("RGB", (width, top + row * max(1, len(scores)) + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), f"{metric.label} (lower = closer to the data), 95% bootstrap intervals", fill="black", font=font)
    bottom = top + row * len(scores)
    draw.rectangle([x_of(floor.low), top, x_of(floor.high), bottom], fill=(225, 235, 225))
    draw.line([x_of(floor.value), top, x_of(floor.value), bottom], fill=(40, 140, 40), width=2)
    draw.line([x_of(0.0), top, x_of(0.0), bottom], fill="grey")
    for i, (label, score) in enumerate(scores):
        y = top + i * row
        draw.text((8, y + 7), f"{i + 1}. {label}"[:30], fill="black", font=font)
        draw.text((label_width - 56, y + 7), f"{score.value:.3f}", fill="black", font=font)
        draw.rectangle(
            [min(x_of(0.0), x_of(score.value)), y + 6, max(x_of(0.0), x_of(score.value)), y + row - 6],
            fill=(70, 110, 200),
        )
        draw.line([x_of(score.low), y + row // 2, x_of(score.high), y + row // 2], fill="black", width=2)
    draw.text((label_width, bottom + 8), f"floor (data vs itself): {floor}", fill=(40, 140, 40), font=font)
    return image


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in header) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def write_report(result: EvaluationResult) -> None:
    """chart.png, report.md and results.json in the run folder (rewritten as each candidate finishes)."""
    if result.candidates:
        result.chart = save_image(bar_chart(result), result.folder / "chart.png")
    notes = (
        "CMMD: MMD^2 (unbiased) with a Gaussian RBF kernel (sigma 10) on L2-normalised CLIP image embeddings, x1000. "
        "KID here uses CLIP features, not Inception features: it is not comparable with published KID. "
        "FID is not reported (it needs Inception weights)."
    )
    text = (
        f"# Evaluation against {result.data_folder}\n\nPrompt: {result.prompt}\n\nSeeds: {result.seeds}\n\n"
        f"Feature model: {result.feature_model}\n\n{markdown_table(result.table())}\n\n{notes}\n"
        + ("\nStopped early: partial results.\n" if result.interrupted else "")
    )
    write_bytes(result.folder / "report.md", text.encode())
    payload = _jsonable(dataclasses.asdict(result))
    write_bytes(result.folder / "results.json", json.dumps(payload, indent=2).encode())
