"""The ``synthetic`` veil (the pose-consistency paper, ``pose-consistent-anonymity.txt``) and the
``mask`` veil (IMN's Mask-net, ``imn.txt`` §2.1): the face replaced by a face of nobody.

``synthetic`` follows the paper's pipeline with faceveil's own generator (:mod:`.facegen`):

1. **Pose.** The detector's five landmarks are the pose condition (the paper draws a binary pose
   image from dlib's 68; dlib's 68-point model is non-commercial). The generated face is made on
   the generator's template and thin-plate-warped so that its landmarks land on the target's: the
   paper's landmark L2 loss, met by construction.
2. **Face removed except the forehead.** The replaced region runs from just above the brows to
   below the chin and cheek to cheek (:data:`SYNTHETIC_SHAPE`); the forehead, hair, ears and
   background stay, and the forehead and cheeks give the skin tone and lighting the new face takes
   on (CIE Lab transfer, as the ``swap`` veil does).
3. **A random identity.** The latent is drawn from the ``identity`` seed (a fresh one per face and
   run, unless ``--seed`` is given), truncated by ``psi``, and kept only if it points ``away`` from the original's
   own latent (:func:`.facegen.draw_away`, the paper's identity loss ``1 − cos(R(X), R(G(Z)))`` in
   the generator's space, met by rejection); decoded and enhanced, then fused onto the original
   background.

``mask`` is IMN's Mask-net: a swap onto a synthetic identity (the ``swap`` veil's donors, none a
real person) followed by a face-enhancement step (GPEN in IMN; here the generator's enhancer) over
the whole swapped region, so the "Mask" face is natural and sharp and its seams are restored away.

Parameters are fractions of the crop (landmarks) and plain numbers; the stored ones reproduce the
veil exactly. Neither veil depends on ``strength`` (nothing in it scales with the crop).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VeilError
from . import facegen as G
from . import swap as S
from .registry import Veil, register

#: The replaced region in the face's frame (see :data:`.swap.SWAP_SHAPE`): centre half-way from the
#: eyes to the mouth, just above the brows to below the chin, cheek to cheek over the jaw.
SYNTHETIC_SHAPE = (0.45, 1.1, 0.45 + 0.62, 0.55 + 0.6)
#: Scale of the target's lighting carried onto the generated face, in inter-ocular distances:
#: coarser than ``swap``'s, because a smooth generated face would otherwise take on the original's
#: own shading of eyes, nose and mouth.
SYNTHETIC_LIGHT_SIGMA = 0.6
#: The generator models the template face over this extent of the region (a margin for ``extent``).
REGION_EXTENT = 1.25
#: The ``mask`` veil's swap region (extent of :data:`.swap.SWAP_SHAPE`): larger than ``swap``'s
#: default, since the enhancement hides the seam that a larger region would show.
MASK_EXTENT = 1.3


def region_mask(h: int, w: int, landmarks: np.ndarray, extent: float = 1.0, feather: float = 0.25) -> Tensor:
    """The ``synthetic`` veil's region ``1×1×h×w`` (float64) for a face with ``landmarks``."""
    return S.face_mask(h, w, landmarks, extent, feather, SYNTHETIC_SHAPE)


def _num(p: dict, key: str, lo: float, hi: float) -> float:
    v = p.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise VeilError(f"{key} must be a number from {lo:g} to {hi:g}, got {v!r}")
    return float(v)


def _landmarks(p: dict) -> np.ndarray:
    try:
        lm = np.array([float(p[k]) for k in S.LANDMARK_KEYS], np.float64).reshape(5, 2)
    except (KeyError, TypeError, ValueError):
        raise VeilError(f"the landmarks {', '.join(S.LANDMARK_KEYS)} must be numbers") from None
    if not np.isfinite(lm).all() or (lm < -1).any() or (lm > 2).any():
        raise VeilError("landmarks must be finite fractions of the crop within -1..2")
    if np.hypot(*(lm[1] - lm[0])) < 0.02 or np.hypot(*((lm[3] + lm[4] - lm[0] - lm[1]) / 2)) < 0.02:
        raise VeilError("landmarks are degenerate (the eyes, or the eyes and the mouth, coincide)")
    return lm


def _aligned(x: Tensor, target_lm: np.ndarray, size: int) -> Tensor:
    """``x`` (``B×3×h×w``) resampled onto the generator's template canvas of ``size`` pixels."""
    model = G.load_face_model()
    scale = size / G.CANVAS
    return S.warp(x.double(), S.fit_map(model.template * scale + (scale - 1) / 2, target_lm), size, size)


# -- synthetic --------------------------------------------------------------------------------------

def _synthetic(x: Tensor, p: dict) -> Tensor:
    seed = p.get("identity")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2 ** 63:
        raise VeilError(f"synthetic identity must be an integer 0 to 2^63 - 1, got {seed!r}")
    psi, away = _num(p, "psi", 0.0, 1.5), _num(p, "away", -1.0, 1.0)
    comps = p.get("components")
    if isinstance(comps, bool) or not isinstance(comps, int | np.integer) or not 1 <= comps <= G.load_face_model().dims:
        raise VeilError(f"synthetic components must be an integer 1-{G.load_face_model().dims}, got {comps!r}")
    follow, extent, feather = _num(p, "follow", 0, 1), _num(p, "extent", 0.5, 1.25), _num(p, "feather", 0.02, 1)
    frac = _landmarks(p)
    h, w = x.shape[-2:]
    target_lm = frac * [w, h] - 0.5
    model = G.load_face_model()
    with torch.no_grad():
        z_orig = model.project(F.interpolate(_aligned(x, target_lm, G.CANVAS).float(),
                                             size=(G.LATENT_SIDE, G.LATENT_SIDE), mode="area"))
        z = G.draw_away(model, int(seed), psi, int(comps), z_orig, away)
        face = model.render(z).double()
    region = region_mask(G.CANVAS, G.CANVAS, model.template, extent, feather).expand(x.shape[0], -1, -1, -1)
    key = f"synthetic|{int(seed)}|{','.join(repr(float(v)) for v in (*frac.reshape(-1), psi, away, comps, follow, extent, feather))}"
    return S.blend_face(x, torch.cat([face, region], 1), model.template, target_lm, follow, key, gate=False,
                        light_sigma=SYNTHETIC_LIGHT_SIGMA)


