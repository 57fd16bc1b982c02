"""The keyed affine coupling block (PRO-Face S "SACB", eq. (10)-(11); inverse eq. (14)-(15)).

Two branches of Haar sub-bands: ``X`` (the original face, the secret) and ``Y`` (the veil, the cover).

Forward (protection)::

    Y' = Y ⊙ exp(a(ω(X ‖ K))) + φ(X ‖ K)          (10)
    X' = X ⊙ exp(a(ρ(Y' ‖ K))) + η(Y' ‖ K)         (11)

Reverse (recovery)::

    X = (X' − η(Y' ‖ K)) ⊙ exp(−a(ρ(Y' ‖ K)))      (14)
    Y = (Y' − φ(X ‖ K)) ⊙ exp(−a(ω(X ‖ K)))        (15)

With ``with_cover_scale=False`` there is no ω and the first step is additive, ``Y' = Y + φ(X)``: the
HiNet block that IMN uses (IMN eq. (3)-(4), (7); three sub-nets). With ``cond_channels=0`` nothing is
concatenated (IMN has no key).

``a(s) = clamp · (2·sigmoid(s) − 1)``: a sigmoid times a constant, centred so that a zero-initialised
sub-net gives ``exp(a) = 1`` (HiNet/DeepMIH's ``e(s)``), bounding every scale to ``[e^−clamp, e^clamp]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ShapeError
from .subnets import DenseBlock


class KeyedAffineCoupling(nn.Module):
    """One invertible coupling block, conditioned on a secret map.

    Shape:
        xy: a pair ``(X, Y)`` of ``B×C×h×w`` tensors (C = 12 for RGB sub-bands).
        cond: ``B×cond_channels×h×w`` (the secret map K = DWT(k), 4 channels) or None when
        ``cond_channels == 0``.
        returns: the pair ``(X', Y')`` (forward) or ``(X, Y)`` (``rev=True``), new tensors.
    """

    def __init__(self, channels: int = 12, cond_channels: int = 4, *, with_cover_scale: bool = True,
                 clamp: float = 2.0, growth: int = 32, depth: int = 5) -> None:
        super().__init__()
        self.channels = channels
        self.cond_channels = cond_channels
        self.clamp = float(clamp)
        cin = channels + cond_channels
        make = lambda: DenseBlock(cin, channels, growth, depth)  # noqa: E731
        self.omega = make() if with_cover_scale else None
        self.phi = make()
        self.rho = make()
        self.eta = make()

    def a(self, s: Tensor) -> Tensor:
        """The bounded log-scale: ``clamp · (2σ(s) − 1)``."""
        return self.clamp * (2.0 * torch.sigmoid(s) - 1.0)

    def _in(self, t: Tensor, cond: Tensor | None) -> Tensor:
        if self.cond_channels == 0:
            return t
        if cond is None:
            raise ShapeError("this coupling block is keyed: pass the secret map as cond")
        if cond.shape[1] != self.cond_channels or cond.shape[-2:] != t.shape[-2:]:
            raise ShapeError(
                f"secret map must be B×{self.cond_channels}×{t.shape[-2]}×{t.shape[-1]}, "
                f"got {tuple(cond.shape)}"
            )
        if cond.shape[0] != t.shape[0]:
            cond = cond.expand(t.shape[0], -1, -1, -1)
        return torch.cat((t, cond.to(t.dtype)), dim=1)

    def forward(self, xy: tuple[Tensor, Tensor], cond: Tensor | None = None, *,
                rev: bool = False) -> tuple[Tensor, Tensor]:
        x, y = xy
        if x.shape[1] != self.channels or y.shape[1] != self.channels:
            raise ShapeError(f"both branches need {self.channels} channels, got "
                             f"{x.shape[1]} and {y.shape[1]}")
        if not rev:
            xk = self._in(x, cond)
            y = y + self.phi(xk) if self.omega is None else \
                y * torch.exp(self.a(self.omega(xk))) + self.phi(xk)
            yk = self._in(y, cond)
            x = x * torch.exp(self.a(self.rho(yk))) + self.eta(yk)
            return x, y
        yk = self._in(y, cond)
        x = (x - self.eta(yk)) * torch.exp(-self.a(self.rho(yk)))
        xk = self._in(x, cond)
        y = y - self.phi(xk) if self.omega is None else \
            (y - self.phi(xk)) * torch.exp(-self.a(self.omega(xk)))
        return x, y
