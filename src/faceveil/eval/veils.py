"""``faceveil eval-veils``: every veil measured the way the pose-consistency paper measures
anonymizers (Tables 1-2 of ``papers/pose-consistent-anonymity.txt``), on LFW face crops and on whole
LFW photos. No hiding network is involved: this is about the veils themselves (what a viewer, a
face detector and a face recogniser see in the published picture).

Variants (:func:`variants`): the unveiled ``original`` (the reference row), every registered veil at
its default (PRO-Face S test settings, scaled to the crop, exactly as ``faceveil anonymize`` uses
it; ``cartoon`` drawn per face from a seeded generator and placed from the face's landmarks, as the
pipeline does) and the paper's four baselines as *parameterised variants* of our ``pixelate`` and
``blur`` veils (not new veils):

* ``pixelate-15`` / ``pixelate-25``: the paper's "Pixelization (15×15)/(25×25)" — 15 and 25 px cells
  on its 256×256 CelebA-HQ frames (larger number = coarser, fewer faces detected: its Table 1);
* ``blur-15`` / ``blur-25``: its "Blur (15×15)/(25×25)", a Gaussian filter of *kernel size* 15 and
  25 on the same frames. The paper gives no σ; we take OpenCV's default for a kernel ``k`` (what
  ``cv2.GaussianBlur(img, (k, k), 0)`` uses), ``σ = 0.3·((k − 1)/2 − 1) + 0.8``: 2.6 and 4.1 px. A
  large σ would contradict the paper's own numbers (92-99.9 % detection, ID distance 0.31).

The paper's frames are CelebA-HQ at 256 px, whose crop (Karras et al. 2018) makes the inter-ocular
distance a quarter of the side (64 px); our LFW dev crops (centre 150 px of the 250 px photo, resized
to 128) have it at ~35/128 ≈ 0.27 of the side. The framing matches, so the paper's pixel sizes
scale with ``crop side / 256``: at 128 px, cells of 8 and 13 px, blur kernel 9 (σ 1.3) and 13
(σ 2.05). On whole photos they scale with the side of the pipeline's crop around the photo's main
face (:func:`faceveil.detect.face_crop`); other faces in the photo get the same parameters.
All veils are composited in the pipeline's soft ellipse inscribed in the face crop
(``region="ellipse"``): the paper veils "the face region".

Metrics, per face, then averaged (``N`` = ``--limit`` crops and ``--limit`` photos, seeded sample):

* **detection rate** by two different detectors: ours (YuNet, :mod:`faceveil.detect`, the pipeline's
  threshold 0.6) and RetinaFace-MobileNet0.25 (:mod:`.retinaface`, threshold 0.6). The *reference*
  face is the detector's own most central face on the original; a veiled face counts as detected
  when the same detector returns a box with IoU ≥ 0.3 with it. Faces the detector misses on the
  original are left out of its rate (their number is reported), which makes ``original`` 100 % by
  construction, as in the paper's Table 1.
* **pose consistency**: landmark error between the original and the veiled face, YuNet's five
  points, mean point distance divided by the original's inter-ocular distance (NME), over faces
  detected in both (RetinaFace's NME is in the JSON).
* **identity leakage** (:mod:`.identity`, oracle alignment with the original's landmarks): the
  MobileFaceNet match rate of veiled vs original at the FMR 0.1 % threshold calibrated on the LFW
  dev pairs, and the mean cosine *distance* ``1 − cos`` (the paper's ID_DIS, which uses ArcFace:
  0 = same, 2 = opposite).
* **image quality**: SSIM (:mod:`.metrics` settings) of the veiled crop to the original (the
  paper's SSIM analogue: a face-centred frame), of the whole photo, and *outside the face region*:
  the SSIM map (valid 11×11 windows) averaged over window centres outside every veiled face's
  ellipse, on whole photos through :func:`faceveil.api.anonymize` (and on the crops' corners). A
  veil that changes nothing outside its region scores 1.
* **Fréchet distance** between real and veiled crops on an offline feature: the 128-d
  MobileFaceNet output (aligned face, no mirror, L2-normalised). FID's Inception weights are not
  available offline, so the values are *not* comparable with the paper's FID — only their order is.
  For scale, the distance between the sampled crops and as many *other* real LFW crops is reported
  beside them: what a veil that swapped in other real faces would score. A light veil can score
  below it, since it keeps each face's own features.
* **time per face**: the veil alone on crops (ms, batches of 16) and the whole
  :func:`~faceveil.api.anonymize` call on photos (detection included), on this machine's CPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import logging
import math
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import __version__
from ..detect.base import Face
from ..detect.geometry import DEFAULT_MARGIN, box_iou, face_crop
from ..errors import FaceveilError, ShapeError, UsageError
from ..obfuscate import VEILS, apply_veil, get_veil
from ..obfuscate.registry import ellipse_mask, odd
from . import metrics as M
from .harness import git_commit, list_faces, machine_info

log = logging.getLogger(__name__)

SCHEMA = "faceveil-veils/1"
DEFAULT_FACES = Path(".cache/data/lfw_dev_128")
DEFAULT_PHOTOS = Path(".cache/data/lfw_dev_fullframe_250")
DEFAULT_LIMIT = 200
#: Side of the paper's frames (CelebA-HQ at 256×256); its pixel sizes scale with crop side / this.
PAPER_SIZE = 256
#: IoU with the reference face above which a detection on the veiled image is the same face.
MATCH_IOU = 0.3
YUNET_THRESHOLD = 0.6  # the pipeline's default
BATCH = 16


def opencv_sigma(kernel: int) -> float:
    """σ that OpenCV derives for a Gaussian kernel of size ``kernel`` when given σ = 0."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


