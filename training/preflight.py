"""What a training run points at, checked before any work: the device, the data folder, the checkpoint
to resume from, the folders and files the run writes, and the optional packages it asks for.

training/settings.py's validate checks every setting by itself, without looking at the machine; this
module looks at the machine, so that a run that could not finish its first epoch (a checkpoint
folder that is a file, a GPU that is not there) stops before it downloads or reads its data and
builds its networks, with one line naming the setting and the path. What only the data can tell (a
broken file, an image too small for the discriminator or for SSIM) is checked where the data is
read, in training/loader.py's build_data, still before the first step. training/session.py calls
check_run first.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import torch

from config import Config
from evaluation.metrics import MissingPackageError
from files.images import DatasetError
from training import distributed as ddp
from training.checkpoint import CheckpointError
from training.settings import ConfigError
from utils import OutputError, resolve_device, resolve_precision

# What a run writes in checkpoints/<name>/ and results/<name>/ (training/checkpoint.py,
# reporting/reporter.py, reporting/figures.py): where such a name exists it must be a file, and
# these subfolders must be folders.
# A test runs a short training and checks that every file it wrote matches one of these.
RUN_FILES = {
    "checkpoints": ("*.pt",),  # latest.pt, best.pt, epoch_NNN.pt
    "results": ("*.json", "*.log", "*.csv", "*.png", "*.html", "samples/*.png"),
}
RUN_FOLDERS = {"checkpoints": (), "results": ("samples", "tensorboard")}
TENSORBOARD_HINT = "pip install -r requirements-tensorboard.txt"


def run_folders(cfg: Config) -> dict[str, Path]:
    """The run's own folders: checkpoints/<name> and results/<name> (as train.train names them)."""
    return {"checkpoints": Path(cfg.checkpoint_dir) / cfg.name, "results": Path(cfg.results_dir) / cfg.name}


def check_run(cfg: Config, world: ddp.World, device: torch.device | None) -> None:
    """Raise the one-line error of the first setting or path the run cannot use.

    `device` is None for a single process (the setting is resolved here to check it). Under
    torchrun every process checks what it reads, rank 0 also what it writes, and all stop if one
    of them finds a problem.
    """
    ddp.run_and_agree(
        world,
        device,
        True,
        lambda: _check(cfg, world.is_main, device),
        "another process found a setting or file it cannot use (its error line says why)",
    )


def _check(cfg: Config, writes: bool, device: torch.device | None) -> None:
    check_device(cfg, device)
    check_inputs(cfg)
    if writes:
        check_outputs(cfg)
        check_own_folders(cfg)


def check_tensorboard(setting: str) -> bool:
    """Whether the run logs to TensorBoard: --tensorboard "false" -> no, "auto" -> when the
    tensorboard package is installed, "true" -> yes, and MissingPackageError when it cannot be."""
    if setting == "false":
        return False
    if setting == "auto":
        return importlib.util.find_spec("tensorboard") is not None
    try:  # asked for explicitly: make sure it really works, before any work
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise MissingPackageError(
            f"--tensorboard: true needs the tensorboard package ({err}): {TENSORBOARD_HINT}"
        ) from None
    return True


def check_device(cfg: Config, device: torch.device | None) -> None:
    """--device names a device of this machine, and --precision runs on it."""
    try:
        resolve_precision(cfg.precision, device or resolve_device(cfg.device))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_inputs(cfg: Config) -> None:
    """data_root is a folder where it exists (a missing one is downloaded or named by download.py);
    resume_from is a file."""
    root = Path(cfg.data_root)
    kind = path_kind(root)
    if kind not in (None, "a folder"):
        raise DatasetError(f"--data_root {root}: {kind}, not a folder (it must hold train/ and val/)")
    if cfg.resume_from:
        path = Path(cfg.resume_from)
        kind = path_kind(path)
        if kind != "a file":
            what = "no such checkpoint file" if kind is None else f"{kind}, not a checkpoint file"
            raise CheckpointError(f"--resume_from {path}: {what}")


