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
Nothing here is about speed or evaluation: speed.accelerate() makes a built network fast, and
evaluation/generate.py generates with it (any image size, each image of a batch as if alone).
"""

from __future__ import annotations

import torch
from torch import nn

from layers import norm_layer


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

        self.down = nn.ModuleList([nn.Conv2d(in_channels, width[0], 4, 2, 1, bias=bias)])
        for i in range(1, num_downs):
            innermost = i == num_downs - 1  # the 1x1 bottleneck has no norm
            layers = [nn.LeakyReLU(0.2), nn.Conv2d(width[i - 1], width[i], 4, 2, 1, bias=bias)]
            self.down.append(nn.Sequential(*layers, *([] if innermost else [norm_layer(norm, width[i])])))

        # Decoder block j maps to the width of encoder level num_downs-2-j; from the second block
        # on, its input is the previous block's output concatenated with the matching skip.
        self.up = nn.ModuleList()
        for j in range(num_downs - 1):
            in_width = width[-1] if j == 0 else 2 * width[num_downs - 1 - j]
            out_width = width[num_downs - 2 - j]
            layers = [
                nn.ReLU(),
                nn.ConvTranspose2d(in_width, out_width, 4, 2, 1, bias=bias),
                norm_layer(norm, out_width),
            ]
            if 1 <= j <= num_downs - 5 and dropout > 0:  # the 8*ngf blocks just above the bottleneck
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        self.final = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(2 * width[0], out_channels, 4, 2, 1), nn.Tanh()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.down:
            x = down(x)  # (N, width[i], H / 2**(i+1), W / 2**(i+1))
            skips.append(x)
        # x: the (N, 8 ngf, H / 2**num_downs, W / 2**num_downs) bottleneck
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = torch.cat([skip, up(x)], dim=1)  # doubles size; channels: skip + decoder output
        return self.final(x)  # (N, out_channels, H, W)
