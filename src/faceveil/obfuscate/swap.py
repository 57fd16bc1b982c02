"""The ``swap`` veil: the face replaced by a synthetic donor face that follows the target's pose and
expression, colour-matched to the target's skin and lighting and blended into it (PRO-Face S's
"face swap" pre-obfuscation, §V-A-2, which used SimSwap/FaceShifter with real donor identities).

**Donors are not real people.** Swapping in another real person's face would expose that person,
so every donor shipped in ``faceveil/obfuscate/donors/`` is the equal-weight average of ≥ 40
different, densely aligned training faces (UTKFace) of one demographic group, built by
``tools/make_donors.py`` and described with its provenance in ``donors/donors.json``; each PNG's
sha256 is checked when the donors are loaded. UTKFace is for non-commercial research only, and the
donors, derived from it, carry that restriction (like the shipped weights).

Per face, in crop pixels (pixel centres at integers, as the detector's landmarks):

1. **Warp.** The crop is mapped onto the donor by a least-squares similarity from the target's
   five landmarks to the donor's, plus a thin-plate spline through what the similarity leaves
   (``follow`` = 1: the donor's eyes, nose tip and mouth corners land on the target's, so the
   swapped face keeps the target's pose, head turn and mouth width; 0: similarity only). The donor
   is sampled bilinearly at every crop pixel.
2. **Mask.** An egg-shaped inner-face mask drawn in the donor's landmark frame (brows to the top of
   the chin, cheek to cheek; ``extent`` scales it) is warped with the donor, so it follows the
   face; its outer ``feather`` of the radius is a smooth ramp.
3. **Colour and light** (CIE Lab). The donor's skin median and spread (inter-quartile range) are
   moved to the target's, both sampled on cheeks, nose, forehead and chin. Then the difference
   that remains where *both* are skin-coloured (so not eyes, brows, mouth, glasses, beard, hair or
   background) is filled in over the whole mask by normalised convolution at 0.25 inter-ocular
   distances: the target's lighting and skin tone continue across the face and the seam, while
   its eyes, brows and mouth do not come through.
4. **Grain.** An average face lacks the fine texture (noise, pores, JPEG) of a photo; as much
   deterministic grain as the target has more than the donor is added (seeded from the
   parameters).
5. **Blend.** ``out = α · donor + (1 − α) · target`` with α the mask, lowered in its ramp where the
   donor is not skin (an average's hair at the temples): hair, ears, background and the jaw line
   stay the target's; pixels outside the mask are the target's, bit for bit.

Parameters (fractions of the crop's width and height, so the veil does not depend on the crop
size): ``donor`` (index), ``x0, y0 … x4, y4`` (the five target landmarks in the order of
:data:`faceveil.detect.base.LANDMARK_NAMES`), ``follow``, ``extent``, ``feather``. :func:`placement`
fills the landmarks from the detector's; without landmarks the defaults are the median landmarks
of a pipeline crop (YuNet box + 15 % margin) of a frontal face, measured on the adult UTKFace
training faces. The stored parameters reproduce the veil exactly; ``strength`` does not change it
(its parameters do not scale with the crop). Cost: ~10-20 ms for a 112-px face on one core.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import random
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VeilError
from .registry import Veil, register

DONOR_FORMAT = "faceveil-donors"
DONOR_FORMAT_VERSION = 1
DONOR_DIR = "donors"
DONOR_MANIFEST = "donors.json"
#: Fewest source faces a shipped donor may average (no single person may dominate one).
MIN_DONOR_FACES = 40

#: Default landmarks, fractions of a square pipeline crop (YuNet box + 15 % margin): the median
#: YuNet landmarks of 5,851 adult UTKFace training faces cut by that rule, made left-right symmetric.
DEFAULT_LANDMARKS = ((0.333, 0.375), (0.667, 0.375), (0.5, 0.548), (0.36, 0.685), (0.64, 0.685))
LANDMARK_KEYS = tuple(f"{a}{i}" for i in range(5) for a in "xy")
#: Default size of the swapped region. The egg of extent 1 (brows to the top of the chin) left the
#: face's outline, cheeks and jaw to MobileFaceNet: 8.0 % of 200 LFW dev crops still matched their
#: originals at FMR 0.1 % (mean cosine 0.21); 1.2 gives 1.5 % (0.12), 1.3 1.0 %, 1.4 0.5 %
#: (``python tools/swap_identity.py --extent E``), but from 1.3 the average donor's hair and
#: background show as dark arcs at the rim. 1.2 is the compromise.
DEFAULT_EXTENT = 1.2
#: Thin-plate-spline smoothing (units of the inter-ocular distance squared); 0 interpolates.
TPS_SMOOTHING = 1e-3
#: Largest thin-plate correction of a landmark, in donor inter-ocular distances (a wrong
#: detection must not fold the face).
MAX_RESIDUAL = 0.35
#: Limits of the spread ratio (target / donor) of the Lab colour transfer.
STD_RATIO = (0.7, 1.4)
#: Scale, in inter-ocular distances, of the target's lighting carried onto the donor.
LIGHT_SIGMA = 0.25
#: Largest lighting correction (Lab L, then a and b).
LIGHT_LIMIT = (20.0, 10.0)


# -- donors -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Donor:
    """One synthetic donor: ``image`` ``H×W×3`` float32 RGB in [0, 1], ``landmarks`` 5×2 pixels
    (read-only arrays), ``faces`` the number of training faces averaged."""

    index: int
    name: str
    image: np.ndarray
    landmarks: np.ndarray
    faces: int


def _donor_files():
    return resources.files("faceveil.obfuscate").joinpath(DONOR_DIR)


@functools.lru_cache(maxsize=1)
def load_donors() -> tuple[Donor, ...]:
    """The shipped donors, in index order, each PNG checked against the sha256 in the manifest.

    Raises:
        VeilError: the manifest or a donor image is missing, damaged or inconsistent."""
    from PIL import Image

    folder = _donor_files()
    try:
        manifest = json.loads(folder.joinpath(DONOR_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VeilError(f"the swap veil's donor manifest cannot be read ({e}); reinstall faceveil") from None
    if not isinstance(manifest, dict) or manifest.get("format") != DONOR_FORMAT \
            or manifest.get("format_version") != DONOR_FORMAT_VERSION:
        raise VeilError("the swap veil's donor manifest has an unknown format; reinstall faceveil")
    donors = []
    for i, d in enumerate(manifest.get("donors") or []):
        try:
            data = folder.joinpath(d["file"]).read_bytes()
        except (OSError, KeyError, TypeError) as e:
            raise VeilError(f"swap donor {i} cannot be read ({e}); reinstall faceveil") from None
        if hashlib.sha256(data).hexdigest() != d.get("sha256"):
            raise VeilError(f"swap donor {d['file']} fails its sha256 check; reinstall faceveil")
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        try:
            lm = np.asarray(d["landmarks"], dtype=np.float64)
            ok = (d["index"] == i and lm.shape == (5, 2) and rgb.shape[:2] == (manifest["size"],) * 2
                  and int(d["faces"]) >= MIN_DONOR_FACES)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise VeilError(f"swap donor {d['file']} does not match its manifest entry; reinstall faceveil")
        lm.setflags(write=False)
        rgb.setflags(write=False)
        donors.append(Donor(i, str(d.get("name", i)), rgb, lm, int(d["faces"])))
    if not donors:
        raise VeilError("the swap veil has no donors; reinstall faceveil")
    return tuple(donors)


def n_donors() -> int:
    return len(load_donors())


# -- geometry ---------------------------------------------------------------------------------------

def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991, no reflection) with ``dst ≈ M @ [src; 1]``; 2×3."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    sc = (sig * d).sum() / max((s0 ** 2).sum() / len(src), 1e-12)
    m = np.zeros((2, 3))
    m[:, :2] = sc * r
    m[:, 2] = mu_d - sc * r @ mu_s
    return m


def _tps_kernel(r2):
    """The thin-plate radial basis ``U = r² log r²`` of squared distances (numpy or torch)."""
    if isinstance(r2, Tensor):
        return r2 * torch.log(r2.clamp_min(1e-20))
    return r2 * np.log(np.maximum(r2, 1e-20))


@dataclass(frozen=True)
class PointMap:
    """``p -> A [p; 1] + Σ_i w_i U(|q - c_i|) + B [1; q]`` with ``q = (p - mean(c)) / unit``: a
    similarity ``A`` plus a thin-plate spline through the control points ``c``. Maps ``N×2``
    points (float64)."""

    affine: np.ndarray      # 2×3
    centres: np.ndarray     # n×2 (normalised)
    weights: np.ndarray     # n×2
    tps_affine: np.ndarray  # 3×2
    origin: np.ndarray      # 2
    unit: float

    def __call__(self, p: Tensor | np.ndarray) -> Tensor:
        p = torch.as_tensor(p, dtype=torch.float64)
        a = torch.from_numpy(self.affine)
        q = (p - torch.from_numpy(self.origin)) / self.unit
        r2 = ((q[:, None, :] - torch.from_numpy(self.centres)[None]) ** 2).sum(-1)
        b = torch.from_numpy(self.tps_affine)
        return p @ a[:, :2].T + a[:, 2] + _tps_kernel(r2) @ torch.from_numpy(self.weights) + b[0] + q @ b[1:]


def fit_map(src: np.ndarray, dst: np.ndarray, follow: float = 1.0, smoothing: float = TPS_SMOOTHING) -> PointMap:
    """The map taking landmarks ``src`` onto ``dst`` (both 5×2): a least-squares similarity, plus
    ``follow`` times a thin-plate spline through what the similarity leaves over (each landmark's
    correction capped at :data:`MAX_RESIDUAL` inter-ocular distances of ``dst``)."""
    src = np.array(src, np.float64)
    dst = np.array(dst, np.float64)
    m = similarity(src, dst)
    resid = dst - (src @ m[:, :2].T + m[:, 2])
    cap = MAX_RESIDUAL * float(np.hypot(*(dst[1] - dst[0])))
    norm = np.hypot(resid[:, 0], resid[:, 1])
    resid *= (follow * np.minimum(1.0, cap / np.maximum(norm, 1e-12)))[:, None]
    unit = max(float(np.hypot(*(src[1] - src[0]))), 1e-6)
    origin = src.mean(0)
    cn = (src - origin) / unit
    n = len(src)
    k = _tps_kernel(((cn[:, None] - cn[None]) ** 2).sum(-1)) + smoothing * np.eye(n)
    pm = np.hstack([np.ones((n, 1)), cn])
    a = np.zeros((n + 3, n + 3))
    a[:n, :n], a[:n, n:], a[n:, :n] = k, pm, pm.T
    sol = np.linalg.lstsq(a, np.vstack([resid, np.zeros((3, 2))]), rcond=None)[0]
    return PointMap(m, cn, sol[:n], sol[n:], origin, unit)


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int) -> Tensor:
    """Every pixel centre of an ``h×w`` image as ``(x, y)`` rows, ``(h·w)×2`` float64 (shared:
    do not modify)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def _pixel_grid(h: int, w: int) -> Tensor:
    """A fresh copy of :func:`_grid`."""
    return _grid(h, w).clone()


