"""Orthonormal 2-D Haar wavelet transform (DWT) and its exact inverse (IWT).

PRO-Face S eq. (6)-(8), (12)-(13) and IMN eq. (2): an image ``B×C×H×W`` becomes
``B×4C×H/2×W/2`` sub-bands, grouped by band: ``[LL(C), HL(C), LH(C), HH(C)]``.
The transform is orthonormal (each band is a sum of four pixels divided by 2), so
it preserves the L2 norm and its inverse is its transpose. Neither function writes
to its input (FrEIA's in-place reverse is the fault designed out here).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ShapeError


def _check(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ShapeError(f"{name} must be B×C×H×W, got shape {tuple(x.shape)}")


def dwt(x: Tensor) -> Tensor:
    """Haar analysis.

    Shape:
        x: ``B×C×H×W`` with H and W even.
        returns: ``B×4C×H/2×W/2`` as ``[LL, HL, LH, HH]``, each C channels.
    """
    _check(x, "dwt input")
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ShapeError(f"dwt needs even height and width, got {h}×{w}")
    a = x[..., 0::2, 0::2]
    b = x[..., 1::2, 0::2]
    c = x[..., 0::2, 1::2]
    d = x[..., 1::2, 1::2]
    ll = (a + b + c + d) * 0.5
    hl = (-a - b + c + d) * 0.5
    lh = (-a + b - c + d) * 0.5
    hh = (a - b - c + d) * 0.5
    return torch.cat((ll, hl, lh, hh), dim=1)


def iwt(z: Tensor) -> Tensor:
    """Haar synthesis, the exact inverse of :func:`dwt`.

    Shape:
        z: ``B×4C×h×w``.
        returns: ``B×C×2h×2w``.
    """
    _check(z, "iwt input")
    if z.shape[1] % 4:
        raise ShapeError(f"iwt needs a channel count divisible by 4, got {z.shape[1]}")
    ll, hl, lh, hh = torch.chunk(z, 4, dim=1)
    a = (ll - hl - lh + hh) * 0.5
    b = (ll - hl + lh - hh) * 0.5
    c = (ll + hl - lh - hh) * 0.5
    d = (ll + hl + lh + hh) * 0.5
    bsz, ch, h, w = ll.shape
    # [row parity][column parity] -> interleave into 2h×2w without writing in place
    t = torch.stack((a, c, b, d), dim=2).reshape(bsz, ch, 2, 2, h, w)
    return t.permute(0, 1, 4, 2, 5, 3).reshape(bsz, ch, 2 * h, 2 * w)


def low_band(z: Tensor) -> Tensor:
    """The LL sub-band of a :func:`dwt` output (IMN eq. (11), ``H(·)_LL``)."""
    return torch.chunk(z, 4, dim=1)[0]
