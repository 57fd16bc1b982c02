"""Run a local image-to-image function on large images tile by tile, exactly.

The hiding network is fully convolutional with a finite receptive field (``HidingNet.receptive_radius``
pixels). Cutting each tile with a halo at least that wide and keeping only the tile's centre gives
the same result as one pass over the whole image (up to float rounding), at a bounded memory cost.
All cut positions are even so the Haar blocks of every tile line up with the whole image's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ShapeError


def _even(v: int) -> int:
    return v + (v % 2)


def tiled_apply(fn: Callable[..., Tensor], inputs: list[Tensor], *, tile: int, halo: int) -> Tensor:
    """``fn(*inputs)`` computed over ``tile``×``tile`` pieces with ``halo`` pixels of context.

    Shape:
        inputs: tensors ``B×C_i×H×W`` sharing H and W (even).
        fn: maps pieces ``B×C_i×h×w`` to ``B×C×h×w``.
        returns: ``B×C×H×W``.
    """
    if not inputs:
        raise ShapeError("tiled_apply needs at least one input")
    h, w = inputs[0].shape[-2:]
    if any(t.shape[-2:] != (h, w) for t in inputs):
        raise ShapeError("all tiled inputs must share height and width")
    tile, halo = _even(max(2, int(tile))), _even(max(0, int(halo)))
    if h <= tile and w <= tile:
        return fn(*inputs)
    out: Tensor | None = None
    for y0 in range(0, h, tile):
        y1 = min(h, y0 + tile)
        ya, yb = max(0, y0 - halo), min(h, y1 + halo)
        for x0 in range(0, w, tile):
            x1 = min(w, x0 + tile)
            xa, xb = max(0, x0 - halo), min(w, x1 + halo)
            piece = fn(*[t[..., ya:yb, xa:xb] for t in inputs])
            if out is None:
                out = piece.new_empty((*piece.shape[:2], h, w))
            out[..., y0:y1, x0:x1] = piece[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    assert out is not None
    return out


def no_grad_tiled(fn: Callable[..., Tensor], inputs: list[Tensor], *, tile: int, halo: int) -> Tensor:
    with torch.inference_mode():
        return tiled_apply(fn, inputs, tile=tile, halo=halo)
