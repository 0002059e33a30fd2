"""Paired images for Pix2Pix: the "aligned" format (A|B side by side in one file), and its download.

Speed: every image is decoded (with Pillow, which reads every common format) and resized once, when the dataset is built, into a uint8 tensor
cache (the 400 facades training pairs at 286 px take about 200 MB). An iteration then only crops
and flips a slice of that cache, so the DataLoader needs no worker processes fighting the
training threads for the CPU cores.

Randomness: the crop and flip of item ``i`` in epoch ``e`` come from a generator seeded with
``(seed, e, i)``, so they do not depend on the global RNG, on worker processes or on what ran
before: a resumed or distributed run sees exactly the same augmentations.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Expected number of images per split of the official facades archive, used to verify a download.
FACADES_COUNTS = {"train": 400, "val": 100, "test": 106}


class DatasetError(RuntimeError):
    """A problem with the data on disk; the message names the file or folder."""


def scan_folder(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The image files directly in `folder`, sorted by name (numerically where names are numbers),
    and the names of the other, non-hidden files, which are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    files = [p for p in folder.iterdir() if p.is_file()]
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = sorted(p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS
                    and not p.name.startswith("."))
    # "10.jpg" after "9.jpg", as a person would order the facades files.
    return sorted(images, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name)), others


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted as scan_folder sorts them."""
    return scan_folder(folder)[0]


def read_image(path: Path, channels: int = 3) -> torch.Tensor:
    """Decode one image file as uint8 of shape (channels, H, W): 3 = RGB, 1 = grayscale."""
    try:
        with Image.open(path) as file:
            pixels = np.array(file.convert("RGB" if channels == 3 else "L"))  # (H, W[, 3]) uint8
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot decode image ({err})") from None
    return torch.from_numpy(pixels).reshape(*pixels.shape[:2], channels).permute(2, 0, 1)


def read_pair(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one aligned file into its halves (A = left, B = right), each uint8 of shape (3, H, W/2)."""
    try:
        with Image.open(path) as file:
            # convert("RGB") also turns grayscale, RGBA and palette images into 3 channels.
            pixels = np.array(file.convert("RGB"))  # (H, W, 3) uint8
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot decode image ({err})") from None
    image = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W)
    width = image.shape[-1]
    if width % 2 or width < 2:
        raise DatasetError(f"{path}: width {width} is odd, so it cannot be split into A|B halves")
    half = width // 2
    return image[..., :half], image[..., half:]


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of a uint8 (..., H, W) image to (..., size, size), as the official code does."""
    return TF.resize(image, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)


class AlignedDataset(Dataset):
    """Pairs from one split folder of aligned images, as (real_A, real_B) float tensors in [-1, 1].

    ``real_A`` is always the generator's input and ``real_B`` its target: with direction "BtoA"
    the right half of each file is the input. Training mode resizes both halves to `load_size`,
    then takes the same random `image_size` crop and the same random flip of both; evaluation
    mode (``train=False``) resizes to `image_size` and does neither.
    """

    def __init__(self, folder: str | Path, direction: str, load_size: int, image_size: int,
                 train: bool, flip: bool = True, seed: int = 0, max_images: int = 0) -> None:
        self.files, ignored = scan_folder(folder)
        if ignored:
            print(f"warning: {folder}: ignored {len(ignored)} files that are not images "
                  f"(e.g. {ignored[0]})", file=sys.stderr)
        if max_images:
            self.files = self.files[:max_images]
        if not self.files:
            raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        self.train, self.flip, self.seed, self.epoch = train, flip and train, seed, 0
        self.image_size = image_size
        cache_size = load_size if train else image_size
        halves = [read_pair(path) for path in self.files]
        A = torch.stack([resize_square(a, cache_size) for a, _ in halves])  # (N, 3, S, S) uint8
        B = torch.stack([resize_square(b, cache_size) for _, b in halves])
        self.real_A, self.real_B = (A, B) if direction == "AtoB" else (B, A)

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentations of this epoch (call before iterating, like DistributedSampler)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = torch.stack([self.real_A[index], self.real_B[index]])  # (2, 3, S, S) uint8
        if self.train:
            pair = self._augment(pair, index)  # (2, 3, image_size, image_size)
        pair = pair.float().div_(127.5).sub_(1.0)  # [0, 255] -> [-1, 1]
        return pair[0], pair[1]

    def _augment(self, pair: torch.Tensor, index: int) -> torch.Tensor:
        """The same random crop and horizontal flip for both images of a pair."""
        rng = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & (2**63 - 1))
        limit = pair.shape[-1] - self.image_size
        top, left = torch.randint(0, limit + 1, (2,), generator=rng).tolist()
        pair = pair[..., top:top + self.image_size, left:left + self.image_size]
        if self.flip and torch.rand((), generator=rng).item() < 0.5:
            pair = pair.flip(-1)
        return pair


# ---------------------------------------------------------------------------------------------
# Download of the official facades archive
# ---------------------------------------------------------------------------------------------

def _fetch(url: str, target: Path) -> None:
    """Download `url` to `target` with a progress bar, through a .part file renamed when complete."""
    part = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}") as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(part, target)


def _extract(archive: Path, into: Path) -> None:
    """Unpack a .tar.gz safely: the "data" filter refuses absolute paths, '..', links out and devices."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DatasetError(f"{archive}: cannot extract safely ({err})") from None


def _verify_counts(root: Path, counts: dict[str, int]) -> None:
    for split, expected in counts.items():
        found = len(list_images(root / split)) if (root / split).is_dir() else 0
        if found != expected:
            raise DatasetError(f"{root / split}: expected {expected} images after download, found {found}")


def _verify_sha256(archive: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise DatasetError(f"{archive.name}: SHA-256 {digest.hexdigest()} does not match the expected {expected}")


def ensure_facades(root: str | Path, url: str, sha256: str = "",
                   counts: dict[str, int] = FACADES_COUNTS) -> Path:
    """Return `root`, first downloading and unpacking the facades archive there if it is missing.

    Only a root whose folder name is "facades" is downloaded; for any other missing folder the
    error says where to put the data. The archive is checked (SHA-256 when given, then the image
    count of every split) before it is moved into place, so a failed or interrupted download
    leaves nothing behind but a temporary folder that the next try removes.
    """
    root = Path(root)
    if root.exists():
        return root
    if root.name != "facades":
        raise DatasetError(f"{root}: no such folder (put the train/ val/ test/ image folders there)")
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(".facades-download-*"):  # left by a download that was killed
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".facades-download-") as tmp:
        archive = Path(tmp) / "facades.tar.gz"
        try:
            _fetch(url, archive)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DatasetError(
                f"{root}: data missing and the download from {url} failed ({reason}); download and "
                f"unpack facades.tar.gz by hand so that {root}/train holds the images, or pass "
                f"--data_root") from None
        if sha256:
            _verify_sha256(archive, sha256)
        _extract(archive, Path(tmp))
        _verify_counts(Path(tmp) / "facades", counts)
        # Moved into place only once complete and verified: a failed download leaves no root behind.
        shutil.move(str(Path(tmp) / "facades"), str(root))
    return root
