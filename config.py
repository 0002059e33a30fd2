"""Hyperparameters of a Pix2Pix run, as one typed dataclass.

The defaults are the official facades recipe (Isola et al. 2017, and the authors' PyTorch code):
labels -> photo, 286 px resize + 256 px random crop + flip, batch 1, U-Net 256, 70x70 PatchGAN,
Adam 2e-4 (0.5, 0.999), lambda_l1 100, 100 epochs at constant lr + 100 epochs of linear decay.

Every field can be overridden on the command line as ``--field value``; see ``parse_args``.
Only the scripts (train.py, predict.py, benchmark.py) read this module: the model and data
modules take plain arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from typing import Sequence

# The official archive of the facades set; the other sets of the family share the URL pattern.
FACADES_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz"


@dataclass
class Config:
    # --- data ---
    data_root: str = "data/facades"  # folder holding train/ val/ test/; downloaded if it is missing
    download_url: str = FACADES_URL  # where a missing facades set is fetched from
    download_sha256: str = ""  # if set, the archive's SHA-256 must match
    direction: str = "BtoA"  # facades files are photo|labels, so BtoA = labels -> photo
    load_size: int = 286  # both halves are resized to this square size ...
    image_size: int = 256  # ... then randomly cropped to this size (evaluation: resized to it)
    flip: bool = True  # random horizontal flip, the same for both halves of a pair
    max_images: int = 0  # use only the first N images of each split (0 = all); for quick tries

    # --- networks ---
    ngf: int = 64  # generator filters in the first layer
    ndf: int = 64  # discriminator filters in the first layer
    n_layers_D: int = 3  # PatchGAN depth: 3 gives the 70x70 receptive field
    norm: str = "batch"  # "batch" (paper) or "instance"
    dropout: float = 0.5  # dropout in the inner decoder blocks of the U-Net (the paper's noise z)
    init_gain: float = 0.02  # weights start as N(0, init_gain)

    # --- optimisation ---
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_l1: float = 100.0  # weight of the L1 term: loss_G = GAN + lambda_l1 * L1
    epochs: int = 200  # epochs in all ...
    lr_decay_epochs: int = 100  # ... of which the last ones decay the lr linearly towards 0

    # --- evaluation ---
    eval_mode: bool = False  # False (paper): batch statistics and dropout also when generating
    num_samples: int = 4  # validation images shown in each epoch's sample grid

    # --- run ---
    name: str = "facades"  # run name: outputs go to checkpoints/<name>/ and results/<name>/
    checkpoint_dir: str = "checkpoints"
    results_dir: str = "results"
    save_every: int = 5  # also keep checkpoints/<name>/epoch_NNN.pt every N epochs (0 = never)
    log_every: int = 10  # progress bar and per-iteration loss curve every N iterations
    resume: bool = True  # continue checkpoints/<name>/latest.pt if it exists; false starts over
    resume_from: str = ""  # continue from this checkpoint file instead
    checkpoint_every: int = 0  # also write latest.pt every N iterations, mid-epoch (0 = per epoch only)
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if present, else cpu), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto", "fp32", "bf16" or "fp16" (fp16 on CUDA only)
    threads: int = 0  # CPU threads for torch (0 = one per physical core)

    # --- distributed (only under torchrun; see README "Training on several GPUs or machines") ---
    sync_bn: bool = True  # with several processes, BatchNorm uses the statistics of the global batch


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _convert(field: dataclasses.Field, text: str):
    """Turn the command-line text for `field` into a value of the field's declared type."""
    kind = field.type  # a string such as "int", because of `from __future__ import annotations`
    try:
        if kind == "bool":
            return _parse_bool(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {text!r}")
            return value
        return text
    except ValueError as err:
        message = str(err) if kind == "bool" or "finite" in str(err) else f"expected {kind}, got {text!r}"
        raise ConfigError(f"--{field.name}: {message}") from None


def is_valid_unet_size(image_size: int) -> bool:
    """The U-Net halves the image at least 5 times, so the size must be a multiple of 32."""
    return image_size >= 32 and image_size % 32 == 0


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first field whose value cannot work."""
    checks = [
        ("direction", cfg.direction in ("AtoB", "BtoA"), "must be AtoB or BtoA"),
        ("image_size", is_valid_unet_size(cfg.image_size),
         "must be a multiple of 32 (the U-Net halves it at least 5 times)"),
        ("load_size", cfg.load_size >= cfg.image_size, "must be >= image_size (it is cropped to it)"),
        ("max_images", cfg.max_images >= 0, "must be >= 0"),
        ("ngf", cfg.ngf > 0, "must be > 0"),
        ("ndf", cfg.ndf > 0, "must be > 0"),
        ("n_layers_D", 1 <= cfg.n_layers_D <= int(math.log2(cfg.image_size)) - 2,
         "must be between 1 and log2(image_size) - 2"),
        ("norm", cfg.norm in ("batch", "instance"), "must be batch or instance"),
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
        ("name", bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
         "must be a plain folder name"),
        ("save_every", cfg.save_every >= 0, "must be >= 0"),
        ("log_every", cfg.log_every >= 1, "must be >= 1"),
        ("checkpoint_every", cfg.checkpoint_every >= 0, "must be >= 0"),
        ("device", cfg.device in ("auto", "cpu") or cfg.device.startswith("cuda"),
         "must be auto, cpu or cuda[:N]"),
        ("precision", cfg.precision in ("auto", "fp32", "bf16", "fp16"), "must be auto, fp32, bf16 or fp16"),
        ("threads", cfg.threads >= 0, "must be >= 0"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise ConfigError(f"--{name}: {rule}, got {getattr(cfg, name)!r}")


def parse_args(argv: Sequence[str] | None = None, description: str | None = None) -> Config:
    """Build a Config from defaults overridden by ``--field value`` pairs, then validate it.

    Raises ConfigError (one line, naming the field) for an unknown field, a value that is not of
    the field's type, or a value that cannot work. Scripts turn it into exit status 2.
    """
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False, exit_on_error=False)
    defaults = Config()
    for field in fields(Config):
        parser.add_argument(f"--{field.name}", default=None, metavar=field.type.upper(),
                            help=f"default: {getattr(defaults, field.name)!r}")
    # argparse would print its usage and exit on a bad option; we want our own one-line error.
    try:
        known, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ConfigError(f"{err.argument_name}: {err.message}") from None
    if unknown:
        option = next((u for u in unknown if u.startswith("-")), unknown[0])
        raise ConfigError(f"{option}: unknown setting (see --help for the fields of config.py)")
    overrides = {f.name: _convert(f, getattr(known, f.name)) for f in fields(Config)
                 if getattr(known, f.name) is not None}
    cfg = dataclasses.replace(defaults, **overrides)
    validate(cfg)
    return cfg


def parse_or_exit(argv: Sequence[str] | None = None, description: str | None = None) -> Config:
    """parse_args for scripts: a bad setting prints one line and exits with status 2."""
    try:
        return parse_args(argv, description)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    """Print the resolved config: ``python config.py --lr 1e-4``."""
    cfg = parse_or_exit(description=__doc__)
    for field in fields(cfg):
        print(f"{field.name:16s} {getattr(cfg, field.name)!r}")


if __name__ == "__main__":
    main()