def _synthetic_defaults(size: int) -> dict:
    p: dict = {"identity": 0, "psi": 0.9, "away": 0.0, "components": 32}
    p.update({k: v for k, v in zip(S.LANDMARK_KEYS, np.array(S.DEFAULT_LANDMARKS).reshape(-1).tolist())})
    p.update({"follow": 1.0, "extent": 1.0, "feather": 0.15})
    return p


def _jittered_landmarks(rng: random.Random) -> dict:
    """Training draws: the default landmarks moved by a small random similarity (as ``swap``)."""
    t = math.radians(rng.uniform(-10, 10))
    s = rng.uniform(0.9, 1.1)
    rot = s * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    lm = (np.array(S.DEFAULT_LANDMARKS) - 0.5) @ rot.T + 0.5 + [rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)]
    return {k: round(float(v), 4) for k, v in zip(S.LANDMARK_KEYS, lm.reshape(-1))}


def _synthetic_sample(rng: random.Random, size: int) -> dict:
    return {"identity": rng.randrange(2 ** 31), "psi": round(rng.uniform(0.6, 1.0), 3), **_jittered_landmarks(rng)}


def _synthetic_identity(rng: random.Random) -> dict:
    return {"identity": rng.randrange(2 ** 63)}


_LM_HELP = {k: f"{S._POINTS[i // 2]} {k[0]}, fraction of the crop" for i, k in enumerate(S.LANDMARK_KEYS)}

register(Veil("synthetic", _synthetic, _synthetic_defaults, _synthetic_sample,
              "a generated face of nobody in the same pose (pose-consistency paper): everything but the "
              "forehead replaced, skin tone and light kept, a new random identity every run",
              {"identity": "identity seed of the generated face (random per face unless given or seeded)",
               "psi": "0-1.5: truncation of the random identity (lower: closer to the average face)",
               "away": "-1 to 1: the largest cosine allowed between the new identity's latent and the original's "
                       "(identities are drawn until one is at most this close)",
               "components": "how many of the generator's principal directions the random identity uses",
               **_LM_HELP,
               "follow": "0-1: how closely the face follows the landmarks beyond a similarity (1: exactly)",
               "extent": "0.5-1.25: size of the replaced region",
               "feather": "0.02-1: width of the blend ramp, fraction of the region's radius"},
              place=S.placement, identity=_synthetic_identity))


# -- mask (IMN) -------------------------------------------------------------------------------------

def _edge_taper(side: int, width: float = 10.0) -> Tensor:
    """``1×1×side×side`` (float64): 1 inside, a smoothstep to 0 over ``width`` pixels at the canvas
    border, so a region reaching past the canvas fades out instead of ending in a straight seam."""
    t = torch.arange(side, dtype=torch.float64) + 0.5
    d = torch.minimum(t, side - t)
    r = (d / width).clamp(0, 1)
    r = r * r * (3 - 2 * r)
    return (r[:, None] * r[None, :])[None, None]


def _mask(x: Tensor, p: dict) -> Tensor:
    swapped = S._swap(x, p)
    frac = _landmarks(p)
    h, w = x.shape[-2:]
    target_lm = frac * [w, h] - 0.5
    extent, feather = float(p["extent"]), float(p["feather"])
    model = G.load_face_model()
    side = G.CANVAS
    with torch.no_grad():
        restored = model.enhance(_aligned(swapped, target_lm, side).float()).double()
    # back onto the crop, inside the swapped region (the restoration covers its seam)
    region = (S.face_mask(side, side, model.template, extent * 1.05, feather) * _edge_taper(side)).expand(
        x.shape[0], -1, -1, -1)
    back = S.warp(torch.cat([restored, region], 1), S.fit_map(target_lm, model.template, 1.0), h, w)
    alpha = back[:, 3:4]
    return (back[:, :3] * alpha + swapped.double() * (1 - alpha)).to(x.dtype)


def _mask_defaults(size: int) -> dict:
    return {**S._defaults(size), "extent": MASK_EXTENT}


def _mask_sample(rng: random.Random, size: int) -> dict:
    return {**S._sample(rng, size), "extent": MASK_EXTENT}


register(Veil("mask", _mask, _mask_defaults, _mask_sample,
              "IMN's Mask face: a swap onto a synthetic donor (nobody real) restored by a face "
              "enhancer, so it looks natural and sharp",
              {"donor": "donor face number (random per face unless given or seeded)", **_LM_HELP,
               "follow": "0-1: how closely the donor follows the landmarks beyond a similarity (1: exactly)",
               "extent": "0.5-1.5: size of the swapped region",
               "feather": "0.02-1: width of the blend ramp, fraction of the region's radius"},
              place=S.placement, identity=S._identity))
