"""The ``cartoon`` veil: a cartoon face sticker over the inner face (PRO-Face S's "masking" veil,
§V-A-2, which pastes emoji-like cartoon faces).

The stickers are our own, drawn procedurally (no third-party artwork): a round face in one of
:data:`COLOURS`, with one of :data:`EYES` and one of :data:`MOUTHS`, with or without cheeks —
``len(COLOURS) * len(EYES) * len(MOUTHS) * 2`` designs, numbered by ``sticker``. A sticker is drawn
at 4× supersampling with Pillow and cached per design and pixel size.

Parameters (all relative to the square crop, so they do not depend on its size):
``sticker`` (design number), ``cx``, ``cy`` (centre, fraction of the crop), ``scale`` (diameter,
fraction of the crop) and ``angle`` (degrees, counter-clockwise in the image). The defaults centre
the sticker on a frontal face as the pipeline crops it (box + 15 % margin each side, so the inner
face spans ~0.75 of the crop). :func:`placement` derives ``cx``, ``cy``, ``scale`` and ``angle`` from
the five detector landmarks, so a tilted or off-centre face gets a tilted, off-centre sticker.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VeilError
from .registry import Veil, register

COLOURS = (  # (face fill, outline)
    ((255, 204, 77), (176, 118, 20)),    # classic yellow
    ((255, 160, 90), (168, 84, 30)),     # orange
    ((250, 170, 190), (170, 80, 110)),   # pink
    ((140, 200, 250), (40, 100, 170)),   # blue
    ((150, 220, 140), (50, 130, 60)),    # green
    ((200, 170, 240), (110, 70, 170)),   # lilac
)
EYES = ("dots", "ovals", "happy", "shades")
MOUTHS = ("smile", "grin", "o", "flat", "tongue")
N_STICKERS = len(COLOURS) * len(EYES) * len(MOUTHS) * 2
SUPERSAMPLE = 4


def design(sticker: int) -> tuple[int, str, str, bool]:
    """Sticker number -> (colour index, eyes, mouth, cheeks)."""
    if not 0 <= sticker < N_STICKERS:
        raise VeilError(f"cartoon sticker must be 0-{N_STICKERS - 1}, got {sticker}")
    s = sticker
    colour, s = s % len(COLOURS), s // len(COLOURS)
    eyes, s = EYES[s % len(EYES)], s // len(EYES)
    mouth, s = MOUTHS[s % len(MOUTHS)], s // len(MOUTHS)
    return colour, eyes, mouth, bool(s % 2)


@functools.lru_cache(maxsize=64)
def render(sticker: int, px: int) -> np.ndarray:
    """The sticker as ``px×px×4`` float32 RGBA in [0, 1] (premultiplied alpha is not used)."""
    from PIL import Image, ImageDraw

    px = max(int(px), 4)
    colour, eyes, mouth, cheeks = design(sticker)
    fill, line = COLOURS[colour]
    n = px * SUPERSAMPLE
    im = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    w = max(2, round(n * 0.035))  # outline width
    dark = (45, 35, 30, 255)

    def box(cx, cy, rx, ry):
        return [n * (cx - rx), n * (cy - ry), n * (cx + rx), n * (cy + ry)]

    d.ellipse(box(0.5, 0.5, 0.48, 0.48), fill=(*fill, 255), outline=(*line, 255), width=w)
    if cheeks:
        blush = (240, 110, 110, 150)
        d.ellipse(box(0.25, 0.62, 0.08, 0.05), fill=blush)
        d.ellipse(box(0.75, 0.62, 0.08, 0.05), fill=blush)
    for ex in (0.34, 0.66):
        if eyes == "dots":
            d.ellipse(box(ex, 0.40, 0.05, 0.05), fill=dark)
        elif eyes == "ovals":
            d.ellipse(box(ex, 0.38, 0.065, 0.10), fill=(255, 255, 255, 255), outline=dark, width=w // 2 + 1)
            d.ellipse(box(ex + 0.01, 0.41, 0.04, 0.06), fill=dark)
            d.ellipse(box(ex + 0.025, 0.385, 0.013, 0.016), fill=(255, 255, 255, 255))
        elif eyes == "happy":
            d.arc(box(ex, 0.43, 0.08, 0.07), 200, 340, fill=dark, width=w)
    if eyes == "shades":
        d.rounded_rectangle(box(0.5, 0.39, 0.36, 0.075), radius=n * 0.05, fill=(25, 25, 35, 255))
        d.line([n * 0.14, n * 0.37, n * 0.06, n * 0.33], fill=(25, 25, 35, 255), width=w)
        d.line([n * 0.86, n * 0.37, n * 0.94, n * 0.33], fill=(25, 25, 35, 255), width=w)
    if mouth == "smile":
        d.arc(box(0.5, 0.56, 0.22, 0.18), 20, 160, fill=dark, width=w)
    elif mouth == "grin":
        d.chord(box(0.5, 0.60, 0.22, 0.17), 0, 180, fill=dark)
        d.chord(box(0.5, 0.60, 0.17, 0.10), 0, 180, fill=(255, 255, 255, 255))
    elif mouth == "o":
        d.ellipse(box(0.5, 0.70, 0.07, 0.08), fill=dark)
    elif mouth == "flat":
        d.line([n * 0.36, n * 0.71, n * 0.64, n * 0.71], fill=dark, width=w)
    elif mouth == "tongue":
        d.arc(box(0.5, 0.58, 0.20, 0.15), 20, 160, fill=dark, width=w)
        d.chord(box(0.56, 0.74, 0.07, 0.07), 0, 180, fill=(230, 80, 100, 255), outline=dark, width=w // 2 + 1)
    im = im.resize((px, px), Image.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def _check(p: dict) -> tuple[int, float, float, float, float]:
    try:
        sticker = int(p["sticker"])
        cx, cy, sc, ang = (float(p[k]) for k in ("cx", "cy", "scale", "angle"))
    except (KeyError, TypeError, ValueError):
        raise VeilError("cartoon takes sticker, cx, cy, scale and angle") from None
    if sticker != p["sticker"]:
        raise VeilError(f"cartoon sticker must be an integer, got {p['sticker']!r}")
    design(sticker)
    if not all(math.isfinite(v) for v in (cx, cy, sc, ang)):
        raise VeilError("cartoon cx, cy, scale and angle must be finite numbers")
    if not (0.05 <= sc <= 3.0 and -1.0 <= cx <= 2.0 and -1.0 <= cy <= 2.0):
        raise VeilError(f"cartoon scale must be 0.05-3 and cx, cy within -1..2, got scale={sc}, cx={cx}, cy={cy}")
    return sticker, cx, cy, sc, ang


def _cartoon(x: Tensor, p: dict) -> Tensor:
    sticker, cx, cy, sc, ang = _check(p)
    b, _, h, w = x.shape
    size = min(h, w)
    px = max(8, min(2048, round(sc * size)))
    rgba = torch.from_numpy(render(sticker, px)).permute(2, 0, 1)[None].to(x.dtype)  # 1×4×px×px
    # sample the sticker at every crop pixel: crop -> sticker coordinates (rotate about its centre)
    yy = (torch.arange(h, dtype=torch.float64) + 0.5) - cy * h
    xx = (torch.arange(w, dtype=torch.float64) + 0.5) - cx * w
    gy, gx = torch.meshgrid(yy, xx, indexing="ij")
    t = math.radians(ang)
    c, s = math.cos(t), math.sin(t)
    # a counter-clockwise rotation of the sticker in the image (y grows downwards)
    u = c * gx - s * gy
    v = s * gx + c * gy
    half = sc * size / 2
    grid = torch.stack([u / half, v / half], dim=-1)[None].to(x.dtype)
    warped = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb, alpha = warped[:, :3], warped[:, 3:4]
    return (x * (1 - alpha) + rgb * alpha).expand(b, -1, -1, -1).clone() if b > 1 else x * (1 - alpha) + rgb * alpha


def _defaults(size: int) -> dict:
    return {"sticker": 0, "cx": 0.5, "cy": 0.52, "scale": 0.74, "angle": 0.0}


def _sample(rng: random.Random, size: int) -> dict:
    return {"sticker": rng.randrange(N_STICKERS), "cx": 0.5 + rng.uniform(-0.04, 0.04),
            "cy": 0.52 + rng.uniform(-0.04, 0.04), "scale": rng.uniform(0.66, 0.86),
            "angle": rng.uniform(-15.0, 15.0)}


def placement(landmarks: np.ndarray, crop_w: int, crop_h: int) -> dict:
    """``cx``, ``cy``, ``scale``, ``angle`` from five landmarks given in crop pixels (order of
    :data:`faceveil.detect.base.LANDMARK_NAMES`): centred between the eyes' and the mouth's
    midpoints, sized 2.6× the inter-ocular distance (at least the eye-mouth span × 2.2),
    rotated with the eye line."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes = (lm[0] + lm[1]) / 2
    mouth = (lm[3] + lm[4]) / 2
    iod = float(np.hypot(*(lm[1] - lm[0])))
    span = float(np.hypot(*(mouth - eyes)))
    centre = eyes * 0.55 + mouth * 0.45
    size = min(crop_w, crop_h)
    diameter = max(2.6 * iod, 2.2 * span)
    dx, dy = lm[1] - lm[0]
    angle = -math.degrees(math.atan2(dy, dx)) if iod > 0 else 0.0
    return {"cx": round(float(centre[0] / crop_w), 4), "cy": round(float(centre[1] / crop_h), 4),
            "scale": round(min(max(diameter / size, 0.2), 1.5), 4), "angle": round(angle, 2)}


register(Veil("cartoon", _cartoon, _defaults, _sample,
              f"a cartoon face sticker over the inner face ({N_STICKERS} procedural designs), placed from the landmarks",
              {"sticker": f"design number 0-{N_STICKERS - 1} (random per face unless given or seeded)",
               "cx": "centre x, fraction of the crop", "cy": "centre y, fraction of the crop",
               "scale": "diameter, fraction of the crop", "angle": "rotation in degrees, counter-clockwise"},
              place=placement, identity=lambda rng: {"sticker": rng.randrange(N_STICKERS)}))
