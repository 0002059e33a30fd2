"""The Pix2Pix discriminator: a conditional PatchGAN (Isola et al. 2017, section 3.2.2).

Instead of one real/fake verdict per image, it gives one logit per overlapping patch: with three
strided layers (C64-C128-C256, 4x4 stride 2) and two stride-1 layers (C512, then 1 channel),
each output sees a 70x70 pixel patch of its input. It judges local texture and leaves the low
frequencies to the L1 term. It is conditional: it sees the input image and the real or generated
output concatenated along the channels, so it judges whether the output fits the input.

For 256x256 images: (N, 3 + 3, 256, 256) -> (N, 1, 30, 30) logits.
"""

from __future__ import annotations

import torch
from torch import nn

from layers import norm_layer


class PatchDiscriminator(nn.Module):
    """PatchGAN on concat(input, image) with `n_layers` strided layers (3 gives 70x70 patches)."""

    def __init__(self, in_channels: int = 6, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        bias = norm != "batch"  # BatchNorm's shift makes a conv bias redundant
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = ndf
        for n in range(1, n_layers + 1):
            # The last of these keeps the size (stride 1); it widens the receptive field to 70 px.
            stride = 2 if n < n_layers else 1
            next_width = ndf * min(2**n, 8)
            layers += [
                nn.Conv2d(width, next_width, 4, stride, 1, bias=bias),
                norm_layer(norm, next_width),
                nn.LeakyReLU(0.2),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))  # one logit per patch, no sigmoid (BCEWithLogits)
        self.model = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """condition (N, C_in, H, W) and image (N, C_out, H, W) -> patch logits (N, 1, H', W')."""
        return self.model(torch.cat([condition, image], dim=1))
