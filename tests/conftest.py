"""Shared fixtures: the real facades data, and small synthetic aligned datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is a flat set of modules, as nanoGPT

# The facades set lives beside the checkout (../shared/datasets/facades); PIX2PIX_FACADES overrides.
FACADES = Path(os.environ.get("PIX2PIX_FACADES", ROOT.parent / "shared" / "datasets" / "facades"))


@pytest.fixture(scope="session")
def facades() -> Path:
    """The real facades folder; in CI its absence is a failure, elsewhere the test is skipped."""
    if not (FACADES / "train").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{FACADES}: the real facades data is required in CI")
        pytest.skip(f"{FACADES}: real facades data not found")
    return FACADES


def write_pair(path: Path, a: np.ndarray, b: np.ndarray) -> None:
    """Save A|B side by side as one image file (the aligned format)."""
    Image.fromarray(np.concatenate([a, b], axis=1)).save(path)


@pytest.fixture
def synthetic_split(tmp_path: Path):
    """Make a split folder of `n` lossless PNG pairs whose B is 255 - A; returns the folder."""
    def make(n: int = 3, size: int = 40, name: str = "train") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            write_pair(folder / f"{i + 1}.png", a, 255 - a)
        return folder
    return make
