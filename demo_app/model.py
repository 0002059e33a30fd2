"""What the demo's page knows of a trained generator: plain data and numpy images, no project types
(demo.py builds it from a checkpoint)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class Model:
    """A trained generator as the app sees it: plain data and numpy images, no project types."""

    config: dict[str, Any]  # the run's resolved config (dataset, data_root, direction, eval_mode, seed, ...)
    epoch: int  # epochs it was trained for
    translate: Callable[
        [np.ndarray, int, bool], np.ndarray
    ]  # (H, W, C) uint8, seed, resize -> (H, W, 3|1) uint8
    read: Callable[
        [Path], np.ndarray
    ]  # an input image file, decoded as predict.py decodes it -> (H, W, 3|1) uint8
