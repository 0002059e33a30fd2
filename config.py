"""Hyperparameters of a Pix2Pix run, as one typed dataclass.

The defaults are the official facades recipe (Isola et al. 2017, and the authors' PyTorch code):
labels -> photo, 286 px resize + 256 px random crop + flip, batch 1, U-Net 256, 70x70 PatchGAN,
Adam 2e-4 (0.5, 0.999), lambda_l1 100, 100 epochs at constant lr + 100 epochs of linear decay.

The file reads top down: the fields' allowed values, the Config dataclass (every field with its
default and a one-line description), the datasets the project knows, and a few values derived
from a Config. Every field can be overridden on the command line as ``--field value``
(training/cli.py: parse_args), training/settings.py says which values cannot work, and
docs/config.md lists every field (``python -m training.cli --markdown``).
The model and data modules take plain arguments, not a Config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Sequence

# The allowed values of the fields that name a choice. dataset.py checks the same names where it
# takes them as arguments (config.py imports nothing of the project: dataset.py imports these).
LAYOUTS = ("aligned", "paired_folders")
PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "none")
NORMS = ("batch", "instance")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Switches whose default is "where it works": "auto" lets a plain run use TensorBoard when the
# package is there (CUDA graphs where capture works), while an explicit "true" is a request that
# is said when it cannot be met: a bool could not tell the default from a request.
SWITCH_MODES = ("auto", "true", "false")
# The sets of the pix2pix family the project knows (DATASETS below says what it knows of each).
DATASET_NAMES = ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day", "custom")


def option(default, help: str, choices: Sequence[str] | None = None):
    """A config field with its one-line description and, where the values are a fixed set, the
    allowed values: the single source of ``--help`` and of docs/config.md."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


