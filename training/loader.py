"""The run's data, from its config: the dataset downloaded when missing, the training split with
random jitter, the validation split, and the loader that batches the training pairs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from config import DATASETS, Config, size_multiple
from dataset import PairedDataset, open_split
from evaluation.metrics import FID_MIN_IMAGES, SSIM_SIZE
from files.download import ensure_dataset
from files.images import DatasetError
from training.distributed import World


def make_dataset(cfg: Config, folder: Path, train: bool, max_images: int = 0) -> PairedDataset:
    """The pairs of one split folder in the config's layout, preprocessing and channels; train=True
    gives random crops and flips, False the deterministic items of grids and validation."""
    return open_split(
        folder,
        cfg.data_layout,
        direction=cfg.direction,
        load_size=cfg.load_size,
        image_size=cfg.image_size,
        train=train,
        flip=cfg.flip,
        seed=cfg.seed,
        max_images=max_images,
        preprocess=cfg.preprocess,
        input_nc=cfg.input_nc,
        output_nc=cfg.output_nc,
        multiple=size_multiple(cfg),
    )


def prepare_data_root(cfg: Config) -> Path:
    """data_root, downloaded first when it is the missing folder of a set of the pix2pix family."""
    info = DATASETS[cfg.dataset]
    return ensure_dataset(
        cfg.data_root, cfg.dataset, cfg.download_url, info.splits, cfg.download_sha256, missing_hint=info.note
    )


def build_data(cfg: Config) -> tuple[PairedDataset, PairedDataset]:
    """The training set (random jitter) and the validation set: val/, else test/, else train/."""
    root = prepare_data_root(cfg)
    if not (root / "train").is_dir():
        raise DatasetError(f"{root / 'train'}: no such folder (data_root must hold train/ and val/)")
    train_set = make_dataset(cfg, root / "train", train=True, max_images=cfg.max_images)
    train_set.check_batchable(cfg.batch_size)
    val_split = validation_folder(root)
    val_set = make_dataset(cfg, val_split, train=False, max_images=cfg.max_images)
    check_usable(cfg, train_set, val_set, val_split)
    return train_set, val_set


def validation_folder(root: Path) -> Path:
    """The split validation scores: val/, else test/, else train/ (build_data has checked train/).
    A run keeps the one it started with (checkpoint.resume_or_start)."""
    return next(root / split for split in ("val", "test", "train") if (root / split).is_dir())


def discriminator_size(n_layers: int) -> int:
    """The smallest side the PatchGAN takes: n_layers halvings must leave 3 pixels for its two
    4x4 stride-1 convolutions (and 2x2 values per channel for the BatchNorm between them)."""
    return 3 * 2**n_layers


def check_usable(cfg: Config, train_set: PairedDataset, val_set: PairedDataset, val_split: Path) -> None:
    """Images too small or too few for what the run does with them, named before the first step:
    the discriminator's smallest input in training (--preprocess none trains on the images' own
    sizes), SSIM's window in validation (crop, none and scale_width keep the images' shapes), and
    the two images FID needs."""
    n_layers = cfg.n_layers_D
    needed_by = f"the discriminator with --n_layers_D {n_layers}"
    _check_sides(cfg, train_set, discriminator_size(n_layers), needed_by, "a smaller --n_layers_D")
    if not cfg.val_every:
        return
    _check_sides(cfg, val_set, SSIM_SIZE, "validation's SSIM", "--val_every 0")
    if cfg.val_fid and len(val_set) < FID_MIN_IMAGES:
        raise DatasetError(
            f"{val_split}: {len(val_set)} validation image, but --val_fid true needs at least "
            f"{FID_MIN_IMAGES} (FID and KID compare two sets); use more images or --val_fid false"
        )


def _check_sides(cfg: Config, dataset: PairedDataset, least: int, needed_by: str, remedy: str) -> None:
    for (height, width), name in dataset.sizes().items():
        if min(height, width) < least:
            raise DatasetError(
                f"{name}: {width}x{height} after --preprocess {cfg.preprocess}{_how(cfg, dataset.train)}, "
                f"but {needed_by} needs at least {least}x{least}; use larger images, another "
                f"--preprocess or {remedy}"
            )


def _how(cfg: Config, train: bool) -> str:
    """What the preprocessing does to an image's size, where it keeps it small."""
    if cfg.preprocess == "scale_width" and not train:
        return f" (width --image_size {cfg.image_size}, height by the aspect ratio)"
    return " (each image keeps its own size)" if cfg.preprocess in ("crop", "none") else ""


def make_loader(train_set: PairedDataset, cfg: Config, device: torch.device, world: World) -> DataLoader:
    """Batches in the main process: items are slices of a tensor cache, so workers would only cost.

    A fresh seeded permutation every epoch, the same in every process, of which each process takes
    every world.size-th index (DistributedSampler). The loader's own generator keeps its per-epoch
    seed draw out of the global stream that dropout draws from, so a resumed run's dropout goes on
    exactly where it stopped.
    """
    sampler = DistributedSampler(
        train_set, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.seed
    )
    return DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
