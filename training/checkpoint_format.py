"""The checkpoint file: what it holds, its format number and the one upgrade of older files,
writing it, reading it back checked, and resealing a file edited by hand.

A checkpoint is one plain dict of tensors and plain data, loadable with
``torch.load(path, weights_only=True)``: open it, change it, save it (docs/recovery.md, "Editing
a checkpoint"). Two kinds, both of format FORMAT:

- ``latest.pt``, kind "full": everything needed to continue the run exactly.
    format                      FORMAT; a file without the key is format 1
    kind                        "full" or "snapshot"
    generator, discriminator    state_dicts of the bare networks (no DDP "module." prefix)
    generator_kwargs            UNetGenerator(**generator_kwargs) rebuilds the generator
    config                      the run's config fields, a plain dict
    epoch                       epochs completed
    history                     {"epochs": [one row per epoch], "steps": {"epoch": [...], <loss>: [...]}}
    opt_G, opt_D, sched_G, sched_D, scaler   optimizer, lr schedule and fp16 loss-scale states
    progress                    {"iteration", "total", "window", "in_window", "batches"} within the next epoch
    rng, world_size, rng_ranks  every RNG state (rng_ranks: one per process under torchrun, else [])
- ``best.pt`` and ``epoch_NNN.pt``, kind "snapshot": the first eight keys above plus ``metrics``
  (the epoch's row of the history): what a user needs to use, compare or fine-tune the networks,
  about a third of latest.pt (Adam keeps two moments per weight).

Format 1 is every file written before the format number; such files may lack keys added over
time. ``upgrade`` brings a file of any known format to FORMAT, the only place that knows the
older formats; a file of a newer format than FORMAT is refused. Every file carries a checksum of
its contents (integrity.py), verified whenever it is loaded: a file changed after it was written
is refused until ``python tools/reseal_checkpoint.py FILE`` (``reseal``) accepts the change.
What the values may be (the config's pass the command line's checks): checkpoint_values.py.
The authors' latest_net_G.pth files are another input format, mapped by official_weights.py.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch
from torch import nn

from files.writing import atomic_write
from generator import UNetGenerator
from training import official_weights
from training.checkpoint_values import check_values, generator_kwargs_of_weights
from training.cli import upgraded_fields
from training.integrity import first_non_finite, seal, unseal
from utils import first_line, map_tensors

FORMAT = 2
SNAPSHOT_KEYS = ("format", "kind", "generator", "generator_kwargs", "config", "epoch", "history")
FULL_KEYS = SNAPSHOT_KEYS + (
    "discriminator", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "progress", "rng",
    "world_size", "rng_ranks",
)  # fmt: skip
# The type of each key that holds plain data, checked whenever it is there.
KEY_TYPES = {
    "kind": str, "config": dict, "epoch": int, "history": dict, "generator_kwargs": dict,
    "progress": dict, "rng": dict, "world_size": int, "rng_ranks": list,
}  # fmt: skip
RESEAL = "python tools/reseal_checkpoint.py"
NOT_PIX2PIX = "not a pix2pix checkpoint (neither this project's nor the authors' U-Net)"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, not a checkpoint, or does not fit; the message names it."""


# ---------------------------------------------------------------------------------------------
# The format and its one upgrade
# ---------------------------------------------------------------------------------------------


def upgrade(checkpoint: dict) -> dict:
    """A checkpoint of any known format as one of FORMAT (a new dict; tensors shared, nothing of
    the given one changed). Raises ValueError, without the path, for a newer format or a dict
    that is not a checkpoint."""
    number = checkpoint.get("format", 1)  # the one key whose absence means something: format 1
    if type(number) is not int or number < 1:
        raise ValueError(f"not a pix2pix checkpoint (its format is {number!r}, not a format number)")
    if number > FORMAT:
        raise ValueError(
            f"a checkpoint of format {number}, newer than this code reads (formats 1 to {FORMAT}); "
            f"use the version of the project that wrote it, or a newer one"
        )
    if not isinstance(checkpoint.get("generator"), dict):
        raise ValueError(NOT_PIX2PIX)
    _check_types(checkpoint)
    if number == 1:
        checkpoint = _from_format_1(checkpoint)
    return checkpoint


