"""The Pix2Pix generator: a U-Net (Ronneberger et al. 2015) as in Isola et al. 2017, section 3.2.1.

Encoder: C64-C128-C256-C512-C512-C512-C512-C512, each a 4x4 stride-2 convolution that halves the
image, with LeakyReLU(0.2) before it and BatchNorm after it (none on the first layer nor on the
1x1 bottleneck). Decoder: the mirror image with ReLU and 4x4 stride-2 transposed convolutions; the
output of each decoder layer is concatenated with the encoder layer of the same size (the skip
connections that carry the fine detail of the label map through to the photo). Dropout 0.5 in
three inner decoder blocks is the only noise the model gets, as in the paper. The last layer maps
to the output channels through Tanh, so images are in [-1, 1].

The depth is a constructor argument (num_downs): 256 px takes 8 halvings down to 1x1, 128 px 7.
The layer order and bias choices follow the authors' PyTorch code, so their recipe is reproduced.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from layers import Conv2d, ConvTranspose2d, frozen_norm_stats, norm_layer


class UNetGenerator(nn.Module):
    """U-Net generator mapping (N, in_channels, H, W) to (N, out_channels, H, W) in [-1, 1].

    H and W must be multiples of 2**num_downs; num_downs must be at least 5.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, num_downs: int = 8,
                 norm: str = "batch", dropout: float = 0.5) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        self.num_downs = num_downs
        self.size_multiple = 2**num_downs  # H and W must be multiples of this
        # Channels after each encoder level: ngf, 2 ngf, 4 ngf, then 8 ngf down to the bottleneck.
        width = [ngf * min(2**i, 8) for i in range(num_downs)]
        # With BatchNorm right after a convolution its bias is redundant (the norm's shift replaces it).
        bias = norm != "batch"

        self.down = nn.ModuleList([Conv2d(in_channels, width[0], 4, 2, 1, bias=bias)])
        for i in range(1, num_downs):
            innermost = i == num_downs - 1  # the 1x1 bottleneck has no norm
            layers = [nn.LeakyReLU(0.2), Conv2d(width[i - 1], width[i], 4, 2, 1, bias=bias)]
            self.down.append(nn.Sequential(*layers, *([] if innermost else [norm_layer(norm, width[i])])))

        # Decoder block j maps to the width of encoder level num_downs-2-j; from the second block
        # on, its input is the previous block's output concatenated with the matching skip.
        self.up = nn.ModuleList()
        for j in range(num_downs - 1):
            in_width = width[-1] if j == 0 else 2 * width[num_downs - 1 - j]
            out_width = width[num_downs - 2 - j]
            layers = [nn.ReLU(), ConvTranspose2d(in_width, out_width, 4, 2, 1, bias=bias),
                      norm_layer(norm, out_width)]
            if 1 <= j <= num_downs - 5 and dropout > 0:  # the 8*ngf blocks just above the bottleneck
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        self.final = nn.Sequential(nn.ReLU(), ConvTranspose2d(2 * width[0], out_channels, 4, 2, 1),
                                   nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.down:
            x = down(x)  # (N, width[i], H / 2**(i+1), W / 2**(i+1))
            skips.append(x)
        # x: the (N, 8 ngf, H / 2**num_downs, W / 2**num_downs) bottleneck
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = torch.cat([skip, up(x)], dim=1)  # doubles size; channels: skip + decoder output
        return self.final(x)  # (N, out_channels, H, W)


@torch.no_grad()
def translate(G: UNetGenerator, real_A: torch.Tensor, eval_mode: bool, seed: int,
              amp: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """G(real_A) for evaluation, of any size, without changing G or the caller's RNG streams.

    real_A: (N, C, H, W) in [-1, 1]; H and W need not be multiples of G.size_multiple: the
    image is padded at the bottom and right by repeating its border, translated, and cropped
    back, so the output is (N, out_channels, H, W), aligned pixel for pixel with the input.

    eval_mode False is the paper's choice: batch statistics and dropout at test time too. The
    running BatchNorm averages are left untouched and dropout draws from its own fixed seed.
    """
    h, w = real_A.shape[-2:]
    pad_h, pad_w = -h % G.size_multiple, -w % G.size_multiple
    padded = F.pad(real_A, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else real_A
    was_training = G.training
    G.train(not eval_mode)
    devices = [real_A.device] if real_A.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), frozen_norm_stats(G), amp or contextlib.nullcontext():
        torch.manual_seed(seed)
        fake_B = G(padded).float()  # (N, out_channels, H + pad_h, W + pad_w)
    G.train(was_training)
    return fake_B[..., :h, :w]


class BatchStatsNorm(nn.Module):
    """A BatchNorm2d frozen in its training behaviour: it normalises with the mean and variance of
    the batch it is given (the paper's test-time choice) and never updates running averages.
    Plain tensor operations, so exporters (ONNX, torch.export) need no training-mode BatchNorm."""

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().clone())
        self.bias = nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
        var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


def deployable(G: UNetGenerator, eval_mode: bool) -> UNetGenerator:
    """A deterministic copy of G for export: dropout off, and BatchNorm with running averages
    (eval_mode true) or with the batch's own statistics (eval_mode false, the paper's choice)."""
    import copy

    G = copy.deepcopy(G).eval()
    if not eval_mode:
        for module in G.modules():
            for name, child in module.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, name, BatchStatsNorm(child))
    return G