def warp(img: Tensor, pmap: PointMap, h: int, w: int) -> Tensor:
    """Sample ``img`` (``B×C×Hs×Ws``) at ``pmap(p)`` for every pixel ``p`` of an ``h×w`` output
    (bilinear, zeros outside). Shape: -> ``B×C×h×w``."""
    hs, ws = img.shape[-2:]
    q = pmap(_grid(h, w))
    g = torch.stack([(2 * q[:, 0] + 1) / ws - 1, (2 * q[:, 1] + 1) / hs - 1], 1).reshape(1, h, w, 2)
    g = g.to(img.dtype).expand(img.shape[0], -1, -1, -1)
    return F.grid_sample(img, g, mode="bilinear", padding_mode="zeros", align_corners=False)


def _face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray, np.ndarray]:
    lm = np.asarray(landmarks, np.float64)
    eyes, mouth = (lm[0] + lm[1]) / 2, (lm[3] + lm[4]) / 2
    iod = max(float(np.hypot(*(lm[1] - lm[0]))), 1e-6)
    down = mouth - eyes
    span = max(float(np.hypot(*down)), 1e-6)
    vy = down / span
    vx = np.array([-vy[1], vy[0]])  # image-right for an upright face
    return eyes, down, iod, span, vx, vy


#: The swap region's shape in the face's frame: centre (eyes + c · (mouth − eyes)), half width
#: (inter-ocular distances), centre to top and centre to bottom (eye-mouth distances): from above
#: the brows to the top of the chin, cheek to cheek.
SWAP_SHAPE = (0.42, 1.02, 0.42 + 0.66, 0.58 + 0.52)


