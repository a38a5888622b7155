"""What an evaluation or a data set export found, as plain data (torch-free, for the UI): progress events,
scores per candidate, the floor, nearest neighbours, files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from PIL import Image

from studio.evaluation.metrics import METRICS, Score
from studio.evaluation.requests import Candidate


@dataclasses.dataclass(frozen=True)
class Progress:
    fraction: float
    """Of the whole run, 0 to 1."""
    message: str
    preview: Image.Image | None = None


ProgressFn = Callable[[Progress], None]


@dataclasses.dataclass(frozen=True)
class Neighbour:
    image: Path
    """A generated image."""
    seed: int
    nearest: Path
    """The data image most similar to it."""
    similarity: float
    """Cosine similarity of their CLIP embeddings (1 = the same image to CLIP)."""


@dataclasses.dataclass
class CandidateResult:
    candidate: Candidate
    scores: dict[str, Score]
    """Metric key ("cmmd", "kid") -> score against the data folder."""
    neighbours: list[Neighbour]
    grid: Path
    """Generated | nearest data image, side by side, with similarities."""
    copies: int
    """Generated images at least `MEMORIZED_SIMILARITY` similar to a data image (likely memorized)."""
    partial: bool = False
    """Stopped before all images were generated; scored on the ones that were."""

    @property
    def label(self) -> str:
        return self.candidate.label


@dataclasses.dataclass
class EvaluationResult:
    folder: Path
    """Where the images, grids, table, chart and results.json were written."""
    data_folder: Path
    data_images: int
    prompt: str
    seeds: list[int]
    feature_model: str
    floor: dict[str, Score]
    """Each metric for the data set against itself, split in two halves."""
    candidates: list[CandidateResult]
    """Ranked: lowest CMMD (closest to the data) first."""
    data_closest: float = float("nan")
    """The highest similarity between two different data images: how close "closest" gets within the data."""
    interrupted: bool = False
    chart: Path | None = None

    def table(self) -> list[dict]:
        """One row per candidate, ranked, then the floor: for the UI table, the CLI and report.md."""
        metrics = [METRICS[key] for key in self.floor]
        rows = []
        for rank, result in enumerate(self.candidates, start=1):
            row = {"rank": rank, "candidate": result.label}
            for metric in metrics:
                row[metric.label] = str(result.scores[metric.key])
            closest = max((n.similarity for n in result.neighbours), default=float("nan"))
            row["closest data image"] = f"{closest:.3f}"
            row["likely copies"] = f"{result.copies}/{len(result.neighbours)}"
            row["note"] = "stopped early" if result.partial else ""
            rows.append(row)
        floor = {"rank": "-", "candidate": f"floor: data vs itself ({self.data_images} images in halves)"}
        floor.update({metric.label: str(self.floor[metric.key]) for metric in metrics})
        rows.append(
            {
                **floor,
                "closest data image": f"{self.data_closest:.3f}",
                "likely copies": "",
                "note": "lower is closer; closest = two different data images",
            }
        )
        return rows

    def chart_rows(self, metric_key: str = "cmmd") -> list[dict]:
        """Ranked bars (candidates, then the floor) for a bar chart."""
        rows = [
            {"candidate": f"{rank}. {r.label}", "score": r.scores[metric_key].value, "kind": "candidate"}
            for rank, r in enumerate(self.candidates, start=1)
        ]
        floor = self.floor[metric_key].value
        return rows + [{"candidate": "floor: data vs itself", "score": floor, "kind": "floor"}]


@dataclasses.dataclass
class ExportResult:
    folder: Path
    metadata: Path
    images: list[Path]
    interrupted: bool = False
