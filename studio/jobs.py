"""Run long work in a background thread and read its events as an iterator; keep track of what runs.

Front ends (a Gradio generator, the CLI) loop over `job.events()` and show progress; `job.cancel`
is the Stop button. Exceptions from the work are re-raised in the reader, so errors reach the one
place per front end that turns them into messages.

`JobBoard` is where a `Studio` keeps its jobs, by slot: the slot names what one Stop button ends
("generate", "training", "push", ...), so a Stop never reaches work started from another tab.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_DONE = object()


class Job:
    def __init__(self, work: Callable[["Job"], Any], *, name: str = "job"):
        self.name = name
        self.cancel = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self.latest: Any = None
        """The newest event emitted, for a glance at progress by someone not reading the events (the Generate tab)."""
        self._work = work
        self._result: Any = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def emit(self, event: Any) -> None:
        """Called by the work to report progress; never blocks."""
        self.latest = event
        self._events.put(event)

    def start(self) -> "Job":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._result = self._work(self)
        except BaseException as e:  # re-raised in the reader's thread by events()
            self._error = e
        finally:
            self._finished.set()
            self._events.put(_DONE)

    def events(self, *, latest_only: bool = True) -> Iterator[Any]:
        """Yield events until the work ends, then raise its error if it failed.

        With `latest_only`, a slow reader skips stale progress events and sees the newest one.
        """
        while True:
            event = self._events.get()
            if latest_only:
                while event is not _DONE:
                    try:
                        newer = self._events.get_nowait()
                    except queue.Empty:
                        break
                    event = newer
            if event is _DONE:
                break
            yield event
        self._thread.join()
        if self._error is not None:
            raise self._error

    @property
    def done(self) -> bool:
        """The work has ended (finished, failed or stopped)."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work ends; False if `timeout` seconds passed first."""
        return self._finished.wait(timeout)

    @property
    def result(self) -> Any:
        return self._result

    @property
    def error(self) -> BaseException | None:
        """What the work raised, if it failed (also re-raised by `events()`)."""
        return self._error


class JobBoard:
    """The jobs of one `Studio`, by slot. A slot can hold several jobs (two API clients may import at once);
    `stop(slot)` cancels every running job of that slot and nothing else. Finished jobs drop off by themselves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, list[Job]] = {}

    def start(self, slot: str, job: Job) -> Job:
        with self._lock:
            self._jobs[slot] = [j for j in self._jobs.get(slot, []) if not j.done] + [job]
        return job.start()

    def running(self, slot: str) -> list[Job]:
        with self._lock:
            return [job for job in self._jobs.get(slot, []) if not job.done]

    def stop(self, slot: str) -> None:
        for job in self.running(slot):
            job.cancel.set()

    def follow(
        self, slot: str, job: Job, *, latest_only: bool = True, with_result: bool = True, cancel_on_close: bool = True
    ) -> Iterator[Any]:
        """Start `job` in `slot`, yield its events, then its result (`with_result`).

        A closed page or a cancelled API call closes this generator: with `cancel_on_close` that stops the
        work too, so it does not hold the GPU (or an upload) for a result nobody will see. Harmless when the
        work has already finished.
        """
        self.start(slot, job)
        try:
            yield from job.events(latest_only=latest_only)
            if with_result:
                yield job.result
        finally:
            if cancel_on_close:
                job.cancel.set()
