"""What a training run reports: one small event type, sent as JSON lines from the child process.

Both front ends read the same events: the UI turns them into the progress text, the loss curve and
the gallery; the CLI into a text progress bar.
"""

from __future__ import annotations

import dataclasses
import json

# kind: "status" (message), "dataset" (message = the dataset summary), "step", "sample" (path),
# "checkpoint" (path), "stopped" (path = the checkpoint kept), "done" (path = the adapter folder),
# "phases" (phases = seconds per phase, message = them as a table; just before "done"),
# "error" (message: a user error raised in the child, re-raised as TrainingError by the parent).
KINDS = ("status", "dataset", "step", "sample", "checkpoint", "stopped", "phases", "done", "error")


@dataclasses.dataclass(frozen=True)
class TrainingEvent:
    kind: str
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    """Mean loss of the step's micro-batches."""
    lr: float | None = None
    sec_per_step: float | None = None
    eta: float | None = None
    """Seconds left at the current pace."""
    path: str | None = None
    message: str = ""
    error_type: str | None = None
    """For "error": the StudioError subclass raised in the child (DatasetError, TrainingError...)."""
    losses: list | None = None
    """For the "status" event of a resumed run: [[step, loss], ...] so far, so the loss curve continues."""
    phases: dict | None = None
    """For "phases": wall seconds per phase of the run (studio.training.phases.PHASES)."""

    def to_line(self) -> str:
        values = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "", 0, [], {}) or k == "kind"}
        return json.dumps(values, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> "TrainingEvent":
        values = json.loads(line)
        return cls(**{k: v for k, v in values.items() if k in _FIELDS})

    def progress_text(self) -> str:
        """One line for a status label: "step 40/500 · loss 0.1234 · 0.52 s/step · ETA 4m00s"."""
        parts = [f"step {self.step}/{self.total_steps}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:.2e}")
        if self.sec_per_step is not None:
            parts.append(f"{self.sec_per_step:.2f} s/step")
        if self.eta is not None:
            parts.append(f"ETA {format_seconds(self.eta)}")
        return " · ".join(parts)


_FIELDS = {f.name for f in dataclasses.fields(TrainingEvent)}


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
