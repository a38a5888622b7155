"""What every benchmark shares: a result row, a timer, and the one table they all print.

Each benchmark module in this folder defines `run(quick: bool) -> list[Row]` and can also run alone
(`python bench/bench_generation.py`). `python bench/run_all.py` runs them all and prints one table.
Goals are ratios measured side by side in one run (ours vs a baseline on the same machine), never
absolute times, so the verdict means the same on a laptop and on CI.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    """What was measured, e.g. "generate demo-sd15 64px: app vs bare diffusers"."""

    ours: float
    baseline: float
    unit: str
    """Unit of `ours` and `baseline` ("s", "ms", "GB", "steps/s"...)."""

    goal: str
    """The goal in words, e.g. "ratio <= 1.03"."""

    passed: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("inf")


def ratio_row(
    name: str,
    ours: float,
    baseline: float,
    unit: str,
    *,
    max_ratio: float | None = None,
    min_ratio: float | None = None,
    extra_ok: bool = True,
    note: str = "",
) -> Row:
    """A row whose verdict is `ours / baseline` within [min_ratio, max_ratio] (and `extra_ok`)."""
    ratio = ours / baseline if baseline else float("inf")
    parts, passed = [], extra_ok
    if max_ratio is not None:
        parts.append(f"ratio <= {max_ratio:g}")
        passed = passed and ratio <= max_ratio
    if min_ratio is not None:
        parts.append(f"ratio >= {min_ratio:g}")
        passed = passed and ratio >= min_ratio
    return Row(name, ours, baseline, unit, " and ".join(parts) or "-", passed, note)


def median_seconds(fn: Callable[[], object], *, repeat: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeat` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median times of several functions run in turns (A B A B ...), so drift affects each alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def format_table(rows: list[Row]) -> str:
    header = ("benchmark", "ours", "baseline", "ratio", "goal", "result")
    lines = [
        (
            r.name,
            f"{r.ours:.4g} {r.unit}",
            f"{r.baseline:.4g} {r.unit}",
            f"{r.ratio:.3f}",
            r.goal,
            ("pass" if r.passed else "FAIL") + (f" ({r.note})" if r.note else ""),
        )
        for r in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    out = [" | ".join(cell.ljust(w) for cell, w in zip(header, widths))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(str(cell).ljust(w) for cell, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def machine_description() -> str:
    import platform

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}"


def main_for(run: Callable[[bool], list[Row]]) -> None:
    """`if __name__ == "__main__": main_for(run)` in each benchmark: `--quick` for a short run."""
    quick = "--quick" in sys.argv[1:]
    rows = run(quick)
    print(format_table(rows))
    sys.exit(0 if all(r.passed for r in rows) else 1)
