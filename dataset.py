"""Paired images for Pix2Pix from two folder layouts (files/download.py fetches the pix2pix dataset family).

Layouts: "aligned" (A|B side by side in one file, the pix2pix format) and "paired_folders"
(``<split>/A/`` and ``<split>/B/``, files matched by name without extension).

Speed: every image is decoded (with Pillow, which reads every common format) and preprocessed once,
when the dataset is built, into a uint8 tensor cache (the 400 facades training pairs at 286 px take
about 200 MB). An iteration then only crops and flips a slice of that cache, so the DataLoader needs
no worker processes fighting the training threads for the CPU cores.

Randomness: the crop and flip of item ``i`` in epoch ``e`` come from a generator seeded with
``(seed, e, i)``, so they do not depend on the global RNG, on worker processes or on what ran
before: a resumed or distributed run sees exactly the same augmentations.

Preprocessing (``preprocess``), in training mode, then in evaluation mode (no randomness, no flip):

- ``resize_and_crop``: resize to load_size x load_size, random image_size crop / resize to image_size.
- ``crop``: random image_size crop of the full-resolution image / the full image.
- ``scale_width``: width to load_size keeping the aspect, random image_size crop / width image_size.
- ``none``: the full image (its sides must be multiples of ``multiple``) / the full image.

Reading the files (files/images.py): EXIF orientation, high bit depths, one DatasetError line per
problem with a file or folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import Dataset

# The names of the layouts and preprocessing modes are the config's (config.py imports nothing).
from config import LAYOUTS, PREPROCESS_MODES
from files.images import (
    IMAGE_EXTENSIONS,
    MAX_LISTED,
    DatasetError,
    read_pair,
    read_two,
    resize,
    scan_folder,
    side_channels,
    warn_ignored,
)

Reader = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # pair i -> its (A, B) sides, uint8 (C, H, W)


class PairedDataset(Dataset):
    """Pairs as (real_A, real_B) float tensors in [-1, 1], from a uint8 cache built once.

    ``real_A`` is always the generator's input and ``real_B`` its target: with direction "BtoA"
    the B side of each pair is the input. Training mode takes the same random crop (per
    `preprocess`) and the same random flip of both images; evaluation mode (``train=False``) is
    deterministic and never flips. Subclasses find the pairs (find_pairs); this class reads,
    preprocesses and serves them.
    In evaluation mode with crop, none or scale_width the items keep their own height and width.
    """

    def __init__(
        self,
        folder: str | Path,
        direction: str,
        load_size: int,
        image_size: int,
        train: bool,
        flip: bool = True,
        seed: int = 0,
        max_images: int = 0,
        *,
        preprocess: str = "resize_and_crop",
        input_nc: int = 3,
        output_nc: int = 3,
        multiple: int = 1,
    ) -> None:
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
        self.direction, self.load_size, self.image_size = direction, load_size, image_size
        self.train, self.flip, self.seed, self.epoch = train, flip and train, seed, 0
        self.preprocess, self.multiple = preprocess, multiple
        # Lists, not one stacked tensor: in crop/none/scale_width modes the sizes may differ.
        self.real_A: list[torch.Tensor] = []  # each uint8 (input_nc, H, W)
        self.real_B: list[torch.Tensor] = []  # each uint8 (output_nc, H, W), the same H, W
        self.names: list[str] = []
        # self.files: one file per pair (the A file of a paired_folders pair), as the layout lists them
        self.files, read = self.find_pairs(
            Path(folder), max_images, side_channels(direction, input_nc, output_nc)
        )
        self._fill([str(p) for p in self.files], read)

    def find_pairs(
        self, folder: Path, max_images: int, channels: tuple[int, int]
    ) -> tuple[list[Path], Reader]:
        """The layout's pairs in `folder` (at most max_images; 0 = all) and a reader of pair i's
        (A, B) sides with `channels`; each layout implements it."""
        raise NotImplementedError

    def _fill(self, names: list[str], read: Reader) -> None:
        """Decode and preprocess every pair once; read(i) returns the (A, B) sides of pair i."""
        for i, name in enumerate(names):
            side_A, side_B = (self._fit(side, name) for side in read(i))
            real_A, real_B = (side_A, side_B) if self.direction == "AtoB" else (side_B, side_A)
            self.real_A.append(real_A)
            self.real_B.append(real_B)
            self.names.append(name)

    def _fit(self, image: torch.Tensor, name: str) -> torch.Tensor:
        """The cached form of one side: uint8 (C, H, W) -> (C, H', W') per preprocess and mode."""
        height, width = image.shape[-2:]
        size = self.image_size
        if self.preprocess == "resize_and_crop":
            side = self.load_size if self.train else size
            return resize(image, side, side)
        if self.preprocess == "scale_width":
            target = self.load_size if self.train else size
            # Training keeps the height >= the crop, as the official code does for flat images.
            new_height = max(round(target * height / width), size if self.train else 1)
            return resize(image, new_height, target)
        if self.train and self.preprocess == "crop" and (height < size or width < size):
            raise DatasetError(
                f"{name}: {width}x{height} is smaller than the {size}x{size} crop of "
                f"--preprocess crop; use --preprocess resize_and_crop or scale_width, or a "
                f"smaller --image_size"
            )
        if self.train and self.preprocess == "none" and (height % self.multiple or width % self.multiple):
            raise DatasetError(
                f"{name}: {width}x{height} is not a multiple of {self.multiple} (the generator "
                f"halves it {self.multiple.bit_length() - 1} times) as --preprocess none needs; "
                f"use --preprocess crop or scale_width, or resize the images"
            )
        return image

    def __len__(self) -> int:
        return len(self.real_A)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentations of this epoch (call before iterating, like DistributedSampler)."""
        self.epoch = epoch

    def sizes(self) -> dict[tuple[int, int], str]:
        """Each distinct (height, width) of the cached pairs, with the name of its first pair."""
        found: dict[tuple[int, int], str] = {}
        for image, name in zip(self.real_A, self.names):
            found.setdefault(tuple(image.shape[-2:]), name)
        return found

    def check_batchable(self, batch_size: int) -> None:
        """Batches stack their items, so batch_size > 1 needs training items of one size."""
        sizes = self.sizes() if self.preprocess == "none" else {}
        if batch_size > 1 and len(sizes) > 1:
            (h1, w1), (h2, w2) = list(sizes)[:2]
            raise DatasetError(
                f"--batch_size {batch_size} with --preprocess none needs training images of one "
                f"size, but {sizes[(h1, w1)]} is {w1}x{h1} and {sizes[(h2, w2)]} is {w2}x{h2}; "
                f"use --batch_size 1 or --preprocess crop"
            )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        real_A, real_B = self.real_A[index], self.real_B[index]  # uint8 (C, H, W)
        if self.train:
            real_A, real_B = self._augment(real_A, real_B, index)  # (C, image_size, image_size) unless none
        # [0, 255] -> [-1, 1]
        return real_A.float().div_(127.5).sub_(1.0), real_B.float().div_(127.5).sub_(1.0)

    def _augment(
        self, real_A: torch.Tensor, real_B: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same random crop and horizontal flip for both images of a pair."""
        rng = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & (2**63 - 1))
        if self.preprocess != "none":
            size = self.image_size
            height, width = real_A.shape[-2:]
            top = int(torch.randint(0, height - size + 1, (), generator=rng))
            left = int(torch.randint(0, width - size + 1, (), generator=rng))
            real_A = real_A[..., top : top + size, left : left + size]
            real_B = real_B[..., top : top + size, left : left + size]
        if self.flip and torch.rand((), generator=rng).item() < 0.5:
            real_A, real_B = real_A.flip(-1), real_B.flip(-1)
        return real_A, real_B


class AlignedDataset(PairedDataset):
    """Pairs from one split folder of aligned images: A|B side by side in each file.

    Training mode with the default preprocess resizes both halves to `load_size`, then takes the
    same random `image_size` crop and the same random flip of both; evaluation mode resizes to
    `image_size` and does neither. `input_nc` / `output_nc` (1 or 3) set the channels of real_A
    and real_B.
    """

    def find_pairs(
        self, folder: Path, max_images: int, channels: tuple[int, int]
    ) -> tuple[list[Path], Reader]:
        files, ignored = scan_folder(folder)
        warn_ignored(folder, ignored)
        files = files[:max_images] if max_images else files
        if not files:
            raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return files, lambda i: read_pair(files[i], channels)


def _by_stem(files: Iterable[Path]) -> dict[str, Path]:
    """Files keyed by name without extension (scan_folder has refused two files of one stem)."""
    return {path.stem: path for path in files}


def match_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """The (A, B) file pairs of a paired_folders split: folder/A/x.* with folder/B/x.*, in A's order.

    Files without a partner are all reported in one error line (up to MAX_LISTED names).
    """
    folder = Path(folder)
    (files_A, ignored_A), (files_B, ignored_B) = scan_folder(folder / "A"), scan_folder(folder / "B")
    warn_ignored(folder, [f"A/{n}" for n in ignored_A] + [f"B/{n}" for n in ignored_B])
    by_A, by_B = _by_stem(files_A), _by_stem(files_B)
    unmatched = [f"A/{by_A[s].name}" for s in by_A if s not in by_B] + [
        f"B/{by_B[s].name}" for s in by_B if s not in by_A
    ]
    if unmatched:
        listed = ", ".join(unmatched[:MAX_LISTED])
        more = f" and {len(unmatched) - MAX_LISTED} more" if len(unmatched) > MAX_LISTED else ""
        raise DatasetError(
            f"{folder}: {len(unmatched)} files have no partner of the same name in the other "
            f"folder: {listed}{more}"
        )
    return [(path, by_B[stem]) for stem, path in by_A.items()]


class PairedFoldersDataset(PairedDataset):
    """Pairs from one split folder holding A/ and B/: A/x.png pairs with B/x.jpg (any extensions).

    The same preprocessing, modes and arguments as AlignedDataset.
    """

    def find_pairs(
        self, folder: Path, max_images: int, channels: tuple[int, int]
    ) -> tuple[list[Path], Reader]:
        pairs = match_pairs(folder)
        pairs = pairs[:max_images] if max_images else pairs
        if not pairs:
            raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in A/ and B/")
        return [a for a, _ in pairs], lambda i: read_two(*pairs[i], channels)


def open_split(folder: str | Path, layout: str, **kwargs) -> PairedDataset:
    """The pairs of one split folder in `layout` ("aligned" or "paired_folders"); kwargs as
    AlignedDataset takes them."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return (PairedFoldersDataset if layout == "paired_folders" else AlignedDataset)(folder, **kwargs)
