"""The download of an official archive of the pix2pix family (facades, maps, edges2shoes, ...):
fetch, check, unpack, move into place."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dataset import FACADES_COUNTS, DatasetError, list_images


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
    """Every split folder must hold `count` images, or at least one where the count is 0 (unknown)."""
    for split, expected in counts.items():
        found = len(list_images(root / split)) if (root / split).is_dir() else 0
        if expected and found != expected:
            raise DatasetError(f"{root / split}: expected {expected} images after download, found {found}")
        if not expected and not found:
            raise DatasetError(f"{root / split}: no images after download (the archive must hold "
                               f"{', '.join(f'{s}/' for s in counts)} with images)")


def _verify_sha256(archive: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise DatasetError(f"{archive.name}: SHA-256 {digest.hexdigest()} does not match the expected {expected}")


def ensure_dataset(root: str | Path, name: str, url: str, counts: dict[str, int], sha256: str = "",
                   missing_hint: str = "") -> Path:
    """Return `root`, first downloading and unpacking the archive `name`.tar.gz there if it is missing.

    The archive must unpack into a folder `name` holding the split folders of `counts` (split ->
    image count, 0 = any but not none), as the official pix2pix archives do. Only a root whose
    folder name is `name` is downloaded, and only when `url` is set; for any other missing
    folder the error says where to put the data (`missing_hint` adds to it). The archive is
    checked (SHA-256 when given, then every split) before it is moved into place, so a failed or
    interrupted download leaves nothing behind but a temporary folder that the next try removes.
    """
    root = Path(root)
    if root.exists():
        return root
    if root.name != name or not url:
        hint = missing_hint or "put the train/ val/ test/ image folders there"
        raise DatasetError(f"{root}: no such folder ({hint})")
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{name}-download-*"):  # left by a download that was killed
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{name}-download-") as tmp:
        archive = Path(tmp) / f"{name}.tar.gz"
        try:
            _fetch(url, archive)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DatasetError(
                f"{root}: data missing and the download from {url} failed ({reason}); download and "
                f"unpack {name}.tar.gz by hand so that {root}/train holds the images, or pass "
                f"--data_root") from None
        if sha256:
            _verify_sha256(archive, sha256)
        _extract(archive, Path(tmp))
        _verify_counts(Path(tmp) / name, counts)
        # Moved into place only once complete and verified: a failed download leaves no root behind.
        shutil.move(str(Path(tmp) / name), str(root))
    return root


def ensure_facades(root: str | Path, url: str, sha256: str = "",
                   counts: dict[str, int] = FACADES_COUNTS) -> Path:
    """ensure_dataset for the facades archive: 400/100/106 images in train/val/test."""
    return ensure_dataset(root, "facades", url, counts, sha256)
