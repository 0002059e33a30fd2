"""The run's state and its checkpoints: what they hold, writing and reading them, continuing a
run from one, the lock that gives a run one owner, and stopping on a signal with a checkpoint.

A checkpoint is a dict of tensors and plain data, loadable with
``torch.load(path, weights_only=True)``. Two kinds:

- ``latest.pt``, kind "full": everything needed to continue the run exactly.
    generator, discriminator    state_dicts of the bare networks (no DDP "module." prefix)
    generator_kwargs            UNetGenerator(**generator_kwargs) rebuilds the generator
    config                      the run's config fields, a plain dict
    epoch                       epochs completed
    history                     {"epochs": [one row per epoch], "steps": {"epoch": [...], <loss>: [...]}}
    opt_G, opt_D, sched_G, sched_D, scaler   optimizer, lr schedule and fp16 loss-scale states
    progress                    {"iteration", "total", "window", "in_window"} within the next epoch
    rng, world_size, rng_ranks  every RNG state (rng_ranks: one per process under torchrun)
- ``best.pt`` and ``epoch_NNN.pt``, kind "snapshot": the first six keys above plus ``metrics``
  (the epoch's row of the history): what a user needs to use, compare or fine-tune the networks,
  about a third of latest.pt (Adam keeps two moments per weight).

Every checkpoint is written atomically. latest.pt is the commit point of an epoch: it is written
after everything else the epoch writes, so a crash at any moment loses nothing that a rerun does
not make again. Each carries a checksum of its contents (integrity.py), verified whenever it
is loaded: a file changed after it was written is refused, not used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path

import torch
from torch import nn

from training.background import BackgroundWriter, cpu_copy
from training.distributed import gather_objects, mean_over_ranks, on_main
from training.integrity import first_non_finite, seal, unseal
from training.run_control import move_aside
from training.state import History, Progress, RunDirs, RunState
from utils import atomic_write, first_line, map_tensors, rng_state, set_rng_state

FULL_KEYS = (
    "generator",
    "discriminator",
    "opt_G",
    "opt_D",
    "sched_G",
    "sched_D",
    "scaler",
    "epoch",
    "progress",
    "config",
    "history",
    "rng",
)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, not a checkpoint, or does not fit; the message names it."""


# ---------------------------------------------------------------------------------------------
# Contents
# ---------------------------------------------------------------------------------------------


