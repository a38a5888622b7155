"""The training child process, and the parent side that starts it and reads its events.

Why a child process: training holds the GPU and the CPU for minutes to hours; in its own process it
cannot freeze the UI's event loop, its memory is returned to the OS when it ends (no fragmentation
left behind for generation), and a crash in CUDA or a native library ends the run, not the app.

Protocol: the parent writes `job.json` (request + config) into the run folder and starts
`python -m studio.training.worker job.json`. The child writes one `TrainingEvent` JSON line per event
on its stdout (library output is redirected to stderr, which goes to `train.log`) and checks for a
`STOP` file at every step: the parent's Stop creates it, the child saves a checkpoint and exits 0.
A user error in the child becomes an "error" event and exit code 2; the parent re-raises it as the
same StudioError class, so the UI shows the same one-line message as for in-process errors.

If the app dies (killed, crashed, closed terminal), nobody reads the events any more: the child notices
(its parent process is gone, or writing an event fails) and stops as if Stop had been pressed, keeping a
checkpoint, instead of holding the GPU for hours with no way to see or stop it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from studio import errors
from studio.config import StudioConfig
from studio.training.events import TrainingEvent
from studio.training.request import TrainingRequest

STOP_FILE = "STOP"
LOG_FILE = "train.log"


def run_in_child(
    request: TrainingRequest,
    config: StudioConfig,
    *,
    on_event: Callable[[TrainingEvent], None],
    stop: threading.Event,
) -> Path | None:
    """Run `trainer.train` in a child process; returns the adapter folder, or None when stopped."""
    request.validate()
    run_dir = request.run_dir(config.outputs_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop_file = run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)
    job = run_dir / "job.json"
    config_json = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    job.write_text(json.dumps({"request": request.to_json(), "config": config_json}, indent=1), encoding="utf-8")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = str(Path(__file__).resolve().parents[2])  # the checkout, so `-m studio...` resolves from any cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    with open(run_dir / LOG_FILE, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "studio.training.worker", str(job)], stdout=subprocess.PIPE, stderr=log, env=env
        )

        def forward_stop():
            stop.wait()
            if child.poll() is None:
                stop_file.touch()

        threading.Thread(target=forward_stop, daemon=True, name="training-stop").start()
        result, error = None, None
        try:
            for raw in child.stdout:
                event = TrainingEvent.from_line(raw.decode("utf-8"))
                if event.kind == "error":
                    error = event
                    continue
                if event.kind == "done":
                    result = Path(event.path)
                on_event(event)
        finally:
            code = child.wait()
            stop.set()  # ends the stop-forwarding thread
            stop_file.unlink(missing_ok=True)
    if error is not None:
        error_class = getattr(errors, error.error_type or "", None)
        if not (isinstance(error_class, type) and issubclass(error_class, errors.StudioError)):
            error_class = errors.TrainingError
        raise error_class(error.message)
    if code != 0:
        tail = (run_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise errors.TrainingError(
            f"The training process failed (exit code {code}); last lines of {run_dir / LOG_FILE}: " + " | ".join(tail)
        )
    return result


class ParentWatch:
    """The child's view of its parent: a Stop request, or a parent that is no longer there to listen."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.parent_pid = os.getppid()
        self.parent_gone = False

    def should_stop(self) -> bool:
        if not self.parent_gone and not _alive(self.parent_pid):
            self._lost("it exited")
        return self.parent_gone or self.stop_file.exists()

    def _lost(self, how: str) -> None:
        self.parent_gone = True
        print(
            f"The app (process {self.parent_pid}) is gone ({how}); stopping and keeping a checkpoint.", file=sys.stderr
        )

    def guard(self, emit: Callable[[TrainingEvent], None]) -> Callable[[TrainingEvent], None]:
        """`emit` that treats a closed event pipe as a gone parent instead of crashing mid-step."""

        def guarded(event: TrainingEvent) -> None:
            if self.parent_gone:
                return
            try:
                emit(event)
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed after an earlier failure
                self._lost("its end of the event pipe is closed")

        return guarded


def _alive(pid: int) -> bool:
    # POSIX re-parents an orphan (to init or a subreaper), so a changed parent id means the app died;
    # psutil covers Windows, where the recorded id simply stops existing.
    if os.name == "posix":
        return os.getppid() == pid
    import psutil

    return psutil.pid_exists(pid)


def main(argv: list[str] | None = None) -> int:
    """Child entry point: `python -m studio.training.worker job.json`."""
    job_path = Path((argv or sys.argv[1:])[0])
    # Events own the real stdout; anything libraries print goes to stderr (the log file).
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: TrainingEvent) -> None:
        events.write(event.to_line() + "\n")

    job = json.loads(job_path.read_text(encoding="utf-8"))
    request = TrainingRequest.from_json(job["request"])
    config = StudioConfig(**job["config"])
    parent = ParentWatch(stop_file=job_path.parent / STOP_FILE)
    from studio.cli.common import quiet_libraries
    from studio.training.trainer import train

    quiet_libraries()
    try:
        train(request, config, on_event=parent.guard(emit), should_stop=parent.should_stop)
    except errors.StudioError as error:
        emit(TrainingEvent("error", message=str(error), error_type=type(error).__name__))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
