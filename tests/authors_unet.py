"""A stand-in for the authors' U-Net generator (pytorch-CycleGAN-and-pix2pix's nested blocks: the
same module nesting, so the same state-dict keys), written from the description of their
architecture, for the tests of loading their latest_net_G.pth files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def official_norm(kind: str, channels: int) -> nn.Module:
    """Their norms: BatchNorm with scale and shift; instance norm without either, no statistics."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class Level(nn.Module):
    """One level of their U-Net: down, the inner levels, up, and the level's input concatenated
    in front of its output (except at the outermost level, which ends in Tanh)."""

    def __init__(self, outer, inner, norm, sub=None, outermost=False, in_channels=None, dropout=False):
        super().__init__()
        bias = norm == "instance"  # a conv followed by BatchNorm needs no bias
        down = nn.Conv2d(in_channels or outer, inner, 4, 2, 1, bias=bias)
        self.outermost = outermost
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), nn.Tanh()]
        elif sub is None:  # the bottleneck: no norm after its conv
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, official_norm(norm, outer)]
        else:
            up = nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, official_norm(norm, inner), sub]
            layers += [nn.ReLU(True), up, official_norm(norm, outer)] + ([nn.Dropout(0.5)] if dropout else [])
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As theirs: the in-place LeakyReLU rewrites x before it is concatenated.
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class OfficialUNet(nn.Module):
    def __init__(self, in_channels, out_channels, num_downs, ngf, norm="batch", dropout=True):
        super().__init__()
        level = Level(8 * ngf, 8 * ngf, norm)
        for _ in range(num_downs - 5):
            level = Level(8 * ngf, 8 * ngf, norm, level, dropout=dropout)
        for outer in (4 * ngf, 2 * ngf, ngf):
            level = Level(outer, 2 * outer, norm, level)
        self.model = Level(out_channels, ngf, norm, level, outermost=True, in_channels=in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def random_official(num_downs: int, norm: str, ngf: int = 8, channels=(3, 3), seed: int = 0) -> OfficialUNet:
    """Their network with random weights, BatchNorm scales and running statistics included (so
    that every tensor, in every mode, matters)."""
    torch.manual_seed(seed)
    net = OfficialUNet(channels[0], channels[1], num_downs, ngf, norm)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.2 if name.endswith(("running_mean", "bias")) else 0.05)
    return net


def save_official(net: nn.Module, path: Path, legacy: bool = False) -> Path:
    weights = net.state_dict()
    if legacy:  # as their files from before PyTorch 0.4: old serialisation, no BatchNorm counters
        weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    torch.save(weights, path, _use_new_zipfile_serialization=not legacy)
    return path
