"""Everything around a run's epoch loop, as the two context managers train.py enters:

- ``opened``: the checks before any work (preflight), the locks of the run's two folders, the
  data (downloaded once, by one process), the state (setup) resumed from its checkpoint, the
  loader, and the agreement of all processes on where the run starts. It yields a ``Run``, or
  None when the run has already trained its epochs; a run finished by its checkpoint is said
  before data and networks are built.
- ``running``: Ctrl-C and SIGTERM stop after the current iteration with a checkpoint, and the
  background writer writes the epoch's files; on leaving, every file given to it is written,
  with the signals still caught.

The checkpoints the loop leaves: ``save_latest_in_epoch`` (after checking that every number in it
is still usable), ``save_snapshots`` (epoch_NNN.pt every save_every epochs, best.pt at the lowest
val_L1 so far) and ``save_latest_after_epoch``, all written by the background writer from copies
taken when they are called.

``run_errors`` turns what can go wrong in a run into one line and an exit status (train.py's main).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from config import Config, architecture_defaults
from dataset import PairedDataset
from evaluation.metrics import MissingPackageError, inception_weights_path
from files.images import DatasetError
from training import checkpoint as ckpt
from training import distributed as ddp
from training import preflight, run_control
from training.background import BackgroundWriter, LatestSchedule, cpu_copy
from training.checkpoint import CheckpointError
from training.checkpoint_format import FORMAT
from training.guards import TrainingError, check_losses, check_networks
from training.loader import build_data, make_loader, prepare_data_root
from training.settings import ConfigError
from training.setup import setup
from training.state import LOSS_NAMES, RunDirs, RunState
from utils import OutputError, exit_on_errors


@dataclasses.dataclass
class Run:
    """A run ready for its next epoch: its state, its data and where its files go."""

    state: RunState
    train_set: PairedDataset
    val_set: PairedDataset
    loader: DataLoader
    dirs: RunDirs
    schedule: LatestSchedule  # when latest.pt is due at an epoch's end


@contextlib.contextmanager
def opened(
    cfg: Config, world: ddp.World, device: torch.device | None, open_log: Callable[[Path], None]
) -> Iterator[Run | None]:
    """The run from its checks to its first iteration, holding the locks of its two folders until
    the block ends. `open_log(path)` names the file the run's log goes to (train.log)."""
    preflight.check_run(cfg, world, device)  # every setting and path, before any work
    # A missing optional package fails now, not after the first epoch.
    preflight.check_tensorboard(cfg.tensorboard)
    if cfg.val_fid:
        inception_weights_path()
    dirs = RunDirs.of(cfg)
    # Both folders: no other process may write in either, under whatever name (rank 0 holds them).
    lock = run_control.run_lock(dirs.checkpoints, dirs.results) if world.is_main else contextlib.nullcontext()
    with lock:
        if finished(cfg, dirs, world, open_log):
            yield None
            return
        if world.is_main:
            print(f"{cfg.name}: reading {cfg.data_root} and building the networks")
        ddp.in_turns(world, device, lambda: prepare_data_root(cfg))  # a download happens once
        train_set, val_set = build_data(cfg)  # first, so that bad data fails before any work
        state = setup(cfg, world, device)
        if world.is_main:
            run_control.remove_stale_temporaries(dirs.checkpoints)
            run_control.remove_stale_temporaries(dirs.results, "samples")
        ckpt.resume_or_start(state, dirs, architecture_defaults())
        if state.epoch >= cfg.epochs:  # --resume false from a snapshot that has its epochs already
            finished(cfg, dirs, world, open_log, state.epoch, cfg.resume_from)
            yield None
            return
        loader = make_loader(train_set, cfg, state.device, world)
        ckpt.fit_epoch_to_loader(state, len(loader))
        ddp.check_same_start(world, state.device, state.epoch, state.progress.iteration)
        schedule = LatestSchedule(cfg.latest_every_s, dirs.latest.exists())
        try:
            yield Run(state, train_set, val_set, loader, dirs, schedule)
        except TrainingError as err:  # a number became impossible: say what is left to go on from
            raise TrainingError(f"{err}; {last_good_state(dirs.latest)}") from None