def snapshot(state: RunState) -> dict:
    """best.pt / epoch_NNN.pt: the networks, how to rebuild them, the config, epoch and metrics."""
    return {
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
        **({"rng_ranks": state.rng_ranks} if state.rng_ranks else {}),
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


def generator_kwargs_of(checkpoint: dict) -> dict:
    """UNetGenerator's constructor arguments: stored since this schema; read off the weights of
    older checkpoints (which stored only the config)."""
    if "generator_kwargs" in checkpoint:
        return dict(checkpoint["generator_kwargs"])
    weights, config = checkpoint["generator"], checkpoint.get("config", {})
    first, last = weights["down.0.weight"], weights["final.1.weight"]  # (ngf, in, 4, 4), (2 ngf, out, 4, 4)
    return {
        "in_channels": first.shape[1],
        "out_channels": last.shape[1],
        "ngf": first.shape[0],
        "num_downs": 1 + sum(1 for k in weights if k.startswith("down.") and k.endswith(".1.weight")),
        "norm": "batch" if any(k.endswith("running_mean") for k in weights) else "instance",
        "dropout": config.get("dropout", 0.5),
    }


# ---------------------------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------------------------


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    # Every tensor in the standard (contiguous) layout, whatever layout the run computes in (the
    # CPU's bf16 runs keep weights and moments channels_last): the file does not depend on it.
    checkpoint = map_tensors(checkpoint, torch.Tensor.contiguous)
    sealed = seal(checkpoint)  # the checksum inside the file: one rename commits both
    with _without_crc32():
        atomic_write(path, lambda tmp: torch.save(sealed, tmp))


def _without_crc32() -> contextlib.AbstractContextManager:
    """torch.save without the zip records' CRC-32s, which torch.load never checks: computing them
    is a large part of writing latest.pt (docs/performance.md). Older torch: a no-op."""
    try:
        from torch.utils.serialization import config

        return config.patch({"save.compute_crc32": False})
    except (ImportError, AttributeError, KeyError):
        return contextlib.nullcontext()


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", name_snapshot: bool = True
) -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain data only, never code; its
    checksum verified (a mismatch names, with name_snapshot, the newest snapshot that verifies).
    The authors' latest_net_G.pth files load as snapshots (official_weights.py)."""
    from training import official_weights

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
        checkpoint = official_weights.as_project(loaded, path.stem)
    except Exception as err:  # torch raises many kinds for a file that is not a safe checkpoint
        reason = first_line(err) or type(err).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})") from None
    if isinstance(checkpoint, dict) and unseal(checkpoint) is False:
        fallback = newest_loadable_snapshot(path.parent) if name_snapshot else None
        beside = f"; the newest snapshot beside it that verifies is {fallback}" if fallback else ""
        raise CheckpointError(
            f"{path}: its contents do not match the checksum written with it (the file changed since)"
            + (beside or ("; no snapshot beside it verifies" if name_snapshot else ""))
        )
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("generator"), dict):
        raise CheckpointError(
            f"{path}: not a pix2pix checkpoint (neither this project's nor the authors' U-Net)"
        )
    for key, kind in (("config", dict), ("epoch", int), ("history", dict), ("generator_kwargs", dict)):
        if key in checkpoint and not isinstance(checkpoint[key], kind):
            raise CheckpointError(
                f"{path}: not a pix2pix checkpoint ({key} is a {type(checkpoint[key]).__name__})"
            )
    return checkpoint


def check_state_dict(module: nn.Module, saved: dict, what: str, path: str | Path) -> None:
    """Raise CheckpointError naming the first parameter whose name or shape does not match."""
    expected = module.state_dict()
    for key in sorted(set(expected) | set(saved)):
        if key not in saved or key not in expected:
            where = "missing from the checkpoint" if key not in saved else "not in the configured network"
            raise CheckpointError(f"{path}: {what} parameter {key} is {where}")
        if not isinstance(saved[key], torch.Tensor) or tuple(saved[key].shape) != tuple(expected[key].shape):
            shape = (
                tuple(saved[key].shape) if isinstance(saved[key], torch.Tensor) else type(saved[key]).__name__
            )
            raise CheckpointError(
                f"{path}: {what} parameter {key} has shape {shape} in the "
                f"checkpoint but {tuple(expected[key].shape)} in the configured network"
            )
    if bad := first_non_finite(saved):
        raise CheckpointError(f"{path}: {what} tensor {bad} holds NaN or infinite values")


