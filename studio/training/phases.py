"""Where a run's time goes: wall seconds per phase (load, caching, steps, samples, checkpoints, export).

A run reports them at the end (a "phases" event), so a slow run says what was slow: the steps themselves,
or the work around them. Phases nest: a flipped image encoded in the middle of a step is charged to
"caching", and the step's clock pauses meanwhile, so the phases add up to the run's wall time (what no
phase covers, such as the checks before the model loads, is "other").
"""

from __future__ import annotations

import contextlib
import time

PHASES = ("load", "caching", "steps", "samples", "checkpoints", "export", "other")


class PhaseClock:
    def __init__(self):
        self.started = time.perf_counter()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._stack: list[str] = []
        self._since = self.started

    @contextlib.contextmanager
    def phase(self, name: str):
        """Charge the time inside the block to `name` (and not to the phase it interrupts)."""
        self._switch()
        self._stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def _switch(self) -> None:
        now = time.perf_counter()
        self.seconds[self._stack[-1] if self._stack else "other"] += now - self._since
        self._since = now

    def report(self) -> dict[str, float]:
        """Seconds per phase so far, rounded to milliseconds; they add up to the time since the clock started."""
        self._switch()
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


def phase_table(seconds: dict[str, float]) -> str:
    """A few aligned lines: each phase, its seconds and its share of the total, then the total."""
    total = sum(seconds.values()) or 1.0
    lines = [f"{'phase':<12}{'seconds':>9}{'share':>7}"]
    lines += [f"{name:<12}{value:>9.1f}{value / total:>7.0%}" for name, value in seconds.items()]
    lines.append(f"{'total':<12}{sum(seconds.values()):>9.1f}")
    return "\n".join(lines)