def finished(
    cfg: Config,
    dirs: RunDirs,
    world: ddp.World,
    open_log: Callable[[Path], None],
    epoch: int | None = None,
    path: str | Path | None = None,
) -> bool:
    """Whether the checkpoint the run would continue from has trained cfg.epochs already, said
    in one line (also in train.log). Without `epoch`, only the checkpoint's epoch is read (a
    memory-mapped load): the full load and its checks come with the run."""
    if epoch is None:  # the run's own latest.pt (any other start moves the run's folders aside first)
        path = dirs.latest
        if not cfg.resume or not path.is_file():
            return False
        epoch = recorded_epoch(path)
        if epoch is None or epoch < cfg.epochs:
            return False
    if world.is_main:
        open_log(dirs.results / "train.log")
        print(f"{cfg.name} has finished {epoch}/{cfg.epochs} epochs ({path}); raise --epochs to continue it")
    return True


def last_good_state(latest: Path) -> str:
    """What a stopped run can continue from, as the files say (not as the run hoped)."""
    epoch = recorded_epoch(latest) if latest.is_file() else None
    if epoch is None:
        return "no checkpoint was written before it, so the run starts over when run again"
    return f"{latest} (epoch {epoch}) holds the last good state"


def recorded_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file of a format this code reads records, or None where it cannot be
    read cheaply."""
    try:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        readable = isinstance(saved, dict) and saved.get("format", 1) in range(1, FORMAT + 1)
        epoch = saved.get("epoch") if readable else None
    except Exception:  # anything unreadable is reported by the full load that follows
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


@contextlib.contextmanager
def running(state: RunState, say: Callable[[str], None]) -> Iterator[BackgroundWriter]:
    """Signals caught and the writer open for the epochs; the writer flushes before the signals
    are released."""
    with run_control.stop_on_signals(state, say), BackgroundWriter() as writer:
        yield writer


def save_latest_in_epoch(state: RunState, dirs: RunDirs, where: str, writer: BackgroundWriter) -> None:
    """latest.pt within an epoch, unless a loss, a weight or a BatchNorm statistic is no longer a
    usable number; once the writes given before are done (one copy of the state waits at most)."""
    check_losses(LOSS_NAMES, state.progress.total, state.progress.iteration, where)
    check_networks({"generator": state.G, "discriminator": state.D}, where)
    ddp.on_main(state.world, state.device, writer.wait)
    ckpt.save_latest(state, dirs.latest, writer)


def save_snapshots(state: RunState, dirs: RunDirs, writer: BackgroundWriter) -> None:
    """epoch_NNN.pt every save_every epochs and best.pt at the lowest val_L1 so far: one copy."""
    paths = [dirs.checkpoints / "best.pt"] if state.history.is_best(state.history.epochs[-1]) else []
    if state.cfg.save_every and state.epoch % state.cfg.save_every == 0:
        paths.insert(0, dirs.checkpoints / f"epoch_{state.epoch:03d}.pt")
    snapshot = cpu_copy(ckpt.snapshot(state)) if paths else None
    for path in paths:
        writer.submit(functools.partial(ckpt.save_checkpoint, snapshot, path))


def save_latest_after_epoch(state: RunState, dirs: RunDirs, writer: BackgroundWriter) -> None:
    """latest.pt after an epoch, given to the writer after the epoch's other files: the commit point."""
    ckpt.save_latest(state, dirs.latest, writer)


def run_errors() -> contextlib.AbstractContextManager:
    """A bad setting exits 2, a run that cannot go on (data, checkpoint, lock, output, numbers,
    processes, a missing package) exits 1, as does running out of memory: one line each, never a
    traceback. Anything else is a bug, said in one line that names the file holding its full
    traceback: the run's train.log once it is open (reporting/runlog.py names it), else a new
    pix2pix-error-*.log in the temporary folder."""
    failures = (
        DatasetError,
        CheckpointError,
        run_control.RunLockError,
        OutputError,
        TrainingError,
        ddp.DistributedError,
        MissingPackageError,
    )
    return exit_on_errors((ConfigError,), failures)