def load_generator(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The generator of any checkpoint of this project, and the checkpoint (config, epoch, ...)."""
    from generator import UNetGenerator  # here, so that train.py's imports stay about training

    checkpoint = load_checkpoint(path, device)
    try:
        G = UNetGenerator(**generator_kwargs_of(checkpoint))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the generator from it ({err!r})") from None
    check_state_dict(G, checkpoint["generator"], "generator", path)
    G.load_state_dict(checkpoint["generator"])
    return G.to(device), checkpoint


# ---------------------------------------------------------------------------------------------
# Continuing a run
# ---------------------------------------------------------------------------------------------


def restore(state: RunState, checkpoint: dict, path: Path, architecture: dict[str, object]) -> None:
    """Load a checkpoint into the run's state (the networks first; a full one also the optimizers,
    schedules, progress and RNG states). `architecture`: the config fields that fix the networks
    and the data, with the values a checkpoint older than a field was made with (its defaults)."""
    if not isinstance(checkpoint.get("discriminator"), dict):
        raise CheckpointError(
            f"{path}: holds no discriminator weights, so training cannot continue from it; "
            f"use a latest.pt, best.pt or epoch_NNN.pt written by train.py"
        )
    saved = {**architecture, **checkpoint.get("config", {})}
    changed = [f for f in architecture if saved.get(f) != getattr(state.cfg, f)]
    if changed:
        detail = ", ".join(f"{f}={saved.get(f)!r} there, {getattr(state.cfg, f)!r} now" for f in changed)
        raise CheckpointError(
            f"{path} cannot continue with this config ({detail}); use another --name or "
            f"--resume false to start over"
        )
    for net, key in ((state.G, "generator"), (state.D, "discriminator")):
        check_state_dict(net, checkpoint[key], key, path)
        net.load_state_dict(checkpoint[key])
    state.epoch = int(checkpoint.get("epoch", 0))
    if checkpoint.get("history"):
        state.history = History.from_dict(checkpoint["history"])
    if checkpoint.get("kind", "full") == "full" and all(k in checkpoint for k in FULL_KEYS):
        _restore_training(state, checkpoint, path)
        _apply_changed_settings(state, checkpoint["config"], path)
    else:
        # A snapshot: drop the points of later iterations (there are none) and start Adam afresh.
        if state.world.is_main:
            print(
                f"{path} is a snapshot without optimizer state: "
                f"Adam starts fresh from epoch {state.epoch + 1}"
            )
    _follow_schedule(state)


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
            batches=p.get("batches", 0),
        )
        set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its training state does not fit this run ({err!r})") from None
    _restore_across_world_sizes(state, checkpoint, path)


# Optimisation settings that may change when a run is continued: they take effect from the next
# epoch on and are recorded in the history (and so in config.json and train.log). epochs and
# lr_decay_epochs reshape the lr schedule (_follow_schedule); the architecture fields are refused.
CHANGEABLE = ("lr", "beta1", "beta2", "lambda_l1")
# Settings that change what the history's columns measure, recorded and said the same way, with
# the value of a checkpoint from before the field existed: earlier versions scored the whole split.
RECORDED = {"val_images": 0}


def _apply_changed_settings(state: RunState, saved: dict, path: Path) -> None:
    """Adam and the lr schedule take the config's lr and betas, not the checkpoint's (its
    state_dicts carry the old ones); each change is said once and recorded."""
    cfg = state.cfg
    for opt, sched in ((state.opt_G, state.sched_G), (state.opt_D, state.sched_D)):
        sched.base_lrs = [cfg.lr for _ in opt.param_groups]
        for group in opt.param_groups:
            group["initial_lr"], group["betas"] = cfg.lr, (cfg.beta1, cfg.beta2)
    before = {f: saved[f] for f in CHANGEABLE if f in saved} | {
        f: saved.get(f, v) for f, v in RECORDED.items()
    }
    changes = [
        {"epoch": state.epoch + 1, "field": f, "from": value, "to": getattr(cfg, f)}
        for f, value in before.items()
        if value != getattr(cfg, f)
    ]
    state.history.changes += changes
    if changes and state.world.is_main:
        said = ", ".join(f"{c['field']} {c['from']} -> {c['to']}" for c in changes)
        print(f"{path}: changed settings apply from epoch {state.epoch + 1} on: {said}")


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
        ranks = checkpoint.get("rng_ranks", [])
        if len(ranks) == world.size:
            set_rng_state(ranks[world.rank])
        else:
            torch.manual_seed(hash((cfg.seed, world.rank, state.epoch)) & 0xFFFFFFFF)
    saved = (int(checkpoint.get("world_size", 1)), checkpoint["config"].get("batch_size", cfg.batch_size))
    if state.progress.iteration and saved != (world.size, cfg.batch_size):
        if world.is_main:
            print(
                f"{path}: saved within epoch {state.epoch + 1} "
                f"by {saved[0]} process(es) of batch {saved[1]}; "
                f"that epoch starts again with {world.size} of batch {cfg.batch_size}"
            )
        state.restart_epoch()


def newest_loadable_snapshot(folder: Path) -> Path | None:
    """The snapshot of the latest epoch in `folder` that loads (best.pt or epoch_NNN.pt)."""
    found = []
    for path in sorted(folder.glob("epoch_*.pt")) + [folder / "best.pt"]:
        try:
            found.append((int(load_checkpoint(path, name_snapshot=False).get("epoch", 0)), path))
        except CheckpointError:
            continue
    return max(found)[1] if found else None


def load_latest(path: Path, device: torch.device) -> dict:
    """latest.pt; if it cannot be loaded, one line naming the newest snapshot that can and how to go on."""
    try:
        return load_checkpoint(path, device, name_snapshot=False)
    except CheckpointError as err:
        fallback = newest_loadable_snapshot(path.parent)
        way_out = (
            f"continue from the newest loadable snapshot with --resume_from {fallback}"
            if fallback
            else "no snapshot beside it loads either; "
            "--resume false starts over (the old files are moved aside)"
        )
        raise CheckpointError(f"{err}; {way_out}") from None


# ---------------------------------------------------------------------------------------------
# The run's folders: one owner, leftovers, starting over
# ---------------------------------------------------------------------------------------------


def resume_or_start(state: RunState, dirs: RunDirs, architecture: dict[str, object]) -> None:
    """Where the run goes on from, in this order (docs/recovery.md):

    - --resume false: the old run's folders are moved aside, then the run starts (from the weights
      of --resume_from if given);
    - the run's own latest.pt, when it has one: it wins over --resume_from, which only starts a run
      (so the same command continues after a stop);
    - --resume_from;
    - else a new run: folders that hold another run's files are moved aside first.
    """
    cfg, main = state.cfg, state.world.is_main
    if not cfg.resume:
        if main:
            _say_moved(move_aside(dirs.checkpoints, dirs.results), "--resume false")
    elif dirs.latest.exists():
        if cfg.resume_from and main:
            print(
                f"{dirs.latest} exists: the run continues from it (--resume_from {cfg.resume_from} "
                f"only starts a run; --resume false starts over from it)"
            )
        _continue_from(state, dirs.latest, load_latest(dirs.latest, state.device), architecture)
        return
    elif not cfg.resume_from and main:
        _say_moved(move_aside(dirs.checkpoints, dirs.results), "a new run")
    if cfg.resume_from:
        path = Path(cfg.resume_from)
        _continue_from(state, path, load_checkpoint(path, state.device), architecture)


def _continue_from(state: RunState, path: Path, checkpoint: dict, architecture: dict[str, object]) -> None:
    restore(state, checkpoint, path, architecture)
    if state.world.is_main and state.epoch < state.cfg.epochs:
        print(f"resuming {path}: epoch {state.epoch + 1}, iteration {state.progress.iteration}")


def _say_moved(moved: list[Path], why: str) -> None:
    for folder in moved:
        old = folder.with_name(folder.name.rsplit(".old-", 1)[0])
        print(f"{why}: the previous run's files in {old} are now in {folder}")


def fit_epoch_to_loader(state: RunState, n_batches: int) -> None:
    """A checkpoint saved within an epoch that is now cut into another number of iterations (the
    data or the batch size changed) cannot skip the iterations it had done: that epoch starts
    again from its first iteration, as the line says."""
    p = state.progress
    # Saved with its epoch's length: compare it; an older checkpoint: only an impossible iteration tells.
    misfit = p.batches != n_batches if p.batches else p.iteration > n_batches
    if p.iteration and misfit:
        if state.world.is_main:
            print(
                f"latest.pt was saved at iteration {p.iteration} of an epoch of {p.batches or '?'}; "
                f"with this data and batch size an epoch has {n_batches}: epoch {state.epoch + 1} "
                f"starts again from its first iteration"
            )
        state.restart_epoch()