@dataclass(frozen=True)
class VeilVariant:
    """A row of the tables: a registered veil at its defaults, or at parameters given in pixels of
    the paper's 256-px frames (``paper_params``, scaled to each crop), or the unveiled original
    (``veil=None``). ``paper_row`` names the paper's row it corresponds to."""

    label: str
    veil: str | None
    paper_params: dict | None = None
    paper_row: str | None = None

    def params_for(self, size: int) -> dict | None:
        """Concrete parameters for a crop whose shorter side is ``size`` (None: the veil's defaults)."""
        if self.paper_params is None:
            return None
        f = size / PAPER_SIZE
        out: dict = {}
        for k, v in self.paper_params.items():
            if k == "block":
                out[k] = max(1, math.floor(v * f + 0.5))
            elif k == "kernel":
                out[k] = odd(v * f)
            elif k == "sigma":
                out[k] = round(v * f, 3)
            else:
                out[k] = v
        return out


ORIGINAL = VeilVariant("original", None, paper_row="Original")
BASELINES = (
    VeilVariant("pixelate-15", "pixelate", {"block": 15, "region": "ellipse"}, "Pixelization(15x15)"),
    VeilVariant("pixelate-25", "pixelate", {"block": 25, "region": "ellipse"}, "Pixelization(25x25)"),
    VeilVariant("blur-15", "blur", {"kernel": 15, "sigma": round(opencv_sigma(15), 3), "region": "ellipse"},
                "Blur(15x15)"),
    VeilVariant("blur-25", "blur", {"kernel": 25, "sigma": round(opencv_sigma(25), 3), "region": "ellipse"},
                "Blur(25x25)"),
)


def variants(labels: Sequence[str] | None = None) -> list[VeilVariant]:
    """The original, every registered veil at its defaults and the paper's baselines (or the ones
    named in ``labels``, in that order)."""
    every = [ORIGINAL, *(VeilVariant(n, n) for n in sorted(VEILS)), *BASELINES]
    if not labels:
        return every
    by_label = {v.label: v for v in every}
    unknown = [lb for lb in labels if lb not in by_label]
    if unknown:
        raise UsageError(f"unknown veil variant(s) {', '.join(unknown)}; choose from: {', '.join(by_label)}")
    return [by_label[lb] for lb in dict.fromkeys(labels)]


# -- metric functions -------------------------------------------------------------------------------

def central_face(faces: Sequence[Face], w: int, h: int) -> Face | None:
    """The face nearest the image centre (ties: the higher score): the photo's or crop's subject."""
    if not faces:
        return None
    return min(faces, key=lambda f: ((f.center[0] - w / 2) ** 2 + (f.center[1] - h / 2) ** 2) / (w * h)
               - 0.01 * f.score)


