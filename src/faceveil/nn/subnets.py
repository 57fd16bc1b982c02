"""Dense sub-networks ω, φ, ρ, η of the coupling blocks (PRO-Face S §IV-B, eq. (9); HiNet/DenseNet style)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DenseBlock(nn.Module):
    """Five 3×3 convolutions, each fed the input and every earlier feature map (DenseNet).

    PRO-Face S eq. (9): ``R^{(C_in)×h×w} -> R^{C_out×h×w}``; with ``C_in = 12 + 4`` (sub-bands ‖ K) and
    ``C_out = 12`` one block has 89,420 parameters. The last convolution starts at zero, so a fresh
    coupling block is the identity map; LeakyReLU (slope 0.01) after the first four convolutions.

    Shape:
        x: ``B×C_in×h×w`` -> ``B×C_out×h×w``.
    """

    def __init__(self, in_channels: int, out_channels: int, growth: int = 32, depth: int = 5,
                 negative_slope: float = 0.01) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("a dense block needs at least two convolutions")
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels + i * growth, growth, 3, padding=1) for i in range(depth - 1)
        )
        self.out = nn.Conv2d(in_channels + (depth - 1) * growth, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(negative_slope)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, dim=1))))
        return self.out(torch.cat(feats, dim=1))