def face_mask(h: int, w: int, landmarks: np.ndarray, extent: float = 1.0, feather: float = 0.25,
              shape: tuple[float, float, float, float] = SWAP_SHAPE) -> Tensor:
    """The inner-face mask ``1×1×h×w`` (float64, in [0, 1]) of a face with ``landmarks`` (5×2
    pixels): an egg of ``shape`` (:data:`SWAP_SHAPE`) scaled by ``extent``, in the face's own frame
    (it turns with the eye-mouth axis), narrower towards the chin, 1 inside, a smoothstep ramp over
    the outer ``feather`` of its radius, exactly 0 outside."""
    eyes, down, iod, span, vx, vy = _face_frame(landmarks)
    c, hw, up, dn = shape
    centre = eyes + down * c
    half_w = hw * iod * extent
    top = up * span * extent
    bottom = dn * span * extent
    p = _grid(h, w).numpy() - centre
    u, v = p @ vx, p @ vy
    half_h = np.where(v < 0, top, bottom)
    taper = np.where(v > 0, 1.0 - 0.22 * np.clip(v / bottom, 0, 1) ** 2, 1.0)  # narrower at the chin
    r = np.sqrt((u / (half_w * taper)) ** 2 + (v / half_h) ** 2)
    m = np.clip((1.0 - r) / max(feather, 1e-3), 0, 1)
    m = m * m * (3 - 2 * m)
    return torch.from_numpy(m.reshape(1, 1, h, w))