def matched_face(reference: Face, faces: Sequence[Face], min_iou: float = MATCH_IOU) -> Face | None:
    """The face in ``faces`` overlapping ``reference`` most, if its IoU is at least ``min_iou``."""
    best, best_iou = None, min_iou
    for f in faces:
        iou = box_iou(reference.box, f.box)
        if iou >= best_iou:
            best, best_iou = f, iou
    return best


def landmark_nme(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean distance between corresponding landmarks divided by the reference's inter-ocular
    distance (points 0 and 1). Shape: two ``5×2`` arrays -> float."""
    a = np.asarray(reference, np.float64).reshape(-1, 2)
    b = np.asarray(other, np.float64).reshape(-1, 2)
    if a.shape != b.shape or len(a) < 2:
        raise ShapeError(f"landmark_nme takes two N×2 arrays of the same shape, got {a.shape}, {b.shape}")
    iod = float(np.hypot(*(a[1] - a[0])))
    if not iod > 0:
        raise ShapeError("the reference landmarks have zero inter-ocular distance")
    return float(np.linalg.norm(a - b, axis=1).mean() / iod)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Dowson & Landau 1982; the
    formula of FID): ``|μa − μb|² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)``, covariances with ddof 1,
    matrix square roots by symmetric eigendecomposition (exact for PSD matrices, also rank-deficient
    ones). Shape: ``N×D, M×D -> float``; 0 for a set with itself."""
    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, np.float64)
    y = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ShapeError(f"frechet_distance takes two N×D feature sets (N ≥ 2), got {x.shape}, {y.shape}")
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    r1 = _sqrtm_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((r1 @ s2 @ r1 + (r1 @ s2 @ r1).T) / 2), 0, None)).sum()
    d = float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)
    return max(d, 0.0)


