"""A run's control: the locks that give its two folders one owner, the leftovers of killed writes,
moving an old run aside (by rename only, saying how much it holds), and stopping on Ctrl-C or
SIGTERM with a checkpoint."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import signal
from pathlib import Path
from typing import Callable, Iterator

from files.writing import is_temporary_name
from training.state import RunState
from utils import OutputError, on_signals, open_own_file


class RunLockError(RuntimeError):
    """Another process holds one of the run's folders, or a lock file cannot be made; the message
    says which."""


LOCK_TRIES = 5  # openings of the lock file, each time another process removed the one just opened


@contextlib.contextmanager
def run_lock(*folders: Path) -> Iterator[None]:
    """Hold the run's folders (checkpoints/<name>, results/<name>) for this process: a second
    process that would write in one of them, under whatever name, stops at once.

    One OS file lock (flock) per folder, on a file beside it named after the folder's real path
    (links followed, `..` applied; lock_files), so two spellings of one folder share one lock:
    <parent>/.<name>.lock. The kernel drops it when the process ends however it ends (kill -9
    included), so a stale lock never needs clearing by hand. The holder removes each file when the
    block ends, whether the run finished or failed, while it still holds the lock; a process that
    locked the file just as it was removed finds its name gone (or another file under it) and
    opens the name again.
    """
    with contextlib.ExitStack() as held:
        for lock_path, folder in lock_files(folders):
            held.enter_context(_hold(lock_path, folder))
        yield


def lock_files(folders: tuple[Path, ...] | list[Path]) -> list[tuple[Path, Path]]:
    """(lock file, folder) for each of `folders`, once each: the lock of the folder's real path,
    and for a folder that is itself a link, also the lock of the link's own name (moving the run
    aside renames the link, and the run then makes a new folder under that name)."""
    found: dict[Path, Path] = {}
    for folder in folders:
        places = [folder.resolve()]
        if folder.is_symlink():
            places.append(folder.parent.resolve() / folder.name)
        for place in places:
            found.setdefault(place.parent / f".{place.name}.lock", folder)
    return list(found.items())


@contextlib.contextmanager
def _hold(lock_path: Path, folder: Path) -> Iterator[None]:
    for _ in range(LOCK_TRIES):
        handle = _open_lock(lock_path)
        with handle:
            _acquire(handle, folder)
            if not _still_named(handle, lock_path):
                continue  # locked a file that the previous holder removed: try the name again
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} (since {datetime.datetime.now():%Y-%m-%d %H:%M:%S})\n")
            handle.flush()
            try:
                yield
            finally:
                # Still holding the lock, and the name is this file's: no one else can hold it.
                if _still_named(handle, lock_path):
                    lock_path.unlink(missing_ok=True)
            return
    raise RunLockError(f"{lock_path}: the lock file keeps being removed by other processes; try again")


def _open_lock(lock_path: Path):
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return open_own_file(lock_path, "r+")  # never through a link planted at its name
    except OSError as err:
        raise RunLockError(f"{lock_path}: cannot create the run's lock file ({err.strerror})") from None


def _acquire(handle, folder: Path) -> None:
    """flock the open lock file, or RunLockError naming the folder and the process that holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise RunLockError(
            f"{folder}: a run being trained by {holder} writes in this folder; "
            f"wait for it to end, or use another --name"
        ) from None