@dataclass
class Config:
    """The hyperparameters of one run; the defaults are the paper's facades recipe."""

    # --- data ---
    data_root: str = option(
        "", 'folder holding train/ val/ test/ ("" = data/<dataset>); downloaded if missing'
    )
    download_url: str = option(
        "", 'where a missing set is fetched from ("" = the official archive of <dataset>)'
    )
    download_sha256: str = option("", "if set, the downloaded archive's SHA-256 must match")
    direction: str = option(
        "",
        'which side is the input: "" = the dataset\'s official one (facades: BtoA, labels -> photo)',
        ("", "AtoB", "BtoA"),
    )
    load_size: int = option(286, "both halves are resized to this square size (scale_width: this width) ...")
    image_size: int = option(
        256, "... then randomly cropped to this size; a multiple of 32 (evaluation: resized to it)"
    )
    flip: bool = option(True, "random horizontal flip, the same for both halves of a pair")
    max_images: int = option(0, "use only the first N images of each split (0 = all); for quick tries")

    # --- networks ---
    ngf: int = option(64, "generator filters in the first layer")
    ndf: int = option(64, "discriminator filters in the first layer")
    n_layers_D: int = option(3, "PatchGAN depth: 3 gives the 70x70 receptive field")
    norm: str = option("batch", "normalisation layers: batch (the paper) or instance", NORMS)
    dropout: float = option(0.5, "dropout in the inner decoder blocks of the U-Net (the paper's noise z)")
    init_gain: float = option(0.02, "weights start as N(0, init_gain)")

    # --- optimisation ---
    batch_size: int = option(1, "pairs per iteration (the paper: 1)")
    lr: float = option(2e-4, "Adam learning rate of both networks")
    beta1: float = option(0.5, "Adam beta1")
    beta2: float = option(0.999, "Adam beta2")
    lambda_l1: float = option(100.0, "weight of the L1 term: loss_G = GAN + lambda_l1 * L1")
    epochs: int = option(200, "epochs in all ...")
    lr_decay_epochs: int = option(100, "... of which the last ones decay the lr linearly towards 0")

    # --- evaluation ---
    eval_mode: bool = option(
        False,
        "false (the paper): batch statistics and dropout also when generating; "
        "true: running averages, no dropout",
    )
    num_samples: int = option(4, "validation images shown in each epoch's sample grid")
    val_every: int = option(
        1, "L1 / PSNR / SSIM of the val split every N epochs and after the last (0 = never)"
    )
    val_images: int = option(
        20,
        "val pairs each validation scores, evenly spaced and the same every epoch (0 = all); "
        "the last epoch also scores them all (val_all_*)",
    )
    val_fid: bool = option(False, "validation also computes FID and KID (needs requirements-eval.txt)")

    # --- run ---
    name: str = option(
        "", 'run name ("" = the dataset\'s): outputs go to checkpoints/<name>/ and results/<name>/'
    )
    checkpoint_dir: str = option("checkpoints", "folder of the runs' checkpoint folders")
    results_dir: str = option("results", "folder of the runs' result folders")
    save_every: int = option(10, "also keep the snapshot epoch_NNN.pt every N epochs (0 = never)")
    log_every: int = option(10, "progress and per-iteration loss curve every N iterations")
    tensorboard: str = option(
        "auto",
        "log to results/<name>/tensorboard/: auto = when the tensorboard package is "
        "installed, true = required (requirements-tensorboard.txt), false = off",
        SWITCH_MODES,
    )
    resume: bool = option(
        True,
        "continue checkpoints/<name>/latest.pt if it exists; false moves the old run aside and starts over",
    )
    resume_from: str = option(
        "", "start the run from this checkpoint file (once the run has its own latest.pt, that one wins)"
    )
    checkpoint_every: int = option(
        0, "also write latest.pt every N iterations, mid-epoch (0 = per epoch only)"
    )
    latest_every_s: int = option(
        60,
        "an epoch's end writes latest.pt at most every N seconds (0 = every epoch), and always after "
        "the run's first and last epochs and on a stop: a kill loses at most N s of training plus an epoch",
    )
    seed: int = option(0, "seeds python, numpy and torch; the data order and augmentation derive from it")
    device: str = option(
        "auto", "auto (cuda if present, else mps on Apple silicon, else cpu), cpu, mps, cuda or cuda:N"
    )
    precision: str = option(
        "auto",
        "auto = bf16 on CUDA GPUs and on CPUs with native bf16, else fp32 (mps: fp32); fp16 on CUDA only",
        PRECISIONS,
    )
    threads: int = option(0, "CPU threads for torch (0 = one per core; at most 4 per usable CPU)")
    speedups: bool = option(
        True,
        "the speed layer (speed/): matrix-product layers, bf16 weight copies, channels_last; "
        "false trains the stock networks exactly as written",
    )
    cuda_graphs: str = option(
        "false",
        "on CUDA, replay each training step as one captured CUDA graph (far fewer kernel launches at "
        "batch 1): auto = where it works (CUDA, bf16/fp32, one process), true = also say where it "
        "cannot; a capture that fails falls back to eager steps with one line",
        SWITCH_MODES,
    )

    # --- datasets, layouts, sizes and channels ---
    dataset: str = option(
        "facades", "a set of the pix2pix family (downloaded by name) or custom", DATASET_NAMES
    )
    data_layout: str = option(
        "aligned", "aligned: A|B in one file; paired_folders: <split>/A/ and <split>/B/", LAYOUTS
    )
    preprocess: str = option(
        "resize_and_crop", "how images become training crops (docs/data.md)", PREPROCESS_MODES
    )
    input_nc: int = option(3, "channels of the generator's input real_A: 1 (grayscale) or 3 (RGB)")
    output_nc: int = option(3, "channels of its output fake_B and of the target real_B: 1 or 3")
    num_downs: int = option(0, "U-Net down-sampling levels (0 = halvings of image_size, at most 8)")

    # --- several processes (only under torchrun) ---
    sync_bn: bool = option(True, "with several processes, BatchNorm uses the statistics of the global batch")

    def __post_init__(self) -> None:
        """Fill the fields left empty from the dataset: data/<dataset>, its official archive, its
        official direction, and the run name. Explicit values win; an unknown dataset is left for
        training/settings.py to report. (dataclasses.replace keeps filled values: build a new
        Config to switch datasets.)"""
        info = DATASETS.get(self.dataset)
        if info is None:
            return
        self.data_root = self.data_root or f"data/{self.dataset}"
        if not self.download_url and info.downloadable:
            self.download_url = PIX2PIX_URL.format(name=self.dataset)
        self.direction = self.direction or info.direction
        self.name = self.name or self.dataset