def _from_format_1(old: dict) -> dict:
    """Format 1 as format 2: each key added over time gets the value the older files were made
    with. A file without a kind was a full checkpoint if it held all of these keys."""
    kept = ("generator", "discriminator", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "epoch",
            "progress", "config", "history", "rng")  # fmt: skip
    full = old.get("kind", "full") == "full" and all(key in old for key in kept)
    new = {"config": {}, "epoch": 0, "history": {}} | old
    new |= {"format": 2, "kind": "full" if full else "snapshot"}
    # The run scored the whole validation split before val_images existed (0: all).
    new["config"] = upgraded_fields({"val_images": 0, **new["config"]})
    if "generator_kwargs" not in new:
        new["generator_kwargs"] = generator_kwargs_of_weights(new["generator"], new["config"])
    if full:
        new["world_size"] = old.get("world_size", 1)
        new["progress"] = {"batches": 0, **old["progress"]}  # the epoch's length unsaved: 0, unknown
        # Every process's RNG states, with the Apple GPU's stream that older files did not have.
        states = [{"mps": None, **rng} if isinstance(rng, dict) else rng for rng in old.get("rng_ranks", [])]
        new["rng"], new["rng_ranks"] = {"mps": None, **old["rng"]}, states
    return new


def _check_types(checkpoint: dict) -> None:
    for key, kind in KEY_TYPES.items():
        if key in checkpoint and not isinstance(checkpoint[key], kind):
            raise ValueError(f"not a pix2pix checkpoint ({key} is a {type(checkpoint[key]).__name__})")


def check_contents(checkpoint: dict) -> dict:
    """The checkpoint (of FORMAT) if its structure and values are those of one: its keys, kind,
    the networks' tensors all finite, and every value a run uses (checkpoint_values.py: the
    config through the command line's checks). ValueError, without the path, names the first
    that is not."""
    required = FULL_KEYS if checkpoint.get("kind") == "full" else SNAPSHOT_KEYS
    if missing := [key for key in required if key not in checkpoint]:
        raise ValueError(f"not a checkpoint of format {FORMAT} (it has no {missing[0]})")
    _check_types(checkpoint)
    if checkpoint["kind"] not in ("full", "snapshot"):
        raise ValueError(f"not a pix2pix checkpoint (kind {checkpoint['kind']!r}, not 'full' or 'snapshot')")
    for net in ("generator", "discriminator"):
        weights = checkpoint.get(net, {})  # a snapshot of the authors' generator has no discriminator
        if not isinstance(weights, dict):
            raise ValueError(f"not a pix2pix checkpoint ({net} is a {type(weights).__name__})")
        for key, value in weights.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{net} parameter {key} is a {type(value).__name__}, not a tensor")
        if bad := first_non_finite(weights):
            raise ValueError(f"{net} tensor {bad} holds NaN or infinite values")
    check_values(checkpoint)
    return checkpoint


# ---------------------------------------------------------------------------------------------
# Writing, reading and resealing
# ---------------------------------------------------------------------------------------------


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Write a checkpoint atomically, sealed with the checksum of its contents."""
    # Every tensor in the standard (contiguous) layout, whatever layout the run computes in (the
    # CPU's bf16 runs keep weights and moments channels_last): the file does not depend on it.
    checkpoint = map_tensors(checkpoint, torch.Tensor.contiguous)
    sealed = seal(checkpoint)  # the checksum inside the file: one rename commits both
    with _without_crc32():
        atomic_write(path, lambda tmp: _save(sealed, Path(tmp)))


# What torch.save's zip writer says when the file system takes fewer bytes than it wrote: its
# positions no longer agree ("unexpected pos 2928192 vs 2928084"), whatever the cause.
_SHORT_WRITE = ("unexpected pos", "file write failed", "failed writing", "iostream error")
FULL_BELOW = 64 * 2**20  # free bytes under which a failed write is put down to a full disk


def _save(contents: dict, tmp: Path) -> None:
    """torch.save, with a write the disk did not take said as such (an OSError: atomic_write
    names the file) instead of in the zip writer's words."""
    try:
        torch.save(contents, tmp)
    except RuntimeError as err:
        if not any(words in str(err) for words in _SHORT_WRITE):
            raise
        free = shutil.disk_usage(tmp.parent).free
        if free < FULL_BELOW:
            raise OSError(
                f"the disk is full ({free // 2**20} MiB free); free some space and run again"
            ) from None
        raise OSError(
            "the write failed partway: the file system took fewer bytes than were written "
            "(a quota, a file size limit or a failing disk)"
        ) from None


