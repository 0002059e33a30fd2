"""Checking a Config's values: each field by itself and the combinations that cannot work, before
anything is read or written. ``validate`` raises ConfigError, one line naming the field, which
the scripts turn into exit status 2 (training/cli.py: parse_or_exit).

What the machine can do (free disk, the data on disk, a device) is training/preflight.py's.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import fields

from config import Config, is_valid_unet_size

MAX_NAME_BYTES = 200  # a run name is a folder name; room is left for the files' own names
MAX_INT = 2**31 - 1  # integers go to C code (threads, sizes, counts) that takes a 32-bit int
# The largest image side a run may ask for (--image_size, --load_size): every image is decoded and
# resized to it in memory, and the networks' activations grow with its square (at 4096 px a
# training step of the default networks needs tens of GB). The pix2pix sets are 256 to 1024 px.
MAX_IMAGE_SIDE = 4096


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field."""


def _data_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """The rules of the dataset, layout, size and channel fields; impossible combinations included."""
    depth_ok = cfg.num_downs == 0 or cfg.num_downs >= 5
    return [
        ("input_nc", cfg.input_nc in (1, 3), "must be 1 (grayscale) or 3 (RGB)"),
        ("output_nc", cfg.output_nc in (1, 3), "must be 1 (grayscale) or 3 (RGB)"),
        ("num_downs", depth_ok, "must be 0 (derived from image_size) or >= 5 (the U-Net's shortest form)"),
        (
            "num_downs",
            not depth_ok or cfg.num_downs == 0 or cfg.image_size % 2**cfg.num_downs == 0,
            f"the U-Net halves the image num_downs times, so image_size ({cfg.image_size}) must be a "
            f"multiple of 2^num_downs = {2**cfg.num_downs if depth_ok else 0}",
        ),
    ]


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run's folder name, or None when it can (train.py and predict.py both
    check the names they put in paths, also those read from a checkpoint)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        return "must be a plain folder name (no /, \\, . or ..)"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes (file systems allow 255 per name)"
    return None


def _range_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """Fixed sets of values, and integers that the libraries can take (a C int)."""
    checks = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("choices") and not (f.name == "direction" and value == ""):
            checks.append(
                (
                    f.name,
                    value in f.metadata["choices"],
                    f"must be one of {', '.join(c for c in f.metadata['choices'] if c)}",
                )
            )
        if f.type == "int":
            checks.append((f.name, abs(value) <= MAX_INT, f"must be at most {MAX_INT}"))
    return checks


def _size_bounds(cfg: Config) -> list[tuple[str, bool, str]]:
    """Image sides that fit in memory: checked before anything is read, since resizing a pair to
    60000 px would take some 20 GB before the first step fails."""
    rule = f"must be at most {MAX_IMAGE_SIDE} (pixels a side: images are resized to it in memory)"
    return [(name, getattr(cfg, name) <= MAX_IMAGE_SIDE, rule) for name in ("image_size", "load_size")]


def max_threads() -> int:
    """The most --threads a run may ask for: 4 per CPU this process may run on (its affinity);
    more only slows it down, and OpenMP runs out of memory for the stacks of 100000."""
    return 4 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first field whose value cannot work."""
    resizes = cfg.preprocess in ("resize_and_crop", "scale_width")  # only these use load_size
    checks = (
        _range_checks(cfg)
        + _data_checks(cfg)
        + [
            ("data_root", bool(cfg.data_root), "must name a folder"),
            ("direction", cfg.direction in ("AtoB", "BtoA"), "must be AtoB or BtoA"),
            ("seed", 0 <= cfg.seed < 2**32, "must be in [0, 2^32) (numpy's seed range)"),
            (
                "image_size",
                is_valid_unet_size(cfg.image_size),
                "must be a multiple of 32 (the U-Net halves it at least 5 times)",
            ),
            *_size_bounds(cfg),
            (
                "load_size",
                not resizes or cfg.load_size >= cfg.image_size,
                "must be >= image_size (it is cropped to it)",
            ),
            ("max_images", cfg.max_images >= 0, "must be >= 0"),
            ("ngf", cfg.ngf > 0, "must be > 0"),
            ("ndf", cfg.ndf > 0, "must be > 0"),
            (
                "n_layers_D",
                1 <= cfg.n_layers_D <= int(math.log2(max(cfg.image_size, 1))) - 2,
                "must be between 1 and log2(image_size) - 2",
            ),
            ("dropout", 0.0 <= cfg.dropout < 1.0, "must be in [0, 1)"),
            ("init_gain", cfg.init_gain > 0, "must be > 0"),
            ("batch_size", cfg.batch_size >= 1, "must be >= 1"),
            ("lr", cfg.lr > 0, "must be > 0"),
            ("beta1", 0.0 <= cfg.beta1 < 1.0, "must be in [0, 1)"),
            ("beta2", 0.0 <= cfg.beta2 < 1.0, "must be in [0, 1)"),
            ("lambda_l1", cfg.lambda_l1 >= 0, "must be >= 0"),
            ("epochs", cfg.epochs >= 1, "must be >= 1"),
            ("lr_decay_epochs", cfg.lr_decay_epochs >= 0, "must be >= 0"),
            ("num_samples", cfg.num_samples >= 1, "must be >= 1"),
            ("val_every", cfg.val_every >= 0, "must be >= 0"),
            ("val_images", cfg.val_images >= 0, "must be >= 0 (0 = all)"),
            (
                "val_images",
                cfg.val_images == 0 or cfg.val_images >= cfg.num_samples,
                "must be 0 (all) or at least num_samples: the sample grid shows scored pairs",
            ),
            ("name", name_problem(cfg.name) is None, name_problem(cfg.name) or ""),
            ("save_every", cfg.save_every >= 0, "must be >= 0"),
            ("log_every", cfg.log_every >= 1, "must be >= 1"),
            ("checkpoint_every", cfg.checkpoint_every >= 0, "must be >= 0"),
            ("latest_every_s", cfg.latest_every_s >= 0, "must be >= 0"),
            (
                "device",
                re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", cfg.device) is not None,
                "must be auto, cpu, mps, cuda or cuda:N",
            ),
            ("threads", cfg.threads >= 0, "must be >= 0"),
            ("threads", cfg.threads <= max_threads(), f"must be at most {max_threads()} (4 per usable CPU)"),
            (
                "download_sha256",
                re.fullmatch("[0-9a-fA-F]{64}|", cfg.download_sha256),
                "must be 64 hex digits",
            ),
        ]
    )
    for name, ok, rule in checks:
        if not ok:
            raise ConfigError(f"--{name}: {rule}, got {getattr(cfg, name)!r}")
