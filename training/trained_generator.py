"""A trained generator as predict.py and demo.py use it: rebuilt from a checkpoint (this project's
or the authors' latest_net_G.pth) with the run settings generation needs, and the precision it
runs in."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import torch

from config import DATASETS, Config
from generator import UNetGenerator
from speed import accelerate
from training.checkpoint import CheckpointError, load_generator
from training.settings import name_problem
from utils import autocast, resolve_precision

# The run's fields generation uses; a checkpoint older than a field gets config.py's default.
RUN_FIELDS = (
    "name", "dataset", "data_root", "data_layout", "direction", "load_size", "image_size",
    "preprocess", "input_nc", "output_nc", "eval_mode", "seed",
)  # fmt: skip


def load_run(path: Path, device: torch.device) -> tuple[UNetGenerator, SimpleNamespace, int]:
    """The generator of a checkpoint, the run settings predict.py uses, and its epochs trained.

    The run name, which becomes a path, is checked as train.py checks it, so that a crafted
    checkpoint cannot make the default output folder point elsewhere.
    """
    G, checkpoint = load_generator(path, device)
    saved = checkpoint.get("config", {})
    dataset = saved.get("dataset")
    known = isinstance(dataset, str) and dataset in DATASETS  # a crafted file may hold anything
    defaults = dataclasses.asdict(Config(dataset=dataset if known else Config.dataset))
    settings = SimpleNamespace(**{key: saved.get(key, defaults[key]) for key in RUN_FIELDS})
    problem = name_problem(settings.name) if isinstance(settings.name, str) else "must be a string"
    if problem:
        raise CheckpointError(
            f"{path}: its run name {settings.name!r} {problem or 'is not usable'}; give --output"
        )
    if checkpoint.get("official"):
        kwargs = checkpoint["generator_kwargs"]
        print(
            f"{path}: a generator of the authors' pytorch-CycleGAN-and-pix2pix (unet_{settings.image_size}, "
            f"{kwargs['norm']} norm), run as their test.py runs it by default: eval_mode false, dropout "
            f"{kwargs['dropout']}; direction {settings.direction} unless --direction says otherwise"
        )
    return G, settings, int(checkpoint.get("epoch", 0))


def inference_precision(G: UNetGenerator, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to the automatic precision, with G made fast for it (speed.accelerate: on a CPU
    with native bf16, bf16 copies of its weights made once instead of cast at every call)."""
    dtype = resolve_precision("auto", device)
    accelerate([(G, None)], device, dtype)
    return autocast(device, dtype)
