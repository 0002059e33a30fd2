"""What a run is while it trains: its state (RunState), where its current epoch stands
(Progress), what it has recorded (History) and where its files go (RunDirs)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.distributed import World
from utils import autocast

if TYPE_CHECKING:
    from config import Config
    from speed import Acceleration

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")  # the four losses of an iteration, in this order


@dataclasses.dataclass
class Progress:
    """Where the current epoch stands: iterations done and loss sums, kept on the device."""

    total: torch.Tensor  # (4,) sums of G_GAN, G_L1, D_real, D_fake over the epoch's iterations
    window: torch.Tensor  # (4,) the same since the last log point
    iteration: int = 0
    in_window: int = 0
    batches: int = 0  # iterations in this epoch, as the loader cut it (0: not known yet)

    @classmethod
    def start(cls, device: torch.device) -> Progress:
        return cls(torch.zeros(len(LOSS_NAMES), device=device), torch.zeros(len(LOSS_NAMES), device=device))


@dataclasses.dataclass
class History:
    """What a run has recorded: one row per epoch (loss means, lr, seconds, validation metrics:
    history.csv) and the loss points logged within epochs (the loss plot). A checkpoint stores
    it as the plain dict of ``to_dict``."""

    epochs: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # "epoch" (fractional, e.g. 3.25) and each of LOSS_NAMES: one entry per logged point
    steps: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {"epoch": [], **{name: [] for name in LOSS_NAMES}}
    )

    # settings changed when the run was continued: {"epoch": first epoch trained with it, "field",
    # "from", "to"}; checkpoint.ON_RESUME says which fields are recorded, which refused
    changes: list[dict] = dataclasses.field(default_factory=list)
    # the split folder validation scores, fixed when the run starts ("val", "test" or "train";
    # "" in files from before it was recorded): the val_* columns measure that one split
    val_split: str = ""

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "steps": self.steps,
            "changes": self.changes,
            "val_split": self.val_split,
        }

    @classmethod
    def from_dict(cls, saved: dict) -> History:
        epochs = [dict(row) for row in saved["epochs"]]
        steps = {k: list(v) for k, v in saved["steps"].items()}
        changes = [dict(c) for c in saved.get("changes", [])]
        return cls(epochs, steps, changes, saved.get("val_split", ""))

    @property
    def loss_names(self) -> tuple[str, ...]:
        return tuple(name for name in self.steps if name != "epoch")

    def add_point(self, at: float, means: dict[str, float]) -> None:
        self.steps["epoch"].append(at)
        for name, value in means.items():
            self.steps[name].append(value)

    def drop_points_after(self, epoch: float) -> None:
        """Forget the points logged after `epoch` (an epoch that starts again)."""
        keep = [i for i, at in enumerate(self.steps["epoch"]) if at <= epoch]
        self.steps = {key: [values[i] for i in keep] for key, values in self.steps.items()}

    def is_best(self, row: dict[str, float]) -> bool:
        """Whether `row` has the lowest validation L1 so far (best.pt is its snapshot)."""
        scores = [r["val_L1"] for r in self.epochs if "val_L1" in r]
        return "val_L1" in row and row["val_L1"] == min(scores)


@dataclasses.dataclass(frozen=True)
class RunDirs:
    """A run's two folders: results/<name>/ (what a person looks at) and checkpoints/<name>/."""

    results: Path
    checkpoints: Path

    @classmethod
    def of(cls, cfg: Config) -> RunDirs:
        return cls(Path(cfg.results_dir) / cfg.name, Path(cfg.checkpoint_dir) / cfg.name)

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"


@dataclasses.dataclass(kw_only=True)
class RunState:
    """Everything a run changes as it trains: what a full checkpoint saves and restores.

    G and D are the bare networks (for generating and checkpoints); G_train and D_train are what
    the training step calls: the same networks, or their DDP wrappers under torchrun.
    """

    cfg: Config
    world: World
    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 = no autocast
    G: nn.Module
    D: nn.Module
    G_train: nn.Module
    D_train: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    sched_G: torch.optim.lr_scheduler.LRScheduler
    sched_D: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator_kwargs: dict
    history: History
    progress: Progress
    epoch: int = 0  # epochs completed
    stop: bool = False  # a signal asked to stop after the current iteration
    rng_ranks: list | None = None  # every process's RNG state, gathered for the next checkpoint
    acceleration: Acceleration | None = None  # what speed.accelerate applied
    graphed_step: Any = (
        None  # with --cuda_graphs: the training step as a replayed CUDA graph (speed/cuda_graphs.py)
    )

    def next_epoch(self) -> None:
        """The current epoch is done: count it, and start the next one's progress."""
        self.epoch += 1
        self.progress = Progress.start(self.device)

    def restart_epoch(self) -> None:
        """The current epoch starts again from its first iteration (a checkpoint saved within it
        whose iterations no longer line up); its logged points are forgotten."""
        self.progress = Progress.start(self.device)
        self.history.drop_points_after(self.epoch)

    @property
    def amp(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)
