"""Building blocks of the two networks: normalisation, initialisation, and convolutions that are
fast on the CPU, plus the small switches the training loop flips on a network (frozen weights,
frozen BatchNorm statistics)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm (the paper's choice) or InstanceNorm, with learned scale and shift for both."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be 'batch' or 'instance', got {kind!r}")




def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The paper's initialisation: conv weights ~ N(0, gain), norm scales ~ N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


# oneDNN, PyTorch's CPU convolution library, is tuned for large feature maps. On the U-Net's inner
# levels (16x16 pixels and less, 512-1024 channels) its forward+backward runs 1.3-3x slower than
# the same arithmetic as one matrix product (measured on a 2-core AVX-512 Xeon: 66 ms -> 21 ms
# for the 1024 -> 512 channel transposed convolution at 2x2). These two subclasses keep the
# parameters, state_dict and results of nn.Conv2d / nn.ConvTranspose2d and only take that route
# for small maps on the CPU; everywhere else they are the stock layers.
SMALL_MAP_PIXELS = 16 * 16


def _small_cpu_map(x: torch.Tensor) -> bool:
    # Exported graphs (ONNX, TorchScript) get the stock layers: they run elsewhere, at any size.
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS


class Conv2d(nn.Conv2d):
    """nn.Conv2d computed as unfold + matmul for small CPU feature maps (groups=1, dilation=1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _small_cpu_map(x) or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            return super().forward(x)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C_in*kh*kw, L)
        out = torch.matmul(self.weight.flatten(1), cols)  # (N, C_out, L)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(n, -1, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed as matmul + fold for small CPU feature maps (groups=1, dilation=1)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (not _small_cpu_map(x) or output_size is not None or self.groups != 1
                or self.dilation != (1, 1) or self.output_padding != (0, 0)):
            return super().forward(x, output_size)
        n, c_in, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        # Every input pixel spreads a (C_out, kh, kw) patch; fold sums the overlapping patches.
        cols = torch.matmul(self.weight.flatten(1).t(), x.reshape(n, c_in, h * w))  # (N, C_out*kh*kw, h*w)
        size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
        out = F.fold(cols, size, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C_out, H, W)
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out



def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze D while G is updated, so G's step does not also compute D's weight gradients."""
    for p in module.parameters():
        p.requires_grad_(flag)


@contextlib.contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Let BatchNorm use batch statistics without moving its running averages (momentum 0).

    Used when generating samples in train mode (the paper's test-time behaviour), so that looking
    at the model does not change it.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