# ---------------------------------------------------------------------------------------------
# The datasets
# ---------------------------------------------------------------------------------------------

# The official archives of the pix2pix dataset family: one URL pattern, the set's name swapped in.
PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
FACADES_URL = PIX2PIX_URL.format(name="facades")


@dataclass(frozen=True)
class DatasetInfo:
    """What the project knows about one set of the pix2pix family (see the README's table)."""

    direction: str  # the official direction: which side of each pair is the generator's input
    splits: dict[str, int]  # split folders a download must hold -> image count (0 = any, not none)
    downloadable: bool = True  # False: no official archive may be fetched; `note` says what to do
    note: str = ""


# The file of every set is A|B; A and B as the official archives lay them out.
DATASETS = {
    # A = photo, B = label map; the paper and the official scripts train labels -> photo.
    "facades": DatasetInfo("BtoA", {"train": 400, "val": 100, "test": 106}),
    # A = street photo, B = label map. Not served any more for license reasons (the official
    # download script refuses it too); the count is the official one of the training set.
    "cityscapes": DatasetInfo(
        "BtoA",
        {"train": 2975},
        downloadable=False,
        note=(
            "the Cityscapes license forbids redistributing it: download gtFine_trainvaltest.zip and "
            "leftImg8bit_trainvaltest.zip from https://www.cityscapes-dataset.com, combine them with the "
            "official datasets/prepare_cityscapes_dataset.py and put the result there, or pass "
            "--download_url of an archive you may use"
        ),
    ),
    # A = aerial photo, B = map; 1096 training images is the official count.
    "maps": DatasetInfo("AtoB", {"train": 1096, "val": 0}),
    # A = edge map, B = photo.
    "edges2shoes": DatasetInfo("AtoB", {"train": 0, "val": 0}),
    "edges2handbags": DatasetInfo("AtoB", {"train": 0, "val": 0}),
    # A = night, B = day of the same webcam view (BtoA is the official day2night model).
    "night2day": DatasetInfo("AtoB", {"train": 0, "val": 0, "test": 0}),
    # Your own pairs in data_root: nothing is downloaded; A -> B unless --direction says otherwise.
    "custom": DatasetInfo(
        "AtoB",
        {"train": 0},
        downloadable=False,
        note="put your own train/ and val/ split folders there, or pass --data_root",
    ),
}


# ---------------------------------------------------------------------------------------------
# Values derived from a Config
# ---------------------------------------------------------------------------------------------


def is_valid_unet_size(image_size: int) -> bool:
    """The U-Net halves the image at least 5 times, so the size must be a multiple of 32."""
    return image_size >= 32 and image_size % 32 == 0


# Fields that fix the shape of the networks or the meaning of the data: a run cannot continue
# from a checkpoint made with other values.
ARCHITECTURE_FIELDS = (
    "direction",
    "image_size",
    "ngf",
    "ndf",
    "n_layers_D",
    "norm",
    "dataset",
    "input_nc",
    "output_nc",
    "num_downs",
)


def architecture_defaults() -> dict[str, object]:
    """ARCHITECTURE_FIELDS with their defaults: what a checkpoint older than a field was made with."""
    return {f.name: f.default for f in fields(Config) if f.name in ARCHITECTURE_FIELDS}


def unet_depth(image_size: int, max_depth: int = 8) -> int:
    """Number of down-sampling levels for `image_size`: halve while even, at most `max_depth` times."""
    depth = 0
    while image_size % 2 == 0 and depth < max_depth:
        image_size //= 2
        depth += 1
    return depth


def generator_depth(cfg: Config) -> int:
    """The U-Net's down-sampling levels: num_downs, or as many halvings as image_size allows (<= 8)."""
    return cfg.num_downs or unet_depth(cfg.image_size)


def size_multiple(cfg: Config) -> int:
    """Height and width of every image the generator sees must be multiples of this."""
    return 2 ** generator_depth(cfg)