def check_outputs(cfg: Config) -> None:
    """The run's folders are folders it can write in (or can make), and nothing in them is a
    folder where the run writes a file, or a file where it makes a folder."""
    settings = {"checkpoints": "--checkpoint_dir", "results": "--results_dir"}
    for kind, folder in run_folders(cfg).items():
        where = f"({settings[kind]} {getattr(cfg, settings[kind][2:])}, --name {cfg.name})"
        check_folder(folder, where)
        for name in RUN_FOLDERS[kind]:
            found = path_kind(folder / name)
            if found not in (None, "a folder") and not (name == "tensorboard" and cfg.tensorboard == "false"):
                raise OutputError(f"{folder / name}: {found}, not a folder, but the run writes in it {where}")
        for pattern in RUN_FILES[kind]:
            for path in sorted(folder.glob(pattern)):
                found = path_kind(path)
                if found != "a file":
                    raise OutputError(f"{path}: {found}, not a file, but the run writes this file {where}")


# The split folders a run reads in its data root (training/loader.py's build_data).
DATA_SPLITS = ("train", "val", "test")
PROJECT = Path(__file__).resolve().parents[1]  # the code the run imports


def check_own_folders(cfg: Config) -> None:
    """A run owns exactly its two folders: neither of them is, or holds, something the run reads
    (the data root and its splits, the project's code), since a new start moves them aside with
    everything in them; and neither holds the other (they may be one folder). Paths are compared
    where they lead (links followed, `..` applied) and where they are named (a link itself).

    --resume_from may lie in the run's own folders: it is read before they are moved aside, and
    moving them keeps it."""
    folders = run_folders(cfg)
    root = Path(cfg.data_root)
    inputs = [(f"--data_root {root}", root)]
    inputs += [(f"--data_root's {split}/ ({root / split})", root / split) for split in DATA_SPLITS]
    inputs.append((f"the project's code ({PROJECT})", PROJECT))
    for kind, folder in folders.items():
        for what, path in inputs:
            relation = _relation(folder, path)
            if relation:
                raise OutputError(
                    f"{_named(cfg, kind)} {relation} {what}: a run owns its folders (a new start moves "
                    f"them aside, with everything in them); give another {OUTPUT_SETTINGS[kind]} or --name"
                )
    for outer, inner in (("checkpoints", "results"), ("results", "checkpoints")):
        if _relation(folders[outer], folders[inner]) == "holds":
            raise OutputError(
                f"{_named(cfg, outer)} holds the other folder of the run, {_named(cfg, inner)}: a new "
                f"start moves each aside; give --checkpoint_dir and --results_dir that do not nest"
            )


OUTPUT_SETTINGS = {"checkpoints": "--checkpoint_dir", "results": "--results_dir"}


def _named(cfg: Config, kind: str) -> str:
    """A run folder with the settings that name it: "ck/run (--checkpoint_dir ck, --name run)"."""
    setting = OUTPUT_SETTINGS[kind]
    return f"{run_folders(cfg)[kind]} ({setting} {getattr(cfg, setting[2:])}, --name {cfg.name})"


def _relation(folder: Path, path: Path) -> str | None:
    """ "is" when `folder` is `path`, "holds" when `path` lies in it, else None: each compared
    where it leads and where it is named."""
    folder_places = {folder.resolve(), folder.parent.resolve() / folder.name}
    path_places = {path.resolve(), path.parent.resolve() / path.name}
    if folder_places & path_places:
        return "is"
    if any(p.is_relative_to(f) for p in path_places for f in folder_places):
        return "holds"
    return None


def check_folder(folder: Path, where: str) -> None:
    """`folder` is a folder this process can write in, or one it can make: each part of its path
    that exists is a folder, and the deepest of them is writable."""
    for part in (folder, *folder.parents):
        kind = path_kind(part)
        if kind is None:
            continue
        if kind != "a folder":
            raise OutputError(f"{part}: {kind}, not a folder, but the run writes in it {where}")
        if not os.access(part, os.W_OK | os.X_OK):
            raise OutputError(f"{part}: no permission to write in this folder {where}")
        return


def path_kind(path: Path) -> str | None:
    """What is at `path`, in words ("a folder", "a file", "a broken link", ...), or None when
    nothing is (also where a part of the path above it is a file)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "a broken link" if path.is_symlink() else None
    except OSError as err:  # no permission to look, a link loop
        return f"unreachable ({err.strerror})"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a file" if stat.S_ISREG(mode) else "a special file (a device, pipe or socket)"