def ssim_map(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel SSIM (the :mod:`.metrics` settings: Gaussian 11×11, σ 1.5, valid region), averaged
    over the RGB channels. Shape: ``B×3×H×W`` pair -> ``B×(H−10)×(W−10)``."""
    a, b = M._check_pair(a, b)
    if min(a.shape[-2:]) < M.SSIM_WINDOW:
        raise ShapeError(f"SSIM needs images of at least {M.SSIM_WINDOW}×{M.SSIM_WINDOW}")
    with torch.no_grad():
        s, _ = M.ssim_terms(a, b, M.gaussian_window(dtype=a.dtype))
    return s.mean(dim=1)


def masked_ssim(a: Tensor, b: Tensor, keep: np.ndarray | Tensor, *, smap: Tensor | None = None) -> Tensor:
    """Mean of :func:`ssim_map` over the window centres where ``keep`` (``H×W`` bool) is true;
    NaN for an image with no such centre (``smap``: the map, if already computed). Shape: -> ``B``."""
    smap = ssim_map(a, b) if smap is None else smap
    r = M.SSIM_WINDOW // 2
    k = torch.as_tensor(np.asarray(keep, bool))
    if k.shape != a.shape[-2:]:
        raise ShapeError(f"mask {tuple(k.shape)} does not match the images {tuple(a.shape[-2:])}")
    k = k[r:k.shape[0] - r, r:k.shape[1] - r].to(smap.dtype)
    n = k.sum()
    if n == 0:
        return torch.full((smap.shape[0],), math.nan, dtype=torch.float64)
    return (smap * k).sum(dim=(-2, -1)) / n


def face_region(h: int, w: int, crops: Sequence) -> np.ndarray:
    """``H×W`` bool: inside the veil's ellipse (any non-zero weight) of any of the face ``crops``
    (:class:`~faceveil.detect.CropBox`)."""
    out = np.zeros((h, w), bool)
    for c in crops:
        m = ellipse_mask(c.height, c.width)[0, 0].numpy() > 0
        out[c.y0:c.y1, c.x0:c.x1] |= m
    return out


def rate(flags: Sequence[bool | None]) -> dict:
    """``{"rate", "detected", "n"}`` over the faces that have a reference (``None`` = left out)."""
    counted = [f for f in flags if f is not None]
    return {"rate": (sum(counted) / len(counted)) if counted else None, "detected": int(sum(counted)),
            "n": len(counted), "left_out": len(flags) - len(counted)}


def _mean(vals: Sequence[float]) -> float | None:
    v = [x for x in vals if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _median(vals: Sequence[float]) -> float | None:
    v = [x for x in vals if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


class _Tally:
    """Per-face values of one variant, for one detector or metric family."""

    def __init__(self) -> None:
        self.flags: dict[str, list[bool | None]] = {}
        self.nme: dict[str, list[float]] = {}
        self.values: dict[str, list[float]] = {}

    def detection(self, det: str, ref: Face | None, faces: Sequence[Face]) -> None:
        if ref is None:
            self.flags.setdefault(det, []).append(None)
            return
        hit = matched_face(ref, faces)
        self.flags.setdefault(det, []).append(hit is not None)
        if hit is not None and hit.landmarks is not None and ref.landmarks is not None:
            self.nme.setdefault(det, []).append(landmark_nme(ref.landmarks, hit.landmarks))

    def add(self, name: str, vals) -> None:
        v = vals.tolist() if isinstance(vals, Tensor) else list(vals)
        self.values.setdefault(name, []).extend(float(x) for x in v)

    def summary(self) -> dict:
        out: dict = {"detection": {d: rate(f) for d, f in self.flags.items()},
                     "landmarks": {d: {"nme_mean": _mean(v), "nme_median": _median(v), "n": len(v)}
                                   for d, v in self.nme.items()}}
        for name, v in self.values.items():
            out[name] = _mean(v)
        return out


# -- detectors --------------------------------------------------------------------------------------

@dataclass
class Detectors:
    """The detectors of the run: YuNet always, RetinaFace unless switched off."""

    yunet: object
    retinaface: object | None

    @classmethod
    def load(cls, retinaface: bool = True, retinaface_weights: str | Path | None = None) -> Detectors:
        from ..detect import get_detector

        rf = None
        if retinaface:
            from .retinaface import RetinaFaceDetector

            rf = RetinaFaceDetector(retinaface_weights)
        return cls(get_detector("yunet", threshold=YUNET_THRESHOLD), rf)

    def names(self) -> list[str]:
        return ["yunet"] + (["retinaface"] if self.retinaface is not None else [])

    def run(self, rgbs: list[np.ndarray]) -> dict[str, list[list[Face]]]:
        out = {"yunet": [self.yunet.detect(r) for r in rgbs]}
        if self.retinaface is not None:
            out["retinaface"] = self.retinaface.detect_batch(rgbs) if len({r.shape for r in rgbs}) == 1 \
                else [self.retinaface.detect(r) for r in rgbs]
        return out


# -- crops ------------------------------------------------------------------------------------------

def _to_tensor(rgbs: list[np.ndarray]) -> Tensor:
    # contiguous: grouped convolutions on a channels-last view are several times slower
    return torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def _to_uint8(t: Tensor) -> list[np.ndarray]:
    a = t.clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return [a[i] for i in range(a.shape[0])]


def veil_crops(x: Tensor, variant: VeilVariant, landmarks: np.ndarray | None, rng: random.Random
               ) -> tuple[Tensor, list[dict]]:
    """Veil a batch of crops as the pipeline veils a face crop: the variant's parameters (or the
    veil's defaults), and for a veil with ``identity``/``place`` hooks (the cartoon sticker) a
    design drawn from ``rng`` and a placement from each face's landmarks (``B×5×2`` crop pixels).
    Returns the veiled batch and the concrete parameters per face."""
    if variant.veil is None:
        return x.clone(), [{} for _ in range(x.shape[0])]
    v = get_veil(variant.veil)
    h, w = x.shape[-2:]
    params = variant.params_for(min(h, w))
    if v.identity is None and v.place is None:
        y, full = apply_veil(x, variant.veil, params)
        return y, [full] * x.shape[0]
    ys, fulls = [], []
    for i in range(x.shape[0]):
        p: dict = {}
        if v.identity is not None:
            p.update(v.identity(rng))
        if v.place is not None and landmarks is not None:
            p.update(v.place(np.asarray(landmarks[i], np.float64), w, h))
        p.update(params or {})
        y, full = apply_veil(x[i:i + 1], variant.veil, p)
        ys.append(y)
        fulls.append(full)
    return torch.cat(ys), fulls


def _batches(shapes: list[tuple[int, ...]], size: int) -> list[list[int]]:
    out: list[list[int]] = []
    for i, s in enumerate(shapes):
        if out and len(out[-1]) < size and shapes[out[-1][0]] == s:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _read_rgb(p: Path) -> np.ndarray:
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e}") from None


def evaluate_crops(files: Sequence[Path], chosen: Sequence[VeilVariant], dets: Detectors, *,
                   ident=None, threshold: float | None = None, seed: int = 0,
                   reference_files: Sequence[Path] = (),
                   progress: Callable[[int], None] | None = None) -> tuple[dict, dict]:
    """Every variant on the face crops ``files`` (native size). Returns ``(per-variant results,
    run facts)``; ``ident`` (an :class:`~.identity.IdentityModel`) adds identity and Fréchet
    metrics, ``threshold`` the match rate. ``reference_files``: other real crops (disjoint from
    ``files``) whose Fréchet distance to the originals gives that metric's scale (real vs real)."""
    from . import identity as I

    rgbs = [_read_rgb(p) for p in files]
    batches = _batches([r.shape for r in rgbs], BATCH)
    ref_faces = dets.run(rgbs)
    refs = {d: [central_face(fs, r.shape[1], r.shape[0]) for fs, r in zip(ref_faces[d], rgbs)] for d in ref_faces}

    # landmarks for alignment and sticker placement: the identity module's (cached, with fallback)
    index = I.FaceIndex()
    keys = [I.file_key(p) for p in files]
    lms = [index.landmarks(p, r, k) for p, r, k in zip(files, rgbs, keys)]
    index.save()
    facts: dict = {"n": len(files), "landmark_fallbacks": index.fallbacks,
                   "sizes": sorted({f"{r.shape[1]}x{r.shape[0]}" for r in rgbs}),
                   "reference_found": {d: sum(f is not None for f in refs[d]) for d in refs}}

    orig_emb = orig_feat = None
    if ident is not None:
        cache = I.EmbeddingCache(I.embeddings_path(ident.sha256, 0))
        embs, feats = [None] * len(files), [None] * len(files)
        for idx in batches:
            x = _to_tensor([rgbs[i] for i in idx])
            lm = np.stack([lms[i] for i in idx])
            todo = [j for j, i in enumerate(idx) if cache.get(keys[i]) is None]
            if todo:
                e = ident.embed(x[todo], lm[todo])
                for t, j in enumerate(todo):
                    cache.put(keys[idx[j]], e[t].numpy())
            f = ident.features(x, lm)
            for j, i in enumerate(idx):
                embs[i] = torch.from_numpy(cache.get(keys[i]).copy())
                feats[i] = f[j]
        cache.save()
        orig_emb, orig_feat = torch.stack(embs), torch.stack(feats)
        if len(reference_files) >= 2 and len(files) >= 2:
            ref_feat = []
            for p in reference_files:
                rgb = _read_rgb(p)
                ref_feat.append(ident.features(_to_tensor([rgb]), index.landmarks(p, rgb)[None]))
            index.save()
            facts["fd_real_vs_real"] = frechet_distance(orig_feat, torch.cat(ref_feat))
            facts["fd_real_vs_real_n"] = len(reference_files)

    results: dict = {}
    for vi, var in enumerate(chosen):
        rng = random.Random(f"{seed}:{var.label}")
        tally = _Tally()
        feats_v: list[Tensor] = []
        params_seen: list[dict] = []
        seconds = 0.0
        for idx in batches:
            x = _to_tensor([rgbs[i] for i in idx])
            lm = np.stack([lms[i] for i in idx])
            t0 = time.perf_counter()
            with torch.inference_mode():
                y, params = veil_crops(x, var, lm, rng)
            seconds += time.perf_counter() - t0
            for p in params:
                if p and p not in params_seen and len(params_seen) < 3:
                    params_seen.append(p)
            y8 = _to_uint8(y)
            yq = _to_tensor(y8)
            found = dets.run(y8)
            for d in found:
                for j, i in enumerate(idx):
                    tally.detection(d, refs[d][i], found[d][j])
            smap = ssim_map(yq, x)  # = metrics.ssim when averaged over the whole map
            tally.add("ssim", smap.mean(dim=(-2, -1)))
            tally.add("psnr", M.psnr(yq, x).clamp(max=100.0))
            h, w = x.shape[-2:]
            tally.add("ssim_outside", masked_ssim(yq, x, ~face_region(h, w, [_Whole(h, w)]), smap=smap))
            if ident is not None:
                e = ident.embed(yq, lm)
                cos = I.cosine(orig_emb[idx], e)
                tally.add("id_cosine", cos)
                tally.add("id_distance", (1.0 - cos).clamp(min=0.0))
                if threshold is not None:
                    tally.add("id_match", (cos >= threshold).double())
                feats_v.append(ident.features(yq, lm))
            if progress is not None:
                progress(len(idx))
        s = tally.summary()
        s["ms_per_face"] = 1000.0 * seconds / len(files) if var.veil is not None else 0.0
        if ident is not None:
            fv = torch.cat(feats_v)
            s["fd_mfn"] = frechet_distance(orig_feat, fv) if len(files) >= 2 else None
        s["params"] = params_seen
        s["params_vary_per_face"] = var.veil is not None and (get_veil(var.veil).identity is not None
                                                             or get_veil(var.veil).place is not None)
        results[var.label] = s
        log.info("crops: %s done (%d/%d)", var.label, vi + 1, len(chosen))
    return results, facts


@dataclass(frozen=True)
class _Whole:
    """A crop covering a whole ``h×w`` image (the crop *is* the face crop)."""

    height: int
    width: int
    x0: int = 0
    y0: int = 0

    @property
    def x1(self) -> int:
        return self.width

    @property
    def y1(self) -> int:
        return self.height


# -- whole photos -----------------------------------------------------------------------------------

def evaluate_photos(files: Sequence[Path], chosen: Sequence[VeilVariant], dets: Detectors, *, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> tuple[dict, dict]:
    """Every variant on whole photos through :func:`faceveil.api.anonymize` (YuNet detection, the
    pipeline's crops and veils). Returns ``(per-variant results, run facts)``."""
    from .. import api

    tallies = {v.label: _Tally() for v in chosen}
    seconds = {v.label: 0.0 for v in chosen}
    n_faces = {v.label: 0 for v in chosen}
    params_seen: dict[str, list[dict]] = {v.label: [] for v in chosen}
    facts: dict = {"n": len(files), "faces_found_yunet": 0, "reference_found": {d: 0 for d in dets.names()}}
    for pi, p in enumerate(files):
        rgb = _read_rgb(p)
        h, w = rgb.shape[:2]
        found0 = dets.run([rgb])
        refs = {d: central_face(found0[d][0], w, h) for d in found0}
        facts["faces_found_yunet"] += len(found0["yunet"][0])
        for d in refs:
            facts["reference_found"][d] += refs[d] is not None
        main = refs["yunet"]
        crop = face_crop(main.box, w, h, margin=DEFAULT_MARGIN) if main is not None else None
        size = min(crop.width, crop.height) if crop is not None else min(h, w)
        x = _to_tensor([rgb])
        for var in chosen:
            if var.veil is None:
                out, veiled = rgb, []
            else:
                t0 = time.perf_counter()
                res = api.anonymize(rgb, veil=var.veil, veil_params=var.params_for(size), seed=seed + pi)
                seconds[var.label] += time.perf_counter() - t0
                out, veiled = res.image, res.faces
                n_faces[var.label] += len(veiled)
                for f in veiled[:1]:
                    if len(params_seen[var.label]) < 3 and f.params not in params_seen[var.label]:
                        params_seen[var.label].append(f.params)
            found = dets.run([out])
            t = tallies[var.label]
            for d in found:
                t.detection(d, refs[d], found[d][0])
            xq = _to_tensor([out])
            smap = ssim_map(xq, x)
            t.add("ssim", smap.mean(dim=(-2, -1)))
            t.add("ssim_background", masked_ssim(xq, x, ~face_region(h, w, [f.crop for f in veiled]), smap=smap))
            if progress is not None:
                progress(1)
    results = {}
    for var in chosen:
        s = tallies[var.label].summary()
        s["faces_veiled"] = n_faces[var.label]
        s["ms_per_face"] = (1000.0 * seconds[var.label] / n_faces[var.label]) if n_faces[var.label] else (
            0.0 if var.veil is None else None)
        s["params"] = params_seen[var.label]
        results[var.label] = s
    return results, facts


# -- the whole run ----------------------------------------------------------------------------------

def evaluate_veils(faces_dir: str | Path | None = DEFAULT_FACES, photos_dir: str | Path | None = DEFAULT_PHOTOS, *,
                   limit: int | None = DEFAULT_LIMIT, labels: Sequence[str] | None = None, seed: int = 0,
                   identity: bool = True, retinaface: bool = True, identity_weights: str | Path | None = None,
                   retinaface_weights: str | Path | None = None, progress: Callable[[int], None] | None = None,
                   command: str | None = None) -> dict:
    """Run the measurement (see the module docs) and return the result dict (schema
    :data:`SCHEMA`). ``faces_dir=None`` or ``photos_dir=None`` skips that part."""
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    if faces_dir is None and photos_dir is None:
        raise UsageError("nothing to measure: give face crops, photos or both")
    chosen = variants(labels)
    t_start = time.time()
    face_files = _need(faces_dir, "--faces", limit, seed) if faces_dir is not None else []
    reference_files: list[Path] = []
    if face_files and identity:  # as many other real crops: the Fréchet distance's real-vs-real scale
        taken = set(face_files)
        rest = [p for p in list_faces(faces_dir) if p not in taken]
        reference_files = sorted(random.Random(seed + 1).sample(rest, min(len(face_files), len(rest))))
    photo_files = _need(photos_dir, "--photos", limit, seed) if photos_dir is not None else []
    dets = Detectors.load(retinaface, retinaface_weights)

    ident = calibration = threshold = None
    if identity and face_files:
        from . import identity as I

        ident = I.IdentityModel(identity_weights)
        try:
            calibration = I.calibrate(ident)
            threshold = calibration.get("threshold")
        except UsageError as e:
            log.warning("identity threshold not calibrated (match rates omitted): %s", e)
            calibration = {"error": str(e)}

    result: dict = {
        "schema": SCHEMA,
        "meta": {
            "command": command or "evaluate_veils(...)",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "faceveil": __version__, "git_commit": git_commit(), "machine": machine_info(),
            "seed": seed, "limit": limit, "variants": [v.label for v in chosen],
            "paper_frame_px": PAPER_SIZE, "match_iou": MATCH_IOU,
            "detectors": {"yunet": {"threshold": YUNET_THRESHOLD, "package": "yuface (libfacedetection YuNet)"}},
            "metric_settings": {"ssim": M.SETTINGS["ssim"],
                                "fd_feature": "MobileFaceNet 128-d output of the aligned face (no mirror), "
                                              "L2-normalised; not Inception: not comparable with FID"},
            "seconds": None,
        },
        "variants": {v.label: {"veil": v.veil, "paper_row": v.paper_row, "paper_params_256px": v.paper_params}
                     for v in chosen},
    }
    if dets.retinaface is not None:
        from .retinaface import RETINAFACE_FILE

        result["meta"]["detectors"]["retinaface"] = {"threshold": dets.retinaface.threshold,
                                                     "weights": RETINAFACE_FILE, "sha256": dets.retinaface.sha256}
    if face_files:
        crops, facts = evaluate_crops(face_files, chosen, dets, ident=ident, threshold=threshold, seed=seed,
                                      reference_files=reference_files, progress=progress)
        facts.update({"dir": str(faces_dir), "files_sha256": _files_digest(face_files, faces_dir)})
        result["meta"]["crops"] = facts
        for label, s in crops.items():
            result["variants"][label]["crops"] = s
    if photo_files:
        photos, facts = evaluate_photos(photo_files, chosen, dets, seed=seed, progress=progress)
        facts.update({"dir": str(photos_dir), "files_sha256": _files_digest(photo_files, photos_dir)})
        result["meta"]["photos"] = facts
        for label, s in photos.items():
            result["variants"][label]["photos"] = s
    if ident is not None:
        result["meta"]["identity"] = {"model": "MobileFaceNet (Xiaoccer 068.ckpt)", "sha256": ident.sha256,
                                      "threshold": threshold, "target_fmr": 1e-3,
                                      "alignment": "the original's YuNet 5 landmarks (oracle), also for the veiled",
                                      "calibration": {k: calibration.get(k) for k in
                                                      ("n_pairs", "accuracy_10fold", "threshold", "tmr_at_threshold",
                                                       "error") if k in calibration}}
    result["meta"]["seconds"] = round(time.time() - t_start, 1)
    return result


def _need(d: str | Path, flag: str, limit: int | None, seed: int) -> list[Path]:
    if not Path(d).is_dir():
        raise UsageError(f"{flag}: {d} is not a folder (the LFW evaluation data: run `make data`)")
    return list_faces(d, limit, seed)


# -- CLI --------------------------------------------------------------------------------------------

def add_veil_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``faceveil eval-veils``."""
    labels = [v.label for v in variants()]
    parser.add_argument("--faces", default=str(DEFAULT_FACES), metavar="DIR",
                        help=f"folder of face crops (default {DEFAULT_FACES})")
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), metavar="DIR",
                        help=f"folder of whole photos (default {DEFAULT_PHOTOS})")
    parser.add_argument("--no-photos", action="store_true", help="crops only")
    parser.add_argument("--no-crops", action="store_true", help="whole photos only")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                        help=f"a seeded sample of N crops and N photos (default {DEFAULT_LIMIT})")
    parser.add_argument("--veil", action="extend", nargs="+", metavar="LABEL", dest="labels",
                        help=f"variants to measure (default: all: {', '.join(labels)})")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and the cartoon stickers")
    parser.add_argument("--no-identity", action="store_true", help="skip MobileFaceNet (identity and Fréchet)")
    parser.add_argument("--no-retinaface", action="store_true", help="skip the second detector")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads (1 is fastest on a busy machine: contended threads spin)")
    parser.add_argument("--json-out", metavar="FILE", help="write the results as JSON (docs/results/veils.json)")
    if not any("--quiet" in a.option_strings for a in parser._actions):
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def run_veil_eval(args: argparse.Namespace) -> int:
    """``faceveil eval-veils``: Markdown tables on stdout, progress on stderr."""
    from . import report

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    faces = None if args.no_crops else args.faces
    photos = None if args.no_photos else args.photos
    chosen = variants(args.labels)
    bar = None
    if not getattr(args, "quiet", False):
        from tqdm import tqdm

        n = 0
        for d in (faces, photos):
            if d is not None and Path(d).is_dir():
                n += len(list_faces(d, args.limit, args.seed))
        bar = tqdm(total=n * len(chosen), unit="face", file=sys.stderr, desc="eval-veils")
    try:
        res = evaluate_veils(faces, photos, limit=args.limit, labels=args.labels, seed=args.seed,
                             identity=not args.no_identity, retinaface=not args.no_retinaface,
                             progress=bar.update if bar else None,
                             command="faceveil eval-veils " + shlex.join(_argv_of(args)))
    finally:
        if bar is not None:
            bar.close()
    if args.json_out:
        report.write_json(res, args.json_out)
    sys.stdout.write(report.veils_markdown(res))
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    out = []
    if args.no_crops:
        out.append("--no-crops")
    else:
        out += ["--faces", str(args.faces)]
    if args.no_photos:
        out.append("--no-photos")
    else:
        out += ["--photos", str(args.photos)]
    out += ["--limit", str(args.limit), "--seed", str(args.seed)]
    if args.labels:
        out += ["--veil", *args.labels]
    for flag in ("no_identity", "no_retinaface"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    if args.threads is not None:
        out += ["--threads", str(args.threads)]
    if args.json_out:
        out += ["--json-out", str(args.json_out)]
    return out


def _files_digest(files, folder) -> str:
    """sha256 of the files' paths relative to ``folder``, one per line: which set was measured."""
    root = Path(folder)
    return hashlib.sha256("\n".join(str(p.relative_to(root)) for p in files).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``python -m faceveil.eval.veils`` (the options of ``faceveil eval-veils``)."""
    p = argparse.ArgumentParser(prog="faceveil eval-veils", description=__doc__.split("\n\n")[0])
    add_veil_eval_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_veil_eval(args)
    except FaceveilError as e:
        print(f"faceveil eval-veils: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
