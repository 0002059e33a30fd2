"""Writing an epoch's files off the training path: one background thread that writes, in the
order given, copies of the run's state taken at the end of the epoch (cpu_copy), and the rule
of how often latest.pt is written (LatestSchedule).

The training loop only waits for what must be exact: validation (it needs the epoch's weights)
and the copies. The writes themselves (sample grid, history.csv, plots, index.html, TensorBoard,
best.pt, epoch_NNN.pt, then latest.pt, the commit point) run while the next epoch trains.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from typing import Callable

from utils import first_line, map_tensors


def cpu_copy(tree):
    """A copy of nested dicts, lists and tuples in which every tensor is a new CPU tensor (in its
    own layout: a plain copy, the quickest for the training loop to wait for): what the training
    steps do next (in-place updates of weights, Adam moments, history lists) cannot change it.
    Other leaves (numbers, strings) are immutable and shared."""
    return map_tensors(tree, lambda t: t.detach().to("cpu", copy=True))


class BackgroundWriter:
    """One thread that runs the jobs given to `submit` one after the other, in that order.

    A job that fails drops the jobs queued after it (latest.pt, always given last, is then not
    written: the previous one stays the commit point) and its error is raised in the training
    thread at the next `submit` or `wait`, or when the `with` block ends. `wait` returns when
    every job given so far is done; the end of the block waits too, except after a second Ctrl-C
    (KeyboardInterrupt), which stops at once: the queued jobs are dropped, only the write under
    way is finished. The block always ends the thread: one left running into the interpreter's
    exit would be cut off inside torch's C++ code, which aborts the process.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._dropping = False  # after a second Ctrl-C: the queued jobs are not run
        self._thread: threading.Thread | None = None
        self.busy_s = 0.0  # seconds spent in jobs so far (benchmark.py reports them)
        self.waited_s = 0.0  # seconds the training thread spent in wait()

    def submit(self, job: Callable[[], None]) -> None:
        self._raise_error()
        if self._thread is None:
            # A daemon, so that a writer used without its `with` block never keeps a process alive.
            self._dropping = False
            self._thread = threading.Thread(target=self._run, name="background-writer", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def wait(self) -> None:
        """Until every job given so far is done; the error of a failed one is raised here."""
        started = time.perf_counter()
        self._jobs.join()
        self.waited_s += time.perf_counter() - started
        self._raise_error()

    @property
    def busy(self) -> bool:
        return self._jobs.unfinished_tasks > 0

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None and not self._dropping:  # after a failure: dropped
                    started = time.perf_counter()
                    job()
                    self.busy_s += time.perf_counter() - started
            except BaseException as err:  # kept for the training thread, which raises it
                self._error = err
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is None:
                self.wait()  # a write error surfaces here at the latest
            elif not isinstance(error, KeyboardInterrupt):
                try:
                    self.wait()  # what was copied before the error is still written
                except Exception as write_error:  # the run's own error is the one that ends it
                    print(f"warning: {first_line(write_error)}", file=sys.stderr)
        finally:
            self._dropping = isinstance(error, KeyboardInterrupt)  # a second Ctrl-C stops at once
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
                self._thread = None


@dataclasses.dataclass
class LatestSchedule:
    """When an epoch's end writes latest.pt: every epoch with every_s 0; else when the run has none
    yet, or every_s seconds have passed since this process last wrote one (the caller also writes
    it after the last epoch and on a stop). A kill then loses at most every_s seconds of training
    plus one epoch."""

    every_s: float
    have_one: bool  # the run has a latest.pt (it continues from one, or wrote one)
    last: float = dataclasses.field(default_factory=time.monotonic)

    def due(self) -> bool:
        return self.every_s == 0 or not self.have_one or time.monotonic() - self.last >= self.every_s

    def written(self) -> None:
        self.have_one, self.last = True, time.monotonic()