def skin_weights(h: int, w: int, landmarks: np.ndarray) -> Tensor:
    """Where to sample skin colour on a face with ``landmarks`` (5×2 pixels): soft discs on both
    cheeks, the nose tip, the forehead and the chin. ``1×1×h×w`` in [0, 1]; the donor, warped
    onto the same landmarks, is sampled at the same places."""
    lm = np.asarray(landmarks, np.float64)
    eyes, down, iod, _, _, _ = _face_frame(lm)
    mouth = eyes + down
    out = (lm[1] - lm[0]) / iod
    spots = [((lm[0] + lm[3]) / 2 - 0.12 * iod * out, 0.2 * iod),  # image-left cheek
             ((lm[1] + lm[4]) / 2 + 0.12 * iod * out, 0.2 * iod),  # image-right cheek
             (lm[2] - 0.05 * down, 0.12 * iod),                   # nose
             (eyes - 0.62 * down, 0.22 * iod),                    # forehead
             (mouth + 0.38 * down, 0.14 * iod)]                   # chin
    p = _grid(h, w)
    total = torch.zeros(p.shape[0], dtype=torch.float64)
    for c, r in spots:
        total += torch.exp(-0.5 * ((p - torch.from_numpy(c)) ** 2).sum(1) / (r * r))
    return total.clamp(0, 1).reshape(1, 1, h, w)


@functools.lru_cache(maxsize=64)
def _donor_rgba(index: int, extent: float, feather: float) -> Tensor:
    """Donor ``index`` with its face mask as a fourth channel, ``1×4×H×W`` float64 (shared: do not
    modify)."""
    d = load_donors()[index]
    rgb = torch.from_numpy(np.array(d.image, dtype=np.float64)).permute(2, 0, 1)[None]
    return torch.cat([rgb, face_mask(*d.image.shape[:2], d.landmarks, extent, feather)], 1)


# -- colour -----------------------------------------------------------------------------------------

_RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_XYZ2RGB = torch.linalg.inv(_RGB2XYZ)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def rgb_to_lab(x: Tensor) -> Tensor:
    """sRGB in [0, 1] -> CIE Lab (D65; L in 0-100). Shape: ``B×3×H×W`` -> same."""
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB2XYZ.to(x.dtype), lin) / _WHITE.to(x.dtype)[:, None, None]
    d = 6 / 29
    f = torch.where(xyz > d ** 3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab (D65) -> sRGB clamped to [0, 1]. Shape: ``B×3×H×W`` -> same."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    d = 6 / 29
    xyz = torch.where(f > d, f ** 3, 3 * d * d * (f - 4 / 29)) * _WHITE.to(lab.dtype)[:, None, None]
    lin = torch.einsum("ij,bjhw->bihw", _XYZ2RGB.to(lab.dtype), xyz).clamp(0, 1)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, zero padding (for normalised convolution). ``sigma`` in pixels."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _weighted_quantiles(v: Tensor, wt: Tensor, qs: tuple[float, ...]) -> Tensor:
    """Weighted quantiles of every row of ``v`` (``B×C×N``) under weights ``wt`` (``N``).
    Shape: -> ``B×C×len(qs)``."""
    vs, order = v.sort(dim=-1)
    cw = wt[order].cumsum(-1)
    cw = cw / cw[..., -1:].clamp_min(1e-12)
    q = torch.tensor(qs, dtype=v.dtype).expand(*v.shape[:-1], -1).contiguous()
    idx = torch.searchsorted(cw.contiguous(), q).clamp(max=v.shape[-1] - 1)
    return vs.gather(-1, idx)


def _likeness(lab: Tensor, centre: Tensor, spread: Tensor) -> Tensor:
    """``exp(-|(lab - centre) / spread|² / 2)``. Shapes: ``B×3×H×W``, ``B×3``, ``B×3`` -> ``B×1×H×W``."""
    z = ((lab - centre[..., None, None]) / spread[..., None, None]) ** 2
    return torch.exp(-0.5 * z.sum(1, keepdim=True))


def match_colours(donor: Tensor, target: Tensor, mask: Tensor, skin: Tensor, iod: float,
                  light_sigma: float = LIGHT_SIGMA) -> tuple[Tensor, Tensor]:
    """The warped donor (``B×3×H×W`` RGB) recoloured and relit to sit in ``target`` (steps 3 of
    the module docs), and how skin-like each of its pixels is. ``mask`` and ``skin`` are
    ``1×1×H×W``; ``light_sigma`` is the scale of the carried lighting in inter-ocular distances.
    Shape: -> ``B×3×H×W``, ``B×1×H×W``."""
    b, _, h, w = donor.shape
    sel = skin.reshape(-1) > 0.05
    if int(sel.sum()) < 4:  # a face too small to sample: keep the donor's colours
        return donor, torch.ones_like(donor[:, :1])
    d_lab, t_lab = rgb_to_lab(donor), rgb_to_lab(target)
    wt = skin.reshape(-1)[sel]
    qd = _weighted_quantiles(d_lab.reshape(b, 3, -1)[..., sel], wt, (0.25, 0.5, 0.75))
    qt = _weighted_quantiles(t_lab.reshape(b, 3, -1)[..., sel], wt, (0.25, 0.5, 0.75))
    ratio = ((qt[..., 2] - qt[..., 0]) / (qd[..., 2] - qd[..., 0]).clamp_min(1e-3)).clamp(*STD_RATIO)
    lab = (d_lab - qd[..., 1, None, None]) * ratio[..., None, None] + qt[..., 1, None, None]
    # where both are skin-coloured, the difference left is the target's lighting: fill it in
    # everywhere by normalised convolution (at ~48 px; the field is smooth)
    spread = torch.stack([(qt[:, 0, 2] - qt[:, 0, 0]).clamp_min(8.0), torch.full_like(qt[:, 0, 0], 6.0),
                          torch.full_like(qt[:, 0, 0], 6.0)], 1)
    donor_skin = _likeness(lab, qt[..., 1], spread)
    known = (mask > 0.02) * _likeness(t_lab, qt[..., 1], spread) * donor_skin
    f = max(1, int(round(min(h, w) / 48)))
    sigma = max(light_sigma * iod / f, 1.0)
    small = (lambda z: F.avg_pool2d(z, f, ceil_mode=True)) if f > 1 else (lambda z: z)
    num, den = _blur(small((t_lab - lab) * known), sigma), _blur(small(known), sigma)
    corr = num / torch.maximum(den, 1e-3 * den.amax((1, 2, 3), keepdim=True)).clamp_min(1e-6)
    lim = torch.tensor([LIGHT_LIMIT[0], LIGHT_LIMIT[1], LIGHT_LIMIT[1]], dtype=corr.dtype).view(1, 3, 1, 1)
    corr = torch.maximum(torch.minimum(corr, lim), -lim)
    if f > 1:
        corr = F.interpolate(corr, size=(h, w), mode="bilinear", align_corners=False)
    return lab_to_rgb(lab + corr), donor_skin


def _luma_highpass(x: Tensor) -> Tensor:
    g = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return g - _blur(F.pad(g, (3, 3, 3, 3), mode="replicate"), 0.8)[..., 3:-3, 3:-3]


def _fine_level(x: Tensor, skin: Tensor) -> Tensor:
    """The size of the finest detail (noise, pores, JPEG) of ``x`` on the skin: the weighted
    median of ``|luma - blur(luma)|``. Shape: ``B×3×H×W`` -> ``B``."""
    sel = skin.reshape(-1) > 0.05
    if int(sel.sum()) < 4:
        return torch.zeros(x.shape[0], dtype=x.dtype)
    hp = _luma_highpass(x).abs().reshape(x.shape[0], 1, -1)[..., sel]
    return _weighted_quantiles(hp, skin.reshape(-1)[sel], (0.5,))[:, 0, 0]


def grain(h: int, w: int, seed: int) -> Tensor:
    """Deterministic grain ``1×1×h×w`` (float64), slightly blurred white noise scaled so that the
    median of its ``|luma - blur(luma)|`` is 1 (as :func:`_fine_level` measures it)."""
    n = torch.randn((1, 1, h + 4, w + 4), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    n = _blur(n, 0.6)[..., 2:-2, 2:-2]
    return n / _luma_highpass(n.expand(-1, 3, -1, -1)).abs().median().clamp_min(1e-12)


# -- the veil ---------------------------------------------------------------------------------------

def _check(p: dict) -> tuple[int, np.ndarray, float, float, float]:
    try:
        donor = p["donor"]
        lm = np.array([float(p[k]) for k in LANDMARK_KEYS], np.float64).reshape(5, 2)
        follow, extent, feather = float(p["follow"]), float(p["extent"]), float(p["feather"])
    except (KeyError, TypeError, ValueError):
        raise VeilError(f"swap takes donor, {', '.join(LANDMARK_KEYS)}, follow, extent and feather") from None
    n = n_donors()
    if isinstance(donor, bool) or not isinstance(donor, int | np.integer) or not 0 <= donor < n:
        raise VeilError(f"swap donor must be an integer 0-{n - 1}, got {donor!r}")
    if not np.isfinite(lm).all() or (lm < -1).any() or (lm > 2).any():
        raise VeilError("swap landmarks must be finite fractions of the crop within -1..2")
    if np.hypot(*(lm[1] - lm[0])) < 0.02 or np.hypot(*((lm[3] + lm[4] - lm[0] - lm[1]) / 2)) < 0.02:
        raise VeilError("swap landmarks are degenerate (the eyes, or the eyes and the mouth, coincide)")
    if not (math.isfinite(follow) and 0 <= follow <= 1):
        raise VeilError(f"swap follow must be 0-1, got {follow!r}")
    if not (math.isfinite(extent) and 0.5 <= extent <= 1.5):
        raise VeilError(f"swap extent must be 0.5-1.5, got {extent!r}")
    if not (math.isfinite(feather) and 0.02 <= feather <= 1):
        raise VeilError(f"swap feather must be 0.02-1, got {feather!r}")
    return int(donor), lm, follow, extent, feather


def _swap(x: Tensor, p: dict) -> Tensor:
    donor_i, frac, follow, extent, feather = _check(p)
    h, w = x.shape[-2:]
    donor = load_donors()[donor_i]
    key = f"{donor_i}|{','.join(repr(float(v)) for v in (*frac.reshape(-1), follow, extent, feather))}"
    return blend_face(x, _donor_rgba(donor_i, extent, feather), donor.landmarks, frac * [w, h] - 0.5, follow, key)


def blend_face(x: Tensor, donor_rgba: Tensor, donor_lm: np.ndarray, target_lm: np.ndarray, follow: float,
               key: str, *, gate: bool = True, light_sigma: float = LIGHT_SIGMA) -> Tensor:
    """Steps 1 and 3-5 of the module docs: warp ``donor_rgba`` (``1×4×H×W`` or ``B×4×H×W`` float64,
    RGB and the face mask drawn in the donor's frame) onto the face of ``x`` (``B×3×h×w``) whose
    landmarks are ``target_lm`` (5×2 crop pixels), match colour and light (at ``light_sigma``
    inter-ocular distances), add grain seeded from ``key`` (a string of the parameters alone) and
    blend; with ``gate``, what is not skin on the donor gives way in the ramp. Shared by every veil
    that puts another face in place."""
    b, _, h, w = x.shape
    warped = warp(donor_rgba, fit_map(target_lm, donor_lm, follow), h, w)
    mask = warped[:, 3:4]
    target = x.detach().double()
    skin = skin_weights(h, w, target_lm)
    iod = float(np.hypot(*(target_lm[1] - target_lm[0])))
    face, donor_skin = match_colours(warped[:, :3].expand(b, -1, -1, -1), target, mask, skin, iod, light_sigma)
    # the grain an average face lacks, seeded from the parameters alone
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
    lack = (_fine_level(target, skin) ** 2 - _fine_level(face, skin) ** 2).clamp_min(0).sqrt()
    face = (face + lack.view(-1, 1, 1, 1) * grain(h, w, seed)).clamp(0, 1)
    # in the ramp, what is not skin on the donor (an average's hair at the temples) gives way
    alpha = mask * (1 - (1 - donor_skin) * ((1 - mask) * 2).clamp(0, 1)) if gate else mask
    return (face * alpha + target * (1 - alpha)).to(x.dtype)


def _defaults(size: int) -> dict:
    p: dict = {"donor": 0}
    p.update({k: v for k, v in zip(LANDMARK_KEYS, np.array(DEFAULT_LANDMARKS).reshape(-1).tolist())})
    p.update({"follow": 1.0, "extent": DEFAULT_EXTENT, "feather": 0.25})
    return p


def _sample(rng: random.Random, size: int) -> dict:
    """Training draws: a random donor on a frontal face moved by a small random similarity
    (shift ±3 %, scale 0.9-1.1, roll ±10°)."""
    t = math.radians(rng.uniform(-10, 10))
    s = rng.uniform(0.9, 1.1)
    rot = s * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    lm = (np.array(DEFAULT_LANDMARKS) - 0.5) @ rot.T + 0.5 + [rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)]
    landmarks = {k: round(float(v), 4) for k, v in zip(LANDMARK_KEYS, lm.reshape(-1))}
    return {"donor": rng.randrange(n_donors()), **landmarks}


def placement(landmarks: np.ndarray, crop_w: int, crop_h: int) -> dict:
    """The ten landmark parameters from five landmarks in crop pixels (pixel centres at integers)."""
    frac = (np.asarray(landmarks, dtype=np.float64).reshape(5, 2) + 0.5) / [crop_w, crop_h]
    return {k: round(float(v), 5) for k, v in zip(LANDMARK_KEYS, frac.reshape(-1))}


_POINTS = ("right eye", "left eye", "nose tip", "right mouth corner", "left mouth corner")


def _identity(rng: random.Random) -> dict:
    return {"donor": rng.randrange(n_donors())}


register(Veil("swap", _swap, _defaults, _sample,
              "the face replaced by a synthetic donor (an average of >= 40 training faces, nobody real), "
              "following the landmarks, colour-matched and blended",
              {"donor": "donor face number (random per face unless given or seeded)",
               **{k: f"{_POINTS[i // 2]} {k[0]}, fraction of the crop" for i, k in enumerate(LANDMARK_KEYS)},
               "follow": "0-1: how closely the donor follows the landmarks beyond a similarity (1: exactly)",
               "extent": "0.5-1.5: size of the swapped inner-face region",
               "feather": "0.02-1: width of the blend ramp, fraction of the region's radius"},
              place=placement, identity=_identity))
