"""A run's control: the lock that gives it one owner, the leftovers of killed writes, moving an old
run aside, and stopping on Ctrl-C or SIGTERM with a checkpoint."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shutil
import signal
from pathlib import Path
from typing import Callable, Iterator

from training.state import RunState
from utils import on_signals, open_own_file


class RunLockError(RuntimeError):
    """Another process holds the run, or its lock file cannot be made; the message says which."""


@contextlib.contextmanager
def run_lock(checkpoints: Path) -> Iterator[None]:
    """Hold the run for this process: a second process on the same checkpoint folder stops at once.

    An OS file lock (flock) on a file beside the folder: the kernel drops it when the process
    ends however it ends (kill -9 included), so a stale lock never needs clearing by hand.
    """
    lock_path = checkpoints.parent / f".{checkpoints.name}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open_own_file(lock_path, "r+")  # never through a link planted at its name
    except OSError as err:
        raise RunLockError(f"{lock_path}: cannot create the run's lock file ({err.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLockError(
                f"{checkpoints}: this run is being trained by {holder}; wait for it to end, "
                f"or use another --name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} (since {datetime.datetime.now():%Y-%m-%d %H:%M:%S})\n")
        handle.flush()
        yield


def remove_stale_temporaries(*folders: Path) -> None:
    """Delete the temporary files of writes that a killed process left (utils.atomic_write names
    them .<name>.<random>.tmp<suffix>); only the lock holder calls this, so none is in flight."""
    for folder in folders:
        for path in folder.glob(".*.tmp*") if folder.is_dir() else []:
            path.unlink(missing_ok=True)


def move_aside(*folders: Path) -> list[Path]:
    """Starting over: move the old run's folders to <name>.old-<date-time> beside them."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved = []
    for folder in folders:
        if folder.is_dir() and any(folder.iterdir()):
            target = folder.with_name(f"{folder.name}.old-{stamp}")
            shutil.move(str(folder), str(target))
            moved.append(target)
    return moved


@contextlib.contextmanager
def stop_on_signals(state: RunState, print_line: Callable[[str], None]) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM ask to stop after the current iteration, with a checkpoint;
    in one process a second signal acts at once (under torchrun repeats are relays, ignored)."""

    def ask_to_stop(signum: int) -> None:
        if not state.stop:
            print_line(
                f"{signal.Signals(signum).name}: stopping after this iteration, with a checkpoint"
                + (" (again to abort)" if state.world.size == 1 else "")
            )
        state.stop = True

    with on_signals((signal.SIGINT, signal.SIGTERM), ask_to_stop, once=state.world.size == 1):
        yield
