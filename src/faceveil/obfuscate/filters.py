"""The three filter veils of PRO-Face S §V-A-2: Gaussian blur, pixelate, median blur.

Test settings at 112×112 (training ranges in brackets): blur kernel 21, σ 8 [6-10];
pixelate block 9 [5-13]; median kernel 15 [8-22]. All scale with the crop size.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VeilError
from .registry import Veil, composite, gaussian_kernel1d, odd, register, scale

MEDIAN_WORK_KERNEL = 15  # larger median kernels are computed at a reduced resolution (see median)


def _region(p: dict) -> str:
    return str(p.get("region", "ellipse"))


def _pad_reflect(x: Tensor, ph: int, pw: int) -> Tensor:
    """Reflect padding that also works when the pad exceeds the image (repeat reflections)."""
    while ph > 0 or pw > 0:
        sh = min(ph, x.shape[-2] - 1)
        sw = min(pw, x.shape[-1] - 1)
        x = F.pad(x, (sw, sw, sh, sh), mode="reflect")
        ph -= sh
        pw -= sw
        if sh == 0 and sw == 0:  # 1-pixel image: nothing to reflect
            x = F.pad(x, (pw, pw, ph, ph), mode="replicate")
            break
    return x


def gaussian_blur(x: Tensor, sigma: float, kernel: int) -> Tensor:
    """Separable Gaussian blur, reflect-padded. Shape: ``B×C×H×W`` -> same."""
    kernel = int(kernel)
    if kernel < 1 or kernel % 2 == 0:
        raise VeilError(f"blur kernel must be a positive odd integer, got {kernel}")
    k = gaussian_kernel1d(float(sigma), kernel, x.dtype).to(x.device)
    c = x.shape[1]
    r = kernel // 2
    xp = _pad_reflect(x, r, r)
    xp = F.conv2d(xp, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(xp, k.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)


def _blur(x: Tensor, p: dict) -> Tensor:
    return composite(x, gaussian_blur(x, p["sigma"], p["kernel"]), _region(p))


def _blur_defaults(size: int) -> dict:
    s = scale(size)
    return {"sigma": round(8.0 * s, 3), "kernel": odd(21 * s), "region": "ellipse"}


def _blur_sample(rng: random.Random, size: int) -> dict:
    s = scale(size)
    return {"sigma": round(rng.uniform(6.0, 10.0) * s, 3), "kernel": odd(21 * s),
            "region": rng.choice(("ellipse", "ellipse", "square"))}


def pixelate(x: Tensor, block: int) -> Tensor:
    """Mosaic of ``block``×``block`` cells anchored at the centre of the crop; edge cells average
    only the pixels they hold. Shape: ``B×C×H×W`` -> same."""
    block = int(block)
    if block < 1:
        raise VeilError(f"pixelate block must be ≥ 1, got {block}")
    h, w = x.shape[-2:]
    # pad so that the cell grid is centred; padded pixels carry zero weight
    ph0 = (block - (h % block)) // 2 if h % block else 0
    pw0 = (block - (w % block)) // 2 if w % block else 0
    hp = math.ceil((h + ph0) / block) * block
    wp = math.ceil((w + pw0) / block) * block
    pad = (pw0, wp - w - pw0, ph0, hp - h - ph0)
    ones = torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device)
    s = F.avg_pool2d(F.pad(x, pad), block)
    n = F.avg_pool2d(F.pad(ones, pad), block)
    cells = s / n
    up = cells.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return up[..., ph0:ph0 + h, pw0:pw0 + w]


def _pixelate(x: Tensor, p: dict) -> Tensor:
    return composite(x, pixelate(x, p["block"]), _region(p))


def _pixelate_defaults(size: int) -> dict:
    return {"block": max(2, int(round(9 * scale(size)))), "region": "ellipse"}


def _pixelate_sample(rng: random.Random, size: int) -> dict:
    return {"block": max(2, int(round(rng.randint(5, 13) * scale(size)))),
            "region": rng.choice(("ellipse", "ellipse", "square"))}


def median_filter(x: Tensor, kernel: int) -> Tensor:
    """Median over a ``kernel``×``kernel`` window (lower median for even kernels), reflect-padded.

    Kernels larger than 15 are computed at a resolution reduced by ``kernel / 15`` (area
    downscale, median with kernel 15, bilinear upscale): the same look, a bounded cost for faces
    of any size. Shape: ``B×C×H×W`` -> same.
    """
    kernel = int(kernel)
    if kernel < 1:
        raise VeilError(f"median kernel must be ≥ 1, got {kernel}")
    h, w = x.shape[-2:]
    if kernel > MEDIAN_WORK_KERNEL:
        f = kernel / MEDIAN_WORK_KERNEL
        hs, ws = max(1, round(h / f)), max(1, round(w / f))
        small = F.interpolate(x, size=(hs, ws), mode="area")
        med = median_filter(small, MEDIAN_WORK_KERNEL)
        return F.interpolate(med, size=(h, w), mode="bilinear", align_corners=False)
    lo = (kernel - 1) // 2
    hi = kernel // 2
    xp = _pad_reflect(x, max(lo, hi), max(lo, hi))
    r = max(lo, hi)
    xp = xp[..., r - lo:xp.shape[-2] - (r - hi), r - lo:xp.shape[-1] - (r - hi)]
    b, c = x.shape[:2]
    rows = []
    step = max(1, 2_000_000 // max(1, b * c * w * kernel * kernel))  # bound the unfold memory
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        band = xp[..., y0:y1 + kernel - 1, :]
        patches = band.unfold(2, kernel, 1).unfold(3, kernel, 1)  # B,C,rows,W,k,k
        rows.append(patches.reshape(*patches.shape[:4], -1).median(dim=-1).values)
    return torch.cat(rows, dim=2)


def _median(x: Tensor, p: dict) -> Tensor:
    return composite(x, median_filter(x, p["kernel"]), _region(p))


def _median_defaults(size: int) -> dict:
    return {"kernel": max(2, int(round(15 * scale(size)))), "region": "ellipse"}


def _median_sample(rng: random.Random, size: int) -> dict:
    return {"kernel": max(2, int(round(rng.randint(8, 22) * scale(size)))),
            "region": rng.choice(("ellipse", "ellipse", "square"))}


register(Veil("blur", _blur, _blur_defaults, _blur_sample,
              "Gaussian blur (PRO-Face S test setting: kernel 21, sigma 8 at 112 px; scaled)",
              {"sigma": "Gaussian sigma in pixels", "kernel": "odd kernel size in pixels",
               "region": "ellipse (default) or square"}))
register(Veil("pixelate", _pixelate, _pixelate_defaults, _pixelate_sample,
              "mosaic (PRO-Face S test setting: 9 px cells at 112 px; scaled)",
              {"block": "cell size in pixels", "region": "ellipse (default) or square"}))
register(Veil("median", _median, _median_defaults, _median_sample,
              "median blur (PRO-Face S test setting: kernel 15 at 112 px; scaled)",
              {"kernel": "window size in pixels", "region": "ellipse (default) or square"}))