def _without_crc32() -> contextlib.AbstractContextManager:
    """torch.save without the zip records' CRC-32s, which torch.load never checks: computing them
    is a large part of writing latest.pt (docs/performance.md). Older torch: a no-op."""
    try:
        from torch.utils.serialization import config

        return config.patch({"save.compute_crc32": False})
    except (ImportError, AttributeError, KeyError):
        return contextlib.nullcontext()


def _read(path: Path, map_location: str | torch.device) -> object:
    """What torch.load gives back with weights_only=True (tensors and plain data, never code)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a safe checkpoint
        raise CheckpointError(f"{path}: not a loadable checkpoint ({_load_failure(err)})") from None


def _load_failure(err: Exception) -> str:
    """Why torch.load refused a file, without its advice to load it with weights_only=False: that
    runs whatever code the file holds, and a checkpoint of this project never needs it."""
    text = str(err)
    if "Weights only load failed" in text:
        after = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
        reason = next((line.strip() for line in after.splitlines() if line.strip()), "").split(". ")[0]
        return f"it holds more than tensors and plain data: {reason.rstrip('.') or 'an object of code'}"
    return first_line(err) or type(err).__name__


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", name_snapshot: bool = True
) -> dict:
    """A checkpoint of FORMAT: loaded safely, its checksum verified (a mismatch names, with
    name_snapshot, the newest snapshot that verifies), upgraded and checked. The authors'
    latest_net_G.pth files load as snapshots (official_weights.py)."""
    path = Path(path)
    loaded = _read(path, map_location)
    try:
        if official_weights.is_official(loaded):  # mapped onto this format: nothing to upgrade
            return check_contents({**official_weights.as_project(loaded, path.stem), "format": FORMAT})
        if not isinstance(loaded, dict):
            raise ValueError(NOT_PIX2PIX)
        if unseal(loaded) is False:
            raise CheckpointError(_changed_since(path, name_snapshot))
        return check_contents(upgrade(loaded))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _changed_since(path: Path, name_snapshot: bool) -> str:
    fallback = newest_loadable_snapshot(path.parent) if name_snapshot else None
    beside = f"; the newest snapshot beside it that verifies is {fallback}" if fallback else ""
    return (
        f"{path}: its contents do not match the checksum written with it (the file changed since; "
        f"if it was edited on purpose, {RESEAL} {path} accepts it)"
        + (beside or ("; no snapshot beside it verifies" if name_snapshot else ""))
    )


def newest_loadable_snapshot(folder: Path) -> Path | None:
    """The snapshot of the latest epoch in `folder` that loads (best.pt or epoch_NNN.pt)."""
    found = []
    for path in sorted(folder.glob("epoch_*.pt")) + [folder / "best.pt"]:
        try:
            found.append((load_checkpoint(path, name_snapshot=False)["epoch"], path))
        except CheckpointError:
            continue
    return max(found)[1] if found else None


def reseal(path: str | Path) -> str:
    """Accept a checkpoint edited by hand and saved with torch.save: check it as a load does
    (format, structure, finite networks, the config's types), then write it again atomically
    with the checksum of what it holds now. Returns the line to say; raises CheckpointError
    (one line) for a file that is not a checkpoint or fails a check, leaving it as it was."""
    path = Path(path)
    if path.is_symlink():  # a write replaces the link itself: name the file it stands for
        raise CheckpointError(f"{path}: a symbolic link; reseal the file it points to, {path.resolve()}")
    loaded = _read(path, "cpu")
    if official_weights.is_official(loaded):
        raise CheckpointError(f"{path}: the authors' generator file carries no checksum; it loads as it is")
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: {NOT_PIX2PIX}")
    try:
        if unseal(loaded):  # the checksum taken out: `loaded` is the contents alone
            return f"{path}: its checksum already matches its contents; nothing to do"
        checked = check_contents(upgrade(loaded))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}; not resealed") from None
    save_checkpoint(loaded, path)  # as the user left it, in its own format
    return f"{path}: resealed at epoch {checked['epoch']}: its new checksum fits what it holds now"


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


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


def load_generator(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The generator of any checkpoint of this project, and the checkpoint (config, epoch, ...)."""
    checkpoint = load_checkpoint(path, device)
    try:
        G = UNetGenerator(**checkpoint["generator_kwargs"])
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the generator from it ({err!r})") from None
    check_state_dict(G, checkpoint["generator"], "generator", path)
    G.load_state_dict(checkpoint["generator"])
    return G.to(device), checkpoint
