"""Keyed wavelet scramble of the original face, applied before hiding (format version 2).

Why: the hiding network is public. Fed a secret map that no password gives (all zeros), version 1
networks gave the face back recognisably (``faceveil attack``, keyless part A) — the key only
*conditioned* the network, and a network can learn to ignore its condition. PRO-Face S (§IV-A)
and IMN assume the network cannot be inverted without the key; nothing forces that.

The fix puts a keyed step outside anything learned. Before hiding, the original crop ``x`` becomes

    x' = 0.5 + W⁻¹( s ⊙ W(x − 0.5) )

where ``W`` is an orthonormal multi-level Haar transform (run down to a coarse band of at most
8×8 per channel, whatever the crop size) and ``s`` is one secret ±1 per coefficient, streamed from
the password-derived key like the secret map (:meth:`faceveil.keys.MasterKey.scramble_signs`). The
network hides ``x'``; recovery unscrambles its output with the same ``s`` (the step is its own
inverse: ``s ⊙ s = 1`` and ``W`` is orthonormal, so errors keep their size, MSE for MSE).

Without ``s``, even a perfect inversion of the network yields ``x'``: every wavelet coefficient of
the face with a coin-flip sign. What survives is each coefficient's magnitude and, at most, an
8×8 thumbnail up to sign — no more than the blur and pixelate veils already show in the clear.
``docs/THREAT_MODEL.md`` states this residual; ``faceveil attack`` measures it.

Odd sides: a level pairs neighbouring samples ``(a, b) -> ((a+b)/√2, (a−b)/√2)``; an odd last
sample passes to the coarse band unchanged. That keeps ``W`` orthonormal for any size, so any
even crop works. Coefficients are stored in place (Mallat layout), so ``s`` has the crop's shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ShapeError

COARSE_SIDE = 8  # stop once the coarse band is at most this many coefficients on each side
_R = 1.0 / math.sqrt(2.0)


def levels_for(h: int, w: int) -> list[tuple[int, int]]:
    """The coarse-band sizes ``(h, w)`` each level starts from, finest first."""
    out = []
    while max(h, w) > COARSE_SIDE and min(h, w) >= 2:
        out.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return out


def _split(v: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    dim %= v.dim()
    n = v.shape[dim]
    m = n // 2
    a = v.narrow(dim, 0, 2 * m).unflatten(dim, (m, 2))
    a0, a1 = a.select(dim + 1, 0), a.select(dim + 1, 1)
    lo, hi = (a0 + a1) * _R, (a0 - a1) * _R
    if n % 2:
        lo = torch.cat((lo, v.narrow(dim, n - 1, 1)), dim)
    return lo, hi


def _merge(lo: Tensor, hi: Tensor, dim: int) -> Tensor:
    dim %= lo.dim()
    m = hi.shape[dim]
    odd = lo.shape[dim] > m
    lo_p = lo.narrow(dim, 0, m)
    a0, a1 = (lo_p + hi) * _R, (lo_p - hi) * _R
    out = torch.stack((a0, a1), dim + 1).flatten(dim, dim + 1)
    if odd:
        out = torch.cat((out, lo.narrow(dim, m, 1)), dim)
    return out


def forward(x: Tensor) -> Tensor:
    """Multi-level orthonormal Haar of ``B×C×H×W``, coefficients in place (Mallat layout)."""
    c = x.clone()
    for h, w in levels_for(*x.shape[-2:]):
        region = c[..., :h, :w]
        lo_w, hi_w = _split(region, -1)
        ll, lh = _split(lo_w, -2)
        hl, hh = _split(hi_w, -2)
        ch, cw = ll.shape[-2], ll.shape[-1]
        c[..., :ch, :cw] = ll
        c[..., ch:h, :cw] = lh
        c[..., :ch, cw:w] = hl
        c[..., ch:h, cw:w] = hh
    return c


def inverse(c: Tensor) -> Tensor:
    """Exact inverse of :func:`forward`."""
    x = c.clone()
    for h, w in reversed(levels_for(*c.shape[-2:])):
        ch, cw = (h + 1) // 2, (w + 1) // 2
        ll, lh = x[..., :ch, :cw], x[..., ch:h, :cw]
        hl, hh = x[..., :ch, cw:w], x[..., ch:h, cw:w]
        lo_w = _merge(ll, lh, -2)
        hi_w = _merge(hl, hh, -2)
        x[..., :h, :w] = _merge(lo_w, hi_w, -1)
    return x


def scramble(x: Tensor, signs: Tensor) -> Tensor:
    """``0.5 + W⁻¹(s ⊙ W(x − 0.5))``; its own inverse, so it also unscrambles.

    Shape:
        x: ``B×C×H×W`` (any H, W); signs: ``B×C×H×W`` or ``1×C×H×W`` of ±1.
    """
    if signs.dim() != 4 or signs.shape[1:] != x.shape[1:] or signs.shape[0] not in (1, x.shape[0]):
        raise ShapeError(f"scramble signs must be B×{x.shape[1]}×{x.shape[-2]}×{x.shape[-1]}, "
                         f"got {tuple(signs.shape)}")
    return inverse(forward(x - 0.5) * signs.to(x.dtype)) + 0.5
