"""Identity leakage: does a face recogniser still match the protected face to the original?

Evaluation only. The recogniser is MobileFaceNet (Chen et al. 2018) in the layout of
Xiaoccer/MobileFaceNet_Pytorch (commit 26bd8d2, ``model/best/068.ckpt``: CASIA-WebFace, SphereFace
alignment, LFW 99.3 % reported): the network definition below is written from the published
architecture (Table 1 of the paper: conv 3×3/2 → depthwise 3×3 → bottlenecks (t, c, n, s) =
(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1) → conv 1×1 512 →
linear global depthwise conv 7×6 → linear conv 1×1 128), so that the checkpoint's state dict loads
key for key. Nothing is downloaded: the weights come from the project's data
(``weights_face.tar.gz``, extracted by ``make data`` to ``.cache/data/weights``) and are verified
against their sha256.

Protocol:

* **Alignment**: five landmarks (eyes, nose tip, mouth corners) from the project's YuNet detector on
  the *original* crop, then a least-squares similarity transform (Umeyama) onto the standard
  96×112 SphereFace/ArcFace template, bilinear resampling (zeros outside). Every image derived from
  a face (protected, recovered, wrong-key output, veil, by-product) is aligned with the *original's*
  landmarks: the attacker gets oracle alignment, so the match rates are upper bounds on leakage and
  do not depend on whether a detector still fires on a veiled face.
* **Input**: RGB, ``(255·x − 127.5) / 128``; **embedding**: ``f(x) ‖ f(flip(x))`` (256-d), L2-normalised;
  **score**: cosine similarity (higher = same person).
* **Calibration** (:func:`calibrate`): on ``pairs_seed0.csv`` of the LFW dev crops (1,500 same +
  1,500 different pairs) we report 10-fold verification accuracy and the threshold at which at most
  0.1 % of the different-person pairs match (FMR ≤ 0.1 %). The **identity match rate** of a protected
  (or otherwise derived) face is the fraction of faces whose score against their own original is at
  or above that threshold.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError, ShapeError, UsageError
from ..models.zoo import sha256_file

log = logging.getLogger(__name__)

MOBILEFACENET_SHA256 = "e839247cdbdfc023fb7cadeaf53a4549d50c8fc24ad154c02e35920ea8910d99"
MOBILEFACENET_FILE = "mobilefacenet_068.ckpt"
#: Where ``make data`` puts it; ``FACEVEIL_MOBILEFACENET`` overrides.
DEFAULT_WEIGHTS_DIRS = (Path(".cache/data/weights"),)
DATA_TARBALL = Path("../shared/data/weights_face.tar.gz")
CACHE_DIR = Path(".cache/faceveil-eval")  # relative to the working directory; FACEVEIL_EVAL_CACHE overrides
#: Bump when alignment, preprocessing or the embedding recipe changes (invalidates caches).
PROTOCOL_VERSION = "mfn-align1-flipcat-v1"
#: Target false match rate of the identity threshold.
TARGET_FMR = 1e-3

INPUT_H, INPUT_W = 112, 96
#: SphereFace / ArcFace 5-point reference for a 96×112 (W×H) crop: right eye, left eye (subject's),
#: nose tip, right and left mouth corners, in the order of faceveil.detect.LANDMARK_NAMES.
TEMPLATE_96x112 = np.array([
    [30.2946, 51.6963],
    [65.5318, 51.5014],
    [48.0252, 71.7366],
    [33.5493, 92.3655],
    [62.7299, 92.2041],
], dtype=np.float64)
#: Median YuNet landmarks on the 128×128 LFW dev crops, as fractions of the crop side: the
#: fallback when the detector finds no face in an original (counted and reported).
FALLBACK_LANDMARKS_FRAC = np.array([
    [45.0, 53.0], [80.0, 52.5], [64.0, 73.5], [48.5, 89.0], [79.0, 88.0],
], dtype=np.float64) / 128.0

# (t, c, n, s): expansion, output channels, repeats, first stride
BOTTLENECK_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


# -- the network ------------------------------------------------------------------------------------

class ConvBlock(nn.Module):
    """conv (no bias) → BN → PReLU (omitted when ``linear``); ``dw`` = depthwise."""

    def __init__(self, inp: int, oup: int, k, s: int, p: int, *, dw: bool = False, linear: bool = False):
        super().__init__()
        self.linear = linear
        self.conv = nn.Conv2d(inp, oup, k, s, p, groups=inp if dw else 1, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        if not linear:
            self.prelu = nn.PReLU(oup)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return x if self.linear else self.prelu(x)


class Bottleneck(nn.Module):
    """Inverted residual: 1×1 expand → BN → PReLU → 3×3 depthwise (stride s) → BN → PReLU →
    1×1 project → BN; a residual connection when stride 1 and the channels match."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int):
        super().__init__()
        self.connect = stride == 1 and inp == oup
        hid = inp * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hid, 1, 1, 0, bias=False), nn.BatchNorm2d(hid), nn.PReLU(hid),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.PReLU(hid),
            nn.Conv2d(hid, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.connect else self.conv(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet, 112×96 input, 128-d output (~1.0M parameters).

    Shape:
        x: ``B×3×112×96`` normalised as ``(255·rgb − 127.5) / 128``; returns ``B×128``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, dw=True)
        layers = []
        inp = 64
        for t, c, n, s in BOTTLENECK_SETTING:
            for i in range(n):
                layers.append(Bottleneck(inp, c, s if i == 0 else 1, t))
                inp = c
        self.blocks = nn.Sequential(*layers)
        self.conv2 = ConvBlock(128, 512, 1, 1, 0)
        self.linear7 = ConvBlock(512, 512, (7, 6), 1, 0, dw=True, linear=True)
        self.linear1 = ConvBlock(512, 128, 1, 1, 0, linear=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (3, INPUT_H, INPUT_W):
            raise ShapeError(f"MobileFaceNet takes B×3×{INPUT_H}×{INPUT_W}, got {tuple(x.shape)}")
        x = self.dw_conv1(self.conv1(x))
        x = self.conv2(self.blocks(x))
        x = self.linear1(self.linear7(x))
        return x.flatten(1)


def find_weights(path: str | Path | None = None) -> Path:
    """The MobileFaceNet checkpoint: ``path``, else ``$FACEVEIL_MOBILEFACENET``, else
    ``.cache/data/weights/mobilefacenet_068.ckpt``. Raises :class:`ModelError` with what to do."""
    cands = []
    if path:
        cands.append(Path(path))
    elif os.environ.get("FACEVEIL_MOBILEFACENET"):
        cands.append(Path(os.environ["FACEVEIL_MOBILEFACENET"]))
    else:
        cands.extend(d / MOBILEFACENET_FILE for d in DEFAULT_WEIGHTS_DIRS)
    for c in cands:
        if c.is_file():
            return c
    hint = (f"run `make data` (extracts {DATA_TARBALL})" if DATA_TARBALL.exists()
            else "point FACEVEIL_MOBILEFACENET at mobilefacenet_068.ckpt")
    raise ModelError(f"MobileFaceNet weights not found (looked for {', '.join(map(str, cands))}); "
                     f"{hint}, or pass --no-identity")


def load_mobilefacenet(path: str | Path | None = None) -> tuple[MobileFaceNet, str]:
    """Build MobileFaceNet and load the verified checkpoint (``weights_only=True``: plain tensors
    only, no pickled code runs). Returns ``(net in eval mode, sha256)``."""
    p = find_weights(path)
    sha = sha256_file(p)
    if sha != MOBILEFACENET_SHA256:
        raise ModelError(f"{p} fails its sha256 check (expected {MOBILEFACENET_SHA256[:12]}…, got "
                         f"{sha[:12]}…): re-extract it from weights_face.tar.gz")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad pickle
        raise ModelError(f"cannot read {p}: {e}") from None
    state = ck.get("net_state_dict", ck) if isinstance(ck, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{p} holds no state dict")
    return frozen(MobileFaceNet(), state, p, "MobileFaceNet"), sha


def frozen(net: torch.nn.Module, state: dict, path, what: str) -> torch.nn.Module:
    """``net`` with ``state`` loaded strictly, in eval mode, without gradients (an evaluation-only
    network read from ``path``); a mismatch is a :class:`ModelError` naming ``what``."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path} does not fit the {what} definition: {e}") from None
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return net


# -- alignment --------------------------------------------------------------------------------------

def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto
    ``dst`` (Umeyama 1991, no reflection). Returns the 2×3 matrix ``M`` with ``dst ≈ M @ [src; 1]``."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ShapeError(f"similarity_transform takes two N×2 point sets, got {src.shape}, {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / len(src)
    scale = (sig * d).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def align(x: Tensor, landmarks: np.ndarray | Tensor) -> Tensor:
    """Warp faces onto the 96×112 template.

    Pixel coordinates have pixel centres at integers (OpenCV's and YuNet's convention).

    Shape:
        x: ``B×3×H×W`` float in [0, 1]; landmarks: ``B×5×2`` (x, y) in pixels of ``x``;
        returns ``B×3×112×96``.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ShapeError(f"align takes B×3×H×W, got {tuple(x.shape)}")
    lms = np.asarray(landmarks.cpu() if isinstance(landmarks, Tensor) else landmarks, np.float64)
    if lms.shape != (x.shape[0], 5, 2):
        raise ShapeError(f"landmarks must be {x.shape[0]}×5×2, got {lms.shape}")
    h, w = x.shape[-2:]
    thetas = []
    for lm in lms:
        m = similarity_transform(TEMPLATE_96x112, lm)  # output pixel -> input pixel
        # to grid_sample's normalised coordinates (align_corners=False)
        a = np.diag([2.0 / w, 2.0 / h])
        t_out = np.array([[2.0 / INPUT_W, 0, 1.0 / INPUT_W - 1], [0, 2.0 / INPUT_H, 1.0 / INPUT_H - 1],
                          [0, 0, 1]])
        out_to_pix = np.linalg.inv(t_out)  # normalised output -> output pixel
        full = np.vstack([m, [0, 0, 1]]) @ out_to_pix
        theta = np.vstack([a @ full[:2], [0, 0, 1]])
        theta[:2, 2] += np.array([1.0 / w - 1, 1.0 / h - 1])
        thetas.append(theta[:2])
    th = torch.tensor(np.stack(thetas), dtype=x.dtype, device=x.device)
    grid = F.affine_grid(th, [x.shape[0], 3, INPUT_H, INPUT_W], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _detector():
    try:
        from ..detect import get_detector

        return get_detector("yunet", threshold=0.5)
    except ImportError:  # pragma: no cover - the detect package is part of faceveil
        return None


def detect_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """Five landmarks (5×2, pixels) of the most central confident face in an aligned crop, or None."""
    det = _detector()
    h, w = rgb.shape[:2]
    cands = []
    if det is not None:
        for f in det.detect(rgb):
            if f.landmarks is not None:
                cands.append((f.score, np.asarray(f.landmarks, np.float64), f.center))
    else:  # pragma: no cover
        import yuface

        confs, boxes, lms = yuface.detect(np.ascontiguousarray(rgb[:, :, ::-1]), conf=0.5)
        for c, b, lm in zip(confs, boxes, lms):
            cands.append((c / 100.0, lm.astype(np.float64).reshape(5, 2),
                          (b[0] + b[2] / 2, b[1] + b[3] / 2)))
    if not cands:
        return None
    # the face nearest the centre (aligned crops hold one main face), ties by score
    best = min(cands, key=lambda c: ((c[2][0] - w / 2) ** 2 + (c[2][1] - h / 2) ** 2) / (w * h) - 0.01 * c[0])
    return best[1]


def fallback_landmarks(h: int, w: int) -> np.ndarray:
    """The median LFW-crop landmarks scaled to an ``h×w`` crop."""
    return scale_landmarks(FALLBACK_LANDMARKS_FRAC * 128.0, (128, 128), (h, w))


def scale_landmarks(lm: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Landmarks of an image resized from ``from_hw`` to ``to_hw`` (pixel centres at integers)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return (lm + 0.5) * np.array([sx, sy]) - 0.5


# -- the embedder -----------------------------------------------------------------------------------

class IdentityModel:
    """MobileFaceNet embeddings of aligned faces. ``embed(x, landmarks) -> B×256`` (unit norm)."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu",
                 batch: int = 64) -> None:
        self.net, self.sha256 = load_mobilefacenet(weights)
        self.device = torch.device(device)
        self.net.to(self.device)
        self.batch = batch

    @torch.no_grad()
    def embed_aligned(self, a: Tensor) -> Tensor:
        """``B×3×112×96`` in [0, 1] -> ``B×256`` unit vectors (image ‖ mirror)."""
        outs = []
        for i in range(0, a.shape[0], self.batch):
            t = a[i:i + self.batch].to(self.device, torch.float32)
            t = (t * 255.0 - 127.5) / 128.0
            f = torch.cat([self.net(t), self.net(t.flip(-1))], dim=1)
            outs.append(F.normalize(f, dim=1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, 256)

    def embed(self, x: Tensor, landmarks: np.ndarray) -> Tensor:
        return self.embed_aligned(align(x.detach().float().cpu(), landmarks))

    @torch.no_grad()
    def features(self, x: Tensor, landmarks: np.ndarray) -> Tensor:
        """The plain 128-d MobileFaceNet output of the aligned face (no mirror), L2-normalised:
        the feature of the Fréchet distance in :mod:`.veils`. Shape: -> ``B×128``."""
        a = align(x.detach().float().cpu(), landmarks)
        outs = [F.normalize(self.net(((a[i:i + self.batch] * 255.0 - 127.5) / 128.0).to(self.device)), dim=1).cpu()
                for i in range(0, a.shape[0], self.batch)]
        return torch.cat(outs) if outs else torch.zeros(0, 128)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of unit vectors. Shape: ``B×D, B×D -> B``."""
    return (a * b).sum(dim=1)


# -- caches -----------------------------------------------------------------------------------------

def cache_dir(given: str | Path | None = None) -> Path:
    """Where landmarks, embeddings and calibrations are cached: ``given``, else
    ``$FACEVEIL_EVAL_CACHE``, else ``.cache/faceveil-eval``."""
    if given:
        return Path(given)
    return Path(os.environ.get("FACEVEIL_EVAL_CACHE") or CACHE_DIR)


def file_key(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]


def embeddings_path(weights_sha: str, size: int, cache: str | Path | None = None) -> Path:
    return cache_dir(cache) / f"embeddings-{PROTOCOL_VERSION}-{weights_sha[:12]}-s{size}.npz"


class EmbeddingCache:
    """On-disk ``key -> vector`` store (one ``.npz``), for landmarks and original embeddings."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    keys = [str(k) for k in z["keys"]]
                    vals = z["values"]
                self.data = {k: vals[i] for i, k in enumerate(keys)}
            except (OSError, KeyError, ValueError) as e:
                log.warning("ignoring unreadable cache %s: %s", self.path, e)

    def get(self, key: str) -> np.ndarray | None:
        return self.data.get(key)

    def put(self, key: str, value: np.ndarray) -> None:
        self.data[key] = np.asarray(value, np.float32)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty or not self.data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.data)
        shapes = {self.data[k].shape for k in keys}
        if len(shapes) != 1:
            raise ValueError(f"cache {self.path} mixes shapes {shapes}")
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), values=np.stack([self.data[k] for k in keys]))
        tmp.replace(self.path)
        self.dirty = False


class FaceIndex:
    """Landmarks of original files (detected once, cached by file hash) with the fallback count."""

    def __init__(self, cache: str | Path | None = None) -> None:
        self.cache = EmbeddingCache(cache_dir(cache) / f"landmarks-{PROTOCOL_VERSION}.npz")
        self.fallbacks = 0

    def landmarks(self, path: str | Path, rgb: np.ndarray | None = None, key: str | None = None) -> np.ndarray:
        """5×2 landmarks in pixels of the file's own image (NaN-free; fallback template if no face)."""
        key = key or file_key(path)
        got = self.cache.get(key)
        if got is None:
            if rgb is None:
                from PIL import Image

                with Image.open(path) as im:
                    rgb = np.asarray(im.convert("RGB"))
            lm = detect_landmarks(rgb)
            got = np.full((5, 2), np.nan, np.float32) if lm is None else lm.astype(np.float32)
            self.cache.put(key, got)
        if np.isnan(got).any():
            self.fallbacks += 1
            h, w = rgb.shape[:2] if rgb is not None else _image_hw(path)
            return fallback_landmarks(h, w)
        return got.astype(np.float64)

    def save(self) -> None:
        self.cache.save()


def _image_hw(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


# -- calibration ------------------------------------------------------------------------------------

def _best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``score >= t`` ⇒ same; returns (threshold, accuracy)."""
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order].astype(np.int64)
    # predicting "same" for the top k: correct = positives in top k + negatives below
    tp = np.concatenate([[0], np.cumsum(lab)])
    neg_total = (lab == 0).sum()
    fp = np.arange(len(s) + 1) - tp
    acc = (tp + (neg_total - fp)) / len(s)
    k = int(np.argmax(acc))
    if k == 0:
        t = s[0] + 1e-6
    elif k == len(s):
        t = s[-1] - 1e-6
    else:
        t = (s[k - 1] + s[k]) / 2
    return float(t), float(acc[k])


def threshold_at_fmr(neg_scores: np.ndarray, fmr: float = TARGET_FMR) -> float:
    """Smallest threshold (midway between two negative scores) at which the fraction of negatives
    with ``score >= t`` is at most ``fmr``."""
    s = np.sort(np.asarray(neg_scores, np.float64))[::-1]
    if len(s) == 0:
        raise ValueError("no different-person scores to set a threshold from")
    allowed = int(np.floor(fmr * len(s) + 1e-9))  # negatives that may score at or above t
    if allowed >= len(s):
        return float(s[-1])
    # s[allowed] must fall below t; s[allowed - 1] may stay above
    t = (s[allowed] + s[allowed - 1]) / 2 if allowed > 0 else s[0] + 1e-6
    if t <= s[allowed]:  # ties
        t = np.nextafter(s[allowed], np.inf)
    return float(t)


def verification_stats(scores: np.ndarray, labels: np.ndarray, folds: int = 10, seed: int = 0) -> dict:
    """10-fold verification accuracy (threshold chosen on the other 9 folds), the single best
    threshold on all pairs, and the threshold at FMR ≤ 0.1 % with its true-match rate."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    perm = np.random.default_rng(seed).permutation(len(scores))
    fold_of = np.empty(len(scores), int)
    fold_of[perm] = np.arange(len(scores)) % folds
    accs = []
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        t, _ = _best_threshold(scores[tr], labels[tr])
        accs.append(float(((scores[te] >= t) == labels[te]).mean()))
    t_best, acc_best = _best_threshold(scores, labels)
    t_fmr = threshold_at_fmr(scores[~labels])
    return {
        "n_pairs": int(len(scores)), "n_same": int(labels.sum()), "n_different": int((~labels).sum()),
        "accuracy_10fold": float(np.mean(accs)), "accuracy_10fold_std": float(np.std(accs)),
        "best_threshold": t_best, "accuracy_at_best_threshold": acc_best,
        "target_fmr": TARGET_FMR, "threshold": t_fmr,
        "fmr_at_threshold": float((scores[~labels] >= t_fmr).mean()),
        "tmr_at_threshold": float((scores[labels] >= t_fmr).mean()),
        "score": "cosine of L2-normalised MobileFaceNet(image) ‖ MobileFaceNet(mirror)",
    }


def default_pairs_file() -> Path | None:
    p = Path(".cache/data/lfw_dev_128/pairs_seed0.csv")
    return p if p.is_file() else None


def calibrate(model: IdentityModel, pairs_csv: str | Path | None = None, root: str | Path | None = None,
              *, cache: str | Path | None = None, progress=None, limit: int | None = None) -> dict:
    """Verification accuracy and the FMR = 0.1 % threshold on a pairs file (``file_a,file_b,same``;
    paths relative to ``root``, default: the pairs file's grandparent folder). Cached as JSON keyed
    by the pairs file's hash, the weights' sha256 and the protocol version."""
    pairs_csv = Path(pairs_csv) if pairs_csv else default_pairs_file()
    if pairs_csv is None or not pairs_csv.is_file():
        raise UsageError("no pairs file to calibrate the identity threshold "
                         "(expected .cache/data/lfw_dev_128/pairs_seed0.csv; run `make data`)")
    root = Path(root) if root else pairs_csv.parent.parent
    tag = hashlib.sha256(pairs_csv.read_bytes() + model.sha256.encode() + PROTOCOL_VERSION.encode()
                         + str(limit).encode()).hexdigest()[:16]
    out_path = cache_dir(cache) / f"calibration-{tag}.json"
    if out_path.is_file():
        try:
            return json.loads(out_path.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    with open(pairs_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if limit:
        rows = rows[:limit // 2] + rows[-(limit - limit // 2):] if len(rows) > limit else rows
    files = sorted({r["file_a"] for r in rows} | {r["file_b"] for r in rows})
    emb = embed_files(model, [root / p for p in files], cache=cache, progress=progress)
    idx = {p: i for i, p in enumerate(files)}
    a = torch.stack([emb["embeddings"][idx[r["file_a"]]] for r in rows])
    b = torch.stack([emb["embeddings"][idx[r["file_b"]]] for r in rows])
    scores = cosine(a, b).numpy()
    labels = np.array([int(r["same"]) for r in rows])
    stats = verification_stats(scores, labels)
    stats.update({"pairs_file": str(pairs_csv), "pairs_sha256": hashlib.sha256(pairs_csv.read_bytes()).hexdigest(),
                  "n_images": len(files), "landmark_fallbacks": emb["fallbacks"],
                  "weights": MOBILEFACENET_FILE, "weights_sha256": model.sha256, "protocol": PROTOCOL_VERSION,
                  "same_score_mean": float(scores[labels == 1].mean()),
                  "different_score_mean": float(scores[labels == 0].mean())})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(stats, indent=2))
    return stats


def embed_files(model: IdentityModel, paths: list[Path], *, size: int = 0, cache: str | Path | None = None,
                progress=None, batch: int = 64) -> dict:
    """Embeddings of image files at native size (``size=0``) or resized to ``size``×``size``
    (bicubic, antialiased; as the harness does), cached by file hash. Returns
    ``{"embeddings": N×256 tensor, "fallbacks": int}``."""
    from PIL import Image

    faces = FaceIndex(cache)
    store = EmbeddingCache(embeddings_path(model.sha256, size, cache))
    out: list[np.ndarray | None] = [None] * len(paths)
    todo_x, todo_lm, todo_i, todo_k = [], [], [], []

    def flush():
        if not todo_x:
            return
        e = model.embed(torch.cat(todo_x), np.stack(todo_lm)).numpy()
        for j, i in enumerate(todo_i):
            out[i] = e[j]
            store.put(todo_k[j], e[j])
        todo_x.clear(), todo_lm.clear(), todo_i.clear(), todo_k.clear()

    for i, p in enumerate(paths):
        key = file_key(p)
        got = store.get(key)
        if got is not None:
            out[i] = got
            # count fallbacks consistently with uncached runs
            lm_cached = faces.cache.get(key)
            if lm_cached is not None and np.isnan(lm_cached).any():
                faces.fallbacks += 1
        else:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"))
            lm = faces.landmarks(p, rgb, key)
            if size:
                small = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
                lm = scale_landmarks(lm, rgb.shape[:2], (size, size))
                rgb = small
            todo_x.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0)
            todo_lm.append(lm)
            todo_i.append(i)
            todo_k.append(key)
            if len(todo_x) >= batch or (todo_x and todo_x[0].shape != todo_x[-1].shape):
                if todo_x[0].shape != todo_x[-1].shape:  # shapes differ: flush all but the last
                    last = (todo_x.pop(), todo_lm.pop(), todo_i.pop(), todo_k.pop())
                    flush()
                    todo_x.append(last[0]), todo_lm.append(last[1]), todo_i.append(last[2]), todo_k.append(last[3])
                else:
                    flush()
        if progress is not None:
            progress(1)
    flush()
    faces.save()
    store.save()
    return {"embeddings": torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 256),
            "fallbacks": faces.fallbacks}


@dataclass
class LeakageResult:
    """Per-image cosine to the original and whether it matches at the calibrated threshold."""

    cosine: Tensor
    match: Tensor

    def summary(self) -> dict:
        return {"match_rate": float(self.match.float().mean()), "cosine_mean": float(self.cosine.mean())}


def leakage(orig_emb: Tensor, other_emb: Tensor, threshold: float | None) -> LeakageResult:
    c = cosine(orig_emb, other_emb)
    m = c >= threshold if threshold is not None else torch.zeros_like(c, dtype=torch.bool)
    return LeakageResult(c, m)
