"""The checkpoints a run writes as it trains: latest.pt within an epoch (after checking that every
number in it is still usable) and after an epoch, epoch_NNN.pt every save_every epochs and
best.pt at the lowest val_L1 so far. The files are written by the background writer, from copies
taken now."""

from __future__ import annotations

import functools

from training import checkpoint as ckpt
from training import distributed as ddp
from training.background import BackgroundWriter, cpu_copy
from training.guards import check_losses, check_networks
from training.state import LOSS_NAMES, RunDirs, RunState


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
