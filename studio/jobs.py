"""Run long work in a background thread and read its events as an iterator.

Front ends (a Gradio generator, the CLI) loop over `job.events()` and show progress; `job.cancel`
is the Stop button. Exceptions from the work are re-raised in the reader, so errors reach the one
place per front end that turns them into messages.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_DONE = object()


class Job:
    def __init__(self, work: Callable[["Job"], Any], *, name: str = "job"):
        self.cancel = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._work = work
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def emit(self, event: Any) -> None:
        """Called by the work to report progress; never blocks."""
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
    def result(self) -> Any:
        return self._result
