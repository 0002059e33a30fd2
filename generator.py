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
import types
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from layers import Conv2d, ConvTranspose2d, compute_layout, frozen_norm_stats, norm_layer


class UNetGenerator(nn.Module):
    """U-Net generator mapping (N, in_channels, H, W) to (N, out_channels, H, W) in [-1, 1].

    H and W must be multiples of 2**num_downs; num_downs must be at least 5.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        num_downs: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
    ) -> None:
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
            layers = [
                nn.ReLU(),
                ConvTranspose2d(in_width, out_width, 4, 2, 1, bias=bias),
                norm_layer(norm, out_width),
            ]
            if 1 <= j <= num_downs - 5 and dropout > 0:  # the 8*ngf blocks just above the bottleneck
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        self.final = nn.Sequential(nn.ReLU(), ConvTranspose2d(2 * width[0], out_channels, 4, 2, 1), nn.Tanh())

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
def translate(
    G: UNetGenerator,
    real_A: torch.Tensor,
    eval_mode: bool,
    seed: int,
    amp: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
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
        fake_B = G(compute_layout(padded)).float()  # (N, out_channels, H + pad_h, W + pad_w)
    G.train(was_training)
    return fake_B[..., :h, :w]


def _batch_norm_per_image(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm in train mode of each image by itself: every channel of every image normalised by
    its own mean and (biased) variance over the pixels, then scaled and shifted, which is what
    BatchNorm computes for that image at batch 1. On maps of 32x32 and more that is GroupNorm
    with one group per channel (one kernel, and it keeps channels_last); on the small, wide inner
    maps GroupNorm's kernel is slower than BatchNorm of one image after another.
    Running averages are not touched (translate freezes them anyway)."""
    if not self.training:
        return nn.modules.batchnorm._BatchNorm.forward(self, x)
    if x.shape[-2] * x.shape[-1] >= 32 * 32:
        return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
    return torch.cat(
        [F.batch_norm(image, None, None, self.weight, self.bias, True, 0.0, self.eps) for image in x.split(1)]
    )


def _dropout_one_mask(self: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """Dropout that draws the mask of one image, as F.dropout does at batch 1 (the same random
    numbers from the same generator state), and applies it to every image of the batch."""
    if not self.training or self.p == 0:
        return x
    if x.is_cuda:  # CUDA's F.dropout is the fused native_dropout: its mask, drawn for one image
        _, keep = torch.native_dropout(x[:1], self.p, True)
        return x * keep * (1.0 / (1.0 - self.p))
    noise = torch.empty_like(x[:1]).bernoulli_(1 - self.p)  # ATen's CPU dropout, step by step
    noise.div_(1 - self.p)
    return x * noise


@contextlib.contextmanager
def each_image_alone(G: nn.Module):
    """Within it, G(batch) gives every image what G(image[None]) gives it in train mode (the
    paper's generation: BatchNorm with the image's own statistics, dropout), when the RNG is
    seeded before each call as translate() does: BatchNorm normalises per image and dropout draws
    one image's mask and applies it to all. In eval mode batching changes nothing anyway."""
    patched = [
        (m, _batch_norm_per_image) for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    patched += [(m, _dropout_one_mask) for m in G.modules() if type(m) is nn.Dropout]
    saved = [m.__dict__.get("forward") for m, _ in patched]  # e.g. distributed.local_norm_stats's
    for m, forward in patched:
        m.forward = types.MethodType(forward, m)  # shadows the class's forward
    try:
        yield
    finally:
        for (m, _), previous in zip(patched, saved):
            if previous is None:
                del m.forward
            else:
                m.forward = previous


def translate_each(
    G: UNetGenerator,
    real_A: torch.Tensor,
    eval_mode: bool,
    seed: int,
    amp: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """translate() of each image alone, computed as one batch: the result equals
    torch.cat([translate(G, a[None], eval_mode, seed, amp) for a in real_A]) up to float rounding
    (a batch sums in another order than one image: tests/test_networks.py bounds the
    difference). real_A: (N, C, H, W), all images of one size."""
    with each_image_alone(G):
        return translate(G, real_A, eval_mode, seed, amp)


# Evaluation translates this many pixels at a time (16 images of 256x256): batches amortise the
# per-layer overheads, which dominate the small inner maps of a U-Net at batch 1.
EVAL_BATCH_PIXELS = 16 * 256 * 256


def translate_items(
    G: UNetGenerator,
    items: Iterable[tuple[torch.Tensor, torch.Tensor]],
    eval_mode: bool,
    seed: int,
    amp: contextlib.AbstractContextManager | None,
    device: torch.device,
    batch_pixels: int = EVAL_BATCH_PIXELS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(real_A, fake_B, real_B) per (real_A, real_B) pair of (C, H, W) images, fake_B on the CPU:
    what translate() gives each image alone, as validation and predict.py generate. Consecutive
    images of one size go through translate_each together, up to batch_pixels at a time."""
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        real_A = torch.stack([a for a, _ in pending]).to(device)  # (N, C, H, W)
        fake_B = translate_each(G, real_A, eval_mode, seed, amp).cpu()
        done = [(a, f, b) for (a, b), f in zip(pending, fake_B)]
        pending.clear()
        return done

    for real_A, real_B in items:
        if pending and (
            real_A.shape != pending[0][0].shape or (len(pending) + 1) * real_A[0].numel() > batch_pixels
        ):
            yield from flush()
        pending.append((real_A, real_B))
    if pending:
        yield from flush()


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
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[
            :, None, None
        ]


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
