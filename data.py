"""The run's data, from its config: the dataset downloaded when missing, the training split with
random jitter, the validation split, and the loader that batches the training pairs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from config import DATASETS, Config, size_multiple
from dataset import DatasetError, PairedDataset, open_split
from distributed import World
from download import ensure_dataset


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
    val_split = next(root / s for s in ("val", "test", "train") if (root / s).is_dir())
    return train_set, make_dataset(cfg, val_split, train=False, max_images=cfg.max_images)


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
