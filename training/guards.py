"""Numbers that cannot be right stop the run: a loss that is not a number or far beyond anything the
recipe reaches, a network whose weights or BatchNorm statistics are no longer finite, a validation
metric that is NaN. Each stops with one line naming where, before the bad state is saved, so
latest.pt keeps the last good one (docs/recovery.md)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from training.state import LOSS_NAMES

# The recipe's losses stay far below this (BCE of a patch logit is ~0.7 at chance and a few units
# when D is sure; L1 of images in [-1, 1] is at most 2): beyond it, training has diverged.
LOSS_LIMIT = 1e4


class TrainingError(RuntimeError):
    """Training cannot go on (a number became impossible); the message says where."""


def check_losses(names: Iterable[str], sums: torch.Tensor, count: int, where: str) -> list[float]:
    """Stop on the first loss whose mean over `count` iterations is NaN, infinite or beyond LOSS_LIMIT
    (one bad step poisons the sum); else return the sums, read back to the host once."""
    totals = sums.tolist()
    for name, total in zip(names, totals):
        if not math.isfinite(total) or abs(total) > LOSS_LIMIT * max(count, 1):
            value = total / max(count, 1) if math.isfinite(total) else total
            raise TrainingError(
                f"loss {name} became {value:.4g} {where} (training diverged: try a smaller --lr); "
                f"stopped before saving it"
            )
    return totals


def loss_means(sums: torch.Tensor, count: int, where: str) -> dict[str, float]:
    """The mean of each of the four losses over `count` iterations, by name, once check_losses has
    found them sound (`sums`: their (4,) sums, on the device)."""
    totals = check_losses(LOSS_NAMES, sums, count, where)
    return {name: total / count for name, total in zip(LOSS_NAMES, totals)}


def check_networks(networks: dict[str, nn.Module], where: str) -> None:
    """Stop when a weight or a BatchNorm running statistic is no longer finite."""
    for net_name, net in networks.items():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TrainingError(
                    f"{net_name} {name} is no longer finite {where}; stopped before saving it"
                )


def check_metrics(row: dict[str, float], epoch: int) -> None:
    """Stop when validation gives a metric that is not a number (the generator's outputs are not)."""
    for name, value in row.items():
        if name.startswith("val_") and not math.isfinite(value):
            raise TrainingError(
                f"validation {name} is {value} after epoch {epoch}: the generator no longer gives "
                f"numbers; stopped before saving the epoch"
            )
