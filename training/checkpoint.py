"""The run's state in checkpoints: the dicts a run writes (``snapshot`` for best.pt and
epoch_NNN.pt, ``full_checkpoint`` for latest.pt), writing latest.pt, and continuing a run from a
checkpoint (``restore``, ``resume_or_start``, ``fit_epoch_to_loader``).

What the files hold, their format number, the upgrade of older files, writing and reading them
checked: checkpoint_format.py. The lock that gives a run one owner: run_control.py.

Every checkpoint is written atomically. latest.pt is the commit point of an epoch: it is written
after everything else the epoch writes, so a crash at any moment loses nothing that a rerun does
not make again.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from config import ARCHITECTURE_FIELDS, Config
from files.images import DatasetError
from training.background import BackgroundWriter, cpu_copy
from training.checkpoint_format import (
    FORMAT,
    CheckpointError,
    check_state_dict,
    load_checkpoint,
    newest_loadable_snapshot,
    save_checkpoint,
)
from training.checkpoint_format import load_generator as load_generator  # where scripts look for it
from training.distributed import gather_objects, mean_over_ranks, on_main
from training.loader import validation_folder
from training.run_control import aside_line, move_aside, where_now
from training.state import History, Progress, RunDirs, RunState
from utils import rng_state, set_rng_state

# ---------------------------------------------------------------------------------------------
# Contents
# ---------------------------------------------------------------------------------------------


def snapshot(state: RunState) -> dict:
    """best.pt / epoch_NNN.pt: the networks, how to rebuild them, the config, epoch and metrics."""
    return {
        "format": FORMAT,
        "kind": "snapshot",
        "generator": state.G.state_dict(),
        "discriminator": state.D.state_dict(),
        "generator_kwargs": state.generator_kwargs,
        "config": dataclasses.asdict(state.cfg),
        "epoch": state.epoch,
        "history": state.history.to_dict(),
        "metrics": state.history.epochs[-1] if state.history.epochs else {},
    }


def full_checkpoint(state: RunState) -> dict:
    """latest.pt: the snapshot plus optimizers, schedules, progress within the epoch and RNG states."""
    p = state.progress
    return {
        **snapshot(state),
        "kind": "full",
        "opt_G": state.opt_G.state_dict(),
        "opt_D": state.opt_D.state_dict(),
        "sched_G": state.sched_G.state_dict(),
        "sched_D": state.sched_D.state_dict(),
        "scaler": state.scaler.state_dict(),
        "progress": {
            "iteration": p.iteration,
            "total": p.total.tolist(),
            "window": p.window.tolist(),
            "in_window": p.in_window,
            "batches": p.batches,
        },
        "rng": rng_state(),
        "world_size": state.world.size,
        "rng_ranks": state.rng_ranks or [],
    }


def save_latest(state: RunState, path: Path, writer: BackgroundWriter | None = None) -> None:
    """latest.pt, the commit point of the run so far: every process calls it, rank 0 writes, at
    once or, given a writer, in its thread (after the files given to it before)."""
    if state.world.size > 1:
        # Each process's partial sums become their mean (the epoch mean is unchanged), so any
        # number of processes can resume them; every process's RNG state goes into the file.
        mean_over_ranks(state.progress.total, state.world)
        mean_over_ranks(state.progress.window, state.world)
        state.rng_ranks = gather_objects(state.world, rng_state())
    checkpoint = full_checkpoint(state)

    def write() -> None:
        if writer is None:
            save_checkpoint(checkpoint, path)
        else:  # a copy taken now, written in the writer's thread
            writer.submit(functools.partial(save_checkpoint, cpu_copy(checkpoint), path))

    on_main(state.world, state.device, write)


# ---------------------------------------------------------------------------------------------
# Continuing a run
# ---------------------------------------------------------------------------------------------


# What a continued run does with each config field whose value differs from its checkpoint's
# (docs/recovery.md, "Settings changed on resume"; a test checks that every field is here):
REFUSED = "refused"  # fixes the networks, how they started, or the task: refused, naming the field
RECORDED = "recorded"  # what the epochs to come train or measure: applied, said and recorded
NOT_RECORDED = "not recorded"  # where and how the run works, not what it trains or generates
ON_RESUME = {
    **dict.fromkeys(ARCHITECTURE_FIELDS, REFUSED),
    "init_gain": REFUSED,  # the weights were initialised with the checkpoint's value
    # the data and its augmentation, generated from the next epoch on (seed: the data order too)
    **dict.fromkeys(("data_root", "data_layout", "preprocess", "load_size", "flip", "max_images"), RECORDED),
    **dict.fromkeys(("seed", "dropout", "precision", "sync_bn", "batch_size"), RECORDED),
    # Adam and the loss (apply_optimiser_settings), and the lr schedule (_follow_schedule)
    **dict.fromkeys(("lr", "beta1", "beta2", "lambda_l1", "epochs", "lr_decay_epochs"), RECORDED),
    # what validation scores, and how it generates (also what predict.py and demo.py read)
    **dict.fromkeys(("eval_mode", "val_images", "val_fid"), RECORDED),
    **dict.fromkeys(
        (
            "download_url", "download_sha256", "name", "checkpoint_dir", "results_dir", "resume",
            "resume_from", "save_every", "log_every", "tensorboard", "checkpoint_every",
            "latest_every_s", "device", "threads", "speedups", "cuda_graphs",
            "num_samples", "val_every",  # which pairs the grid shows; which rows have val_* columns
        ),
        NOT_RECORDED,
    ),
}  # fmt: skip


def restore(state: RunState, checkpoint: dict, path: Path, architecture: dict[str, object]) -> None:
    """Load a checkpoint (as load_checkpoint gives it: of the current format) into the run's state:
    the networks first; a full one also the optimizers, schedules, progress and RNG states.
    `architecture`: the config fields that fix the networks and the data, with the values a
    checkpoint without such a field was made with (its defaults). A changed field is refused or
    recorded as ON_RESUME says."""
    if "discriminator" not in checkpoint:
        raise CheckpointError(
            f"{path}: holds no discriminator weights, so training cannot continue from it; "
            f"use a latest.pt, best.pt or epoch_NNN.pt written by train.py"
        )
    _refuse_changes(state, checkpoint["config"], path, architecture)
    for net, key in ((state.G, "generator"), (state.D, "discriminator")):
        check_state_dict(net, checkpoint[key], key, path)
        net.load_state_dict(checkpoint[key])
    state.epoch = checkpoint["epoch"]
    if checkpoint["history"]:
        state.history = History.from_dict(checkpoint["history"])
    if checkpoint["kind"] == "full":
        _restore_training(state, checkpoint, path)
        _apply_optimiser_settings(state)
    elif state.world.is_main:  # a snapshot: Adam starts afresh with the config's settings
        print(f"{path} is a snapshot without optimizer state: Adam starts fresh from epoch {state.epoch + 1}")
    _record_changes(state, checkpoint["config"], path)
    _follow_schedule(state)


def _refuse_changes(state: RunState, saved: dict, path: Path, architecture: dict[str, object]) -> None:
    """One line naming the refused fields that differ, the values that continue from `path`, and
    how to train with the new ones instead."""
    cfg = state.cfg
    made_with = {**architecture, **{f: saved[f] for f in ON_RESUME if ON_RESUME[f] == REFUSED and f in saved}}
    changed = [f for f, value in made_with.items() if value != getattr(cfg, f)]
    if not changed:
        return
    detail = ", ".join(f"{f}={made_with[f]!r} there, {getattr(cfg, f)!r} now" for f in changed)
    same = " ".join(f"--{f} {made_with[f]}" for f in changed)
    if Path(path) == RunDirs.of(cfg).latest:
        other = "--resume false starts the run over with the new values (this one is moved aside)"
    else:
        other = "without --resume_from the run trains new networks with the new values"
    raise CheckpointError(f"{path} cannot continue with this config ({detail}): {same} continues it; {other}")


def _record_changes(state: RunState, saved: dict, path: Path) -> None:
    """Each RECORDED field whose value differs from the checkpoint's: said once and recorded in the
    history (and so in the checkpoints and config.json) with the first epoch that uses it. A
    checkpoint older than a field says nothing of its value: not compared. epochs counts where the
    lr schedule depends on it (lr_decay_epochs > 0); else it only says how long the run goes on."""
    cfg = state.cfg
    schedule = saved.get("lr_decay_epochs", cfg.lr_decay_epochs) or cfg.lr_decay_epochs
    changes = [
        {"epoch": state.epoch + 1, "field": f.name, "from": saved[f.name], "to": getattr(cfg, f.name)}
        for f in dataclasses.fields(Config)
        if ON_RESUME[f.name] == RECORDED
        and f.name in saved
        and saved[f.name] != getattr(cfg, f.name)
        and (f.name != "epochs" or schedule)
    ]
    state.history.changes += changes
    if changes and state.world.is_main:
        said = ", ".join(f"{c['field']} {c['from']} -> {c['to']}" for c in changes)
        print(f"{path}: changed settings apply from epoch {state.epoch + 1} on: {said}")


def _restore_training(state: RunState, checkpoint: dict, path: Path) -> None:
    try:
        for key in ("opt_G", "opt_D", "sched_G", "sched_D", "scaler"):
            getattr(state, key).load_state_dict(checkpoint[key])
        p = checkpoint["progress"]
        state.progress = Progress(
            total=torch.tensor(p["total"], device=state.device),
            window=torch.tensor(p["window"], device=state.device),
            iteration=p["iteration"],
            in_window=p["in_window"],
            batches=p["batches"],
        )
        set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its training state does not fit this run ({err!r})") from None
    _restore_across_world_sizes(state, checkpoint, path)


def _apply_optimiser_settings(state: RunState) -> None:
    """Adam and the lr schedule take the config's lr and betas, not the checkpoint's (its
    state_dicts carry the old ones); _record_changes says and records the change."""
    cfg = state.cfg
    for opt, sched in ((state.opt_G, state.sched_G), (state.opt_D, state.sched_D)):
        sched.base_lrs = [cfg.lr for _ in opt.param_groups]
        for group in opt.param_groups:
            group["initial_lr"], group["betas"] = cfg.lr, (cfg.beta1, cfg.beta2)


def _follow_schedule(state: RunState) -> None:
    """The lr of the epoch to come under the schedule the run follows now: a run continued with
    another --epochs or --lr_decay_epochs, or from a snapshot, trains at the lr of its new schedule."""
    for opt, sched in ((state.opt_G, state.sched_G), (state.opt_D, state.sched_D)):
        sched.last_epoch = state.epoch
        for group, base_lr, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base_lr * factor(state.epoch)


def _restore_across_world_sizes(state: RunState, checkpoint: dict, path: Path) -> None:
    """What changes when a run continues with another number of processes (or another batch size).

    Each process takes its own saved RNG state when the number is the same, else a fresh stream
    of its own. A checkpoint from within an epoch whose batches are now cut differently restarts
    that epoch from its first batch: its iterations would not line up.
    """
    world, cfg = state.world, state.cfg
    if world.size > 1:
        ranks = checkpoint["rng_ranks"]
        if len(ranks) == world.size:
            set_rng_state(ranks[world.rank])
        else:
            torch.manual_seed(hash((cfg.seed, world.rank, state.epoch)) & 0xFFFFFFFF)
    saved = (checkpoint["world_size"], checkpoint["config"].get("batch_size", cfg.batch_size))
    if state.progress.iteration and saved != (world.size, cfg.batch_size):
        if world.is_main:
            print(
                f"{path}: saved within epoch {state.epoch + 1} "
                f"by {saved[0]} process(es) of batch {saved[1]}; "
                f"that epoch starts again with {world.size} of batch {cfg.batch_size}"
            )
        state.restart_epoch()


def load_latest(path: Path, device: torch.device) -> dict:
    """latest.pt; if it cannot be loaded, one line naming the newest snapshot that can and the
    command that continues from it."""
    try:
        return load_checkpoint(path, device, name_snapshot=False)
    except CheckpointError as err:
        fallback = newest_loadable_snapshot(path.parent)
        # The run's own latest.pt wins over --resume_from: starting over from the snapshot is
        # what goes on from it (resume_or_start reads it before its folder is moved aside).
        way_out = (
            f"continue from the newest loadable snapshot with --resume false --resume_from {fallback} "
            f"(this run's folders, this file included, are moved aside first)"
            if fallback
            else "no snapshot beside it loads either; "
            "--resume false starts over (the old files are moved aside)"
        )
        raise CheckpointError(f"{err}; {way_out}") from None


# ---------------------------------------------------------------------------------------------
# Where the run goes on from: its latest.pt, --resume_from, or a new start
# ---------------------------------------------------------------------------------------------


def resume_or_start(state: RunState, dirs: RunDirs, architecture: dict[str, object]) -> None:
    """Where the run goes on from, in this order (docs/recovery.md):

    - --resume false: a new start (_start_over);
    - the run's own latest.pt, when it has one: it wins over --resume_from, which only starts a run
      (so the same command continues after a stop);
    - else a new start too, from the weights of --resume_from if given.

    Then validation keeps the split the run started with (_keep_validation_split).
    """
    cfg, main = state.cfg, state.world.is_main
    given = Path(cfg.resume_from) if cfg.resume_from else None
    if not cfg.resume:
        _start_over(state, dirs, given, "--resume false", architecture)
    elif dirs.latest.exists():
        if given and main:
            print(
                f"{dirs.latest} exists: the run continues from it (--resume_from {cfg.resume_from} "
                f"only starts a run; --resume false starts over from it)"
            )
        _continue_from(state, dirs.latest, load_latest(dirs.latest, state.device), architecture)
    else:
        _start_over(state, dirs, given, "a new run", architecture)
    _keep_validation_split(state)


def _start_over(
    state: RunState, dirs: RunDirs, given: Path | None, why: str, architecture: dict[str, object]
) -> None:
    """A new start: both folders of the run's name are moved aside, whichever hold files (a run
    never writes into another run's files), then the run starts, from the weights of --resume_from
    if given: read before the move, since it may be a snapshot of the run moved."""
    start = load_checkpoint(given, state.device) if given else None
    moved: list[Path] = []  # rank 0's
    on_main(state.world, state.device, lambda: moved.extend(move_aside(dirs.checkpoints, dirs.results)))
    _say_moved(moved, why)
    if start is not None:
        _continue_from(state, where_now(given, moved), start, architecture)


def _continue_from(state: RunState, path: Path, checkpoint: dict, architecture: dict[str, object]) -> None:
    restore(state, checkpoint, path, architecture)
    if state.world.is_main and state.epoch < state.cfg.epochs:
        print(f"resuming {path}: epoch {state.epoch + 1}, iteration {state.progress.iteration}")


def _keep_validation_split(state: RunState) -> None:
    """Validation scores the split the run started with (val/, else test/, else train/), so that
    its val_* columns measure one thing: a continued run whose data now lacks that split stops
    with one line (unless it validates no more); a new run records its split."""
    cfg, history = state.cfg, state.history
    split = validation_folder(Path(cfg.data_root))
    if cfg.val_every and history.val_split and split.name != history.val_split:
        raise DatasetError(
            f"{split.parent}: validation would score {split.name}/, but this run has scored "
            f"{history.val_split}/ since it started (its val_* columns measure that split); put "
            f"{split.parent / history.val_split} back, or --val_every 0 to train on without validation"
        )
    history.val_split = history.val_split or split.name


def _say_moved(moved: list[Path], why: str) -> None:
    for folder in moved:
        print(aside_line(folder, why))


def fit_epoch_to_loader(state: RunState, n_batches: int) -> None:
    """A checkpoint saved within an epoch that is now cut into another number of iterations (the
    data or the batch size changed) cannot skip the iterations it had done: that epoch starts
    again from its first iteration, as the line says."""
    p = state.progress
    # Saved with its epoch's length: compare it; 0 (a format 1 file): only an impossible iteration tells.
    misfit = p.batches != n_batches if p.batches else p.iteration > n_batches
    if p.iteration and misfit:
        if state.world.is_main:
            print(
                f"latest.pt was saved at iteration {p.iteration} of an epoch of {p.batches or '?'}; "
                f"with this data and batch size an epoch has {n_batches}: epoch {state.epoch + 1} "
                f"starts again from its first iteration"
            )
        state.restart_epoch()