def _still_named(handle, lock_path: Path) -> bool:
    """Whether `lock_path` still names the open file (not removed, nor replaced by another)."""
    try:
        named = os.stat(lock_path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def remove_stale_temporaries(folder: Path, *subfolders: str) -> list[Path]:
    """Delete the temporary files that killed writes left in a run's `folder` and in its
    `subfolders` (e.g. "samples"); returns them. Only files named as files.writing.atomic_write names its
    temporaries (is_temporary_name) go, and no link is followed: a subfolder that is a link leads
    out of the run's folders and is left alone. Only the holder of the run's lock calls this, so
    no write of the run is in flight."""
    removed = []
    places = [folder] + [folder / name for name in subfolders if not (folder / name).is_symlink()]
    for place in places:
        try:
            entries = list(os.scandir(place))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if is_temporary_name(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def size_text(n_bytes: int) -> str:
    """A file size as a person reads it, in decimal units: 686 MB, 5.5 GB, 12 kB, 80 bytes."""
    if n_bytes < 1000:
        return f"{n_bytes} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if n_bytes < 1000 * scale:
            return f"{n_bytes / scale:.0f} {unit}"
    return f"{n_bytes / 1e9:.1f} GB"


def folder_size(folder: Path) -> int:
    """The bytes of the files in `folder` and its subfolders (links are not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile: nothing to count
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def aside_line(moved: Path, why: str) -> str:
    """What move_aside did with one folder, for the user: where the old files are now, how much
    they hold, and that they are the user's to keep or delete."""
    old = _moved_from(moved)
    return (
        f"{why}: the previous run's files in {old} are now in {moved} ({size_text(folder_size(moved))}); "
        f"nothing deletes them: remove that folder when you no longer need it"
    )


def _moved_from(moved: Path) -> Path:
    """The folder that move_aside moved to `moved` (<name>.old-<stamp>[-N] -> <name>)."""
    return moved.with_name(moved.name.rsplit(".old-", 1)[0])


def where_now(path: Path, moved: list[Path]) -> Path:
    """Where `path` is after move_aside moved its folders to `moved`: the same file in the folder
    moved, or `path` itself when it lay in none of them."""
    here = Path(os.path.abspath(path))
    for target in moved:
        folder = Path(os.path.abspath(_moved_from(target)))
        if here.is_relative_to(folder):
            return target / here.relative_to(folder)
    return path


def move_aside(*folders: Path) -> list[Path]:
    """Starting over: rename the old run's folders (those that hold anything) to
    <name>.old-<date-time> beside them, with -2, -3, ... where that name is taken, the same
    for all; aside_line says so, and they stay until the user deletes them.

    Only a rename, never a copy and a delete: a folder that cannot be renamed (a mount point, a
    folder in use) raises OutputError saying so, after the folders renamed before it are put back,
    so that nothing is moved.
    """
    todo = [folder for folder in _distinct(folders) if folder.is_dir() and any(folder.iterdir())]
    if not todo:
        return []
    targets = _free_names(todo, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    done: list[tuple[Path, Path]] = []
    for folder, target in zip(todo, targets):
        try:
            os.rename(folder, target)
        except OSError as err:
            left = _put_back(done)
            raise OutputError(
                f"{folder}: cannot be moved aside to {target.name} ({err.strerror or err}); a new start "
                f"only renames the previous run's folders, never copies them, and moved nothing{left}: "
                f"move or empty {folder} yourself, or use another --name"
            ) from None
        done.append((folder, target))
    return targets


def _distinct(folders: tuple[Path, ...]) -> list[Path]:
    """`folders` less those that are another one under another spelling (the same real path)."""
    seen: dict[Path, Path] = {}
    for folder in folders:
        seen.setdefault(folder.resolve(), folder)
    return list(seen.values())


MOVED_NAME_TRIES = 1000  # <name>.old-<stamp>-N names looked at before giving up


def _free_names(folders: list[Path], stamp: str) -> list[Path]:
    """<name>.old-<stamp>[-N] beside each folder, with the first N at which none of them exists."""
    for n in range(1, MOVED_NAME_TRIES + 1):
        tail = f".old-{stamp}" + (f"-{n}" if n > 1 else "")
        targets = [folder.with_name(folder.name + tail) for folder in folders]
        if not any(os.path.lexists(target) for target in targets):
            return targets
    raise OutputError(f"{folders[0]}: {MOVED_NAME_TRIES} names {folders[0].name}.old-{stamp}-N are taken")


def _put_back(done: list[tuple[Path, Path]]) -> str:
    """Undo the renames of `done`; '' when all are undone, else the words naming what is left."""
    left = []
    for folder, target in reversed(done):
        try:
            os.rename(target, folder)
        except OSError:
            left.append(f"{folder} is in {target}")
    return f" (but {', '.join(left)})" if left else ""


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
