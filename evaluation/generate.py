"""Generating with a trained generator: what validation, predict.py and demo.py call.

One entry per use:
- ``translate``: a batch of images in [-1, 1] of any size, each as if it were alone.
- ``translate_pairs``: a stream of (real_A, real_B) pairs, generated several at a time.
- ``translate_image``: one uint8 picture as a file holds it, at its own size (predict.py, demo.py).
- ``export_copy``: a deterministic copy of the generator for ONNX and torch.export.

Each image as if alone. The paper generates test images the way it trains: BatchNorm with the
statistics of the batch, a batch of one image, and dropout on (``eval_mode`` false). Batching
images would mix their statistics, so generation runs a *per-image view* of the generator: a copy
of its modules that shares its parameters and buffers, in which every BatchNorm normalises each
image by its own statistics (``PerImageBatchNorm``) and dropout draws one image's mask for the
whole batch (``OneImageDropout``), so each image of a batch gets what it would get alone with the
seed set before it. The view never updates the running averages and never synchronises across
processes, so rank 0 may generate alone under torchrun. In eval mode (``eval_mode`` true) it is
BatchNorm with the running averages and no dropout, where batching changes nothing anyway.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from files.images import resize as resize_image

# Generation runs this many pixels at a time (16 images of 256x256): batches amortise the
# per-layer overheads, which dominate the small inner maps of a U-Net at batch 1.
EVAL_BATCH_PIXELS = 16 * 256 * 256
# From this many pixels per map on, per-image BatchNorm is one GroupNorm kernel (one group per
# channel); on the small, wide inner maps BatchNorm of one image after another is faster.
GROUP_NORM_PIXELS = 32 * 32


class PerImageBatchNorm(nn.Module):
    """A BatchNorm layer whose training mode normalises every image by its own statistics, which is
    what BatchNorm computes for that image at batch 1; eval mode uses the running averages. It
    shares the parameters and buffers of the layer it replaces and never updates them."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.register_buffer("running_mean", norm.running_mean)
        self.register_buffer("running_var", norm.running_var)
        self.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        if x.shape[0] == 1:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if x.shape[-2] * x.shape[-1] >= GROUP_NORM_PIXELS:  # each channel of each image: a group
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        images = [
            F.batch_norm(image, None, None, self.weight, self.bias, True, 0.0, self.eps)
            for image in x.split(1)
        ]
        return torch.cat(images)


class OneImageDropout(nn.Dropout):
    """Dropout that draws the mask of one image, as F.dropout does at batch 1 (the same random
    numbers from the same generator state), and applies it to every image of the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.shape[0] == 1:
            return F.dropout(x, self.p, True)
        if x.is_cuda:  # CUDA's F.dropout is the fused native_dropout: its mask, drawn for one image
            _, keep = torch.native_dropout(x[:1], self.p, True)
            return x * keep * (1.0 / (1.0 - self.p))
        noise = torch.empty_like(x[:1]).bernoulli_(1 - self.p)  # ATen's CPU dropout, step by step
        noise.div_(1 - self.p)
        return x * noise


def per_image_view(G: nn.Module) -> nn.Module:
    """A copy of G's modules sharing G's parameters and buffers (and the speed layer's compute copies),
    with PerImageBatchNorm and OneImageDropout in place of BatchNorm and Dropout (see above)."""
    shared = {id(t): t for t in itertools.chain(G.parameters(), G.buffers())}
    view = copy.deepcopy(G, shared)
    _replace_for_per_image(view)
    return view


def _replace_for_per_image(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm layers too
            setattr(module, name, PerImageBatchNorm(child))
        elif type(child) is nn.Dropout:
            setattr(module, name, OneImageDropout(child.p).train(child.training))
        else:
            _replace_for_per_image(child)


@torch.no_grad()
def _generate(
    view: nn.Module, real_A: torch.Tensor, seed: int, amp: contextlib.AbstractContextManager | None
):
    """view(real_A) of any size: padded at the bottom and right to the generator's size multiple by
    repeating the border, generated with dropout seeded by `seed`, cropped back. The caller's RNG
    streams are left as they were."""
    h, w = real_A.shape[-2:]
    multiple = view.size_multiple
    pad_h, pad_w = -h % multiple, -w % multiple
    padded = F.pad(real_A, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else real_A
    kind = real_A.device.type  # the accelerator's RNG is forked too: dropout draws from it there
    devices = [real_A.device] if kind in ("cuda", "mps") else []
    with (
        torch.random.fork_rng(devices=devices, device_type=kind if devices else "cuda"),
        amp or contextlib.nullcontext(),
    ):
        torch.manual_seed(seed)
        fake_B = view(padded).float()  # (N, out_channels, H + pad_h, W + pad_w)
    return fake_B[..., :h, :w]


def translate(
    G: nn.Module,
    real_A: torch.Tensor,
    eval_mode: bool,
    seed: int,
    amp: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """fake_B (N, out_channels, H, W) for real_A (N, C, H, W) in [-1, 1] of any size, each image as
    if alone, without changing G (its mode, its running averages) or the caller's RNG streams.

    eval_mode false is the paper's choice: batch statistics and dropout at test time too."""
    return _generate(per_image_view(G).train(not eval_mode), real_A, seed, amp)


def translate_pairs(
    G: nn.Module,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    eval_mode: bool,
    seed: int,
    amp: contextlib.AbstractContextManager | None,
    device: torch.device,
    batch_pixels: int = EVAL_BATCH_PIXELS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(real_A, fake_B, real_B) per (real_A, real_B) pair of (C, H, W) images, fake_B on the CPU,
    each as translate() gives it alone; consecutive images of one size are generated together,
    up to batch_pixels at a time (validation and predict.py --split)."""
    view = per_image_view(G).train(not eval_mode)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        real_A = torch.stack([a for a, _ in pending]).to(device)  # (N, C, H, W)
        fake_B = _generate(view, real_A, seed, amp).cpu()
        done = [(a, f, b) for (a, b), f in zip(pending, fake_B)]
        pending.clear()
        return done

    for real_A, real_B in pairs:
        full = (len(pending) + 1) * real_A[0].numel() > batch_pixels
        if pending and (real_A.shape != pending[0][0].shape or full):
            yield from flush()
        pending.append((real_A, real_B))
    if pending:
        yield from flush()


def translate_image(
    G: nn.Module,
    image: torch.Tensor,
    eval_mode: bool,
    seed: int,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None = None,
    resize_to: int | None = None,
) -> torch.Tensor:
    """fake_B (C, H, W) in [-1, 1] for one uint8 (C, H, W) picture, at the picture's size: padded
    to the generator's multiple, or with resize_to resized to that square size and back."""
    height, width = image.shape[-2:]
    if resize_to:
        image = resize_image(image, resize_to, resize_to)
    real_A = image.float().div(127.5).sub(1.0)[None].to(device)  # (1, C, H', W') in [-1, 1]
    fake_B = translate(G, real_A, eval_mode, seed, amp)[0].cpu()
    if resize_to:
        fake_B = resize_image(fake_B, height, width).clamp(-1, 1)
    return fake_B


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


def export_copy(G: nn.Module, eval_mode: bool) -> nn.Module:
    """A deterministic copy of G for export: dropout off, and BatchNorm with running averages
    (eval_mode true) or with the batch's own statistics (eval_mode false, the paper's choice)."""
    G = copy.deepcopy(G).eval()
    if not eval_mode:
        for module in G.modules():
            for name, child in module.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, name, BatchStatsNorm(child))
    return G
