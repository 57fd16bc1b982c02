"""Multi-scale YuNet face detector (the ``yuface`` package: libfacedetection compiled in, BSD, no download).

One YuNet run reliably finds faces whose box is about 24 to 620 pixels (longer side) in an image of
at most 960 pixels; on bigger images ``yuface`` warns and returns duplicate, overlapping boxes.
:class:`YuNetDetector` therefore runs a small scale pyramid:

* the **fine pass** at scale ``s_fine = min(max_upscale, 24 / min_size)``, so the smallest face
  wanted is 24 px there (``min_size=24`` → native resolution; ``min_size=12`` → 2× upscale);
* **coarser passes**, each at most ``PASS_RATIO = 6`` times smaller than the previous, down to the
  **whole-frame pass** whose long side is ``whole_side`` (640; never upscaled beyond ``s_fine``), so
  a face filling the frame is found too;
* a pass whose image is longer than ``tile`` (960) runs on overlapping ``tile × tile`` windows with
  ``overlap`` (192) pixels in common; a detection touching a window edge inside the image is dropped
  (a face up to 192 px is whole in a neighbouring window; a larger one is ≥ 32 px in the next coarser
  pass);
* all candidates go through greedy non-maximum suppression (IoU > ``nms_iou``, or more than
  ``CONTAIN`` = 80 % of a box inside a better-scored one: the higher score wins), then faces below
  ``threshold`` or with a box shorter than ``min_size`` (longer side, in input pixels) are dropped.

Output order: raster order of the boxes' top-left corners, the key of
:func:`~faceveil.detect.geometry.order_faces`, ``(y0, x0, y1, x1, -score)``. Landmarks are YuNet's
five points in :data:`~faceveil.detect.base.LANDMARK_NAMES` order (subject's right eye first, which
is on the image-left side). Boxes are YuNet's (brow to chin, width ≈ 0.76 × height) in input
pixels and may reach past the border for faces cut off by it.

Measured with ``nice .venv/bin/python benchmarks/detect_bench.py`` (defaults: threshold 0.6,
min_size 24), on the 2-core CPU dev box *while a training job used both cores*, so the times are
upper bounds (yuface's OpenMP threads compete with it; an idle box is 2-4× faster):

* LFW full-frame (228 photos of 201 people, 250×250): the named person's central face found in
  228/228 (100 %); 12.3 ms per photo; 49 further faces (all real people in the background on a
  manual check of the crops).
* Face-free photos (Urban100 + Sun-Hays80, 180 photos ≤ 1024 px): 2 boxes in 2 photos at 0.6
  (both statues/paintings of faces); 11 at 0.5, 0 at 0.7.
* Size sweep (40 LFW faces pasted on Urban100 backgrounds): ≥ 98 % found from 24 px to 620 px
  (longer box side) at native scale; 20 px: 88 %, 16 px: 57 %; with ``min_size=12`` (2× upscale):
  14 px 100 %, 12 px 92 %. Whole-frame faces are found in 64×64 images without upscaling.
* 640×480: 70 ms (one native pass + a 160×120 whole-frame pass is not needed: one pass).
  4000×3000 with 12 faces of 24-900 px: all 12 found; 3.4 s (native tiles dominate; ``min_size=48``
  → 0.95 s, ``min_size=96`` → 0.31 s).

See ``benchmarks/detect_bench.py`` for the exact numbers of the last run.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from PIL import Image

from ..errors import UsageError
from .base import Face, check_rgb, register_detector
from .geometry import order_faces

log = logging.getLogger(__name__)

__all__ = ["YuNetDetector", "NATIVE_MIN_FACE", "PASS_RATIO", "MIN_SIZE_SLACK"]

#: Smallest face (box longer side, pixels at the pass's scale) YuNet finds reliably (≥ 98 %).
NATIVE_MIN_FACE = 24
#: Largest ratio between the scales of two consecutive passes.
PASS_RATIO = 6.0
#: A box may come out a little smaller than the face: keep boxes down to this fraction of min_size.
MIN_SIZE_SLACK = 0.75
#: Fraction of a lower-scored box inside a kept box above which NMS drops it.
CONTAIN = 0.8
#: Pixels from a window edge inside the image within which a tile detection counts as cut off.
_EDGE = 2


def _import_yuface():
    try:
        import yuface  # noqa: PLC0415  (imported on first use: keeps `import faceveil` light)
    except ImportError as e:  # pragma: no cover - a core dependency
        raise UsageError("the face detector needs the 'yuface' package: pip install yuface") from e
    return yuface


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts covering ``[0, length)`` with windows of ``tile`` overlapping by ``>= overlap``."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float, contain: float = CONTAIN) -> list[int]:
    """Greedy NMS; returns kept indices, best score first (ties: the earlier candidate).

    A box is dropped when its IoU with a kept box exceeds ``iou``, or when more than ``contain`` of
    its own area lies inside a kept box (passes near the ends of YuNet's size range sometimes return
    a part of a big face as a second, smaller face; one face inside another does not occur)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    for i in order:
        ok = True
        for k in keep:
            iw = min(boxes[i, 2], boxes[k, 2]) - max(boxes[i, 0], boxes[k, 0])
            ih = min(boxes[i, 3], boxes[k, 3]) - max(boxes[i, 1], boxes[k, 1])
            if iw > 0 and ih > 0:
                inter = iw * ih
                if inter / (areas[i] + areas[k] - inter) > iou or inter > contain * areas[i]:
                    ok = False
                    break
        if ok:
            keep.append(i)
    return keep


@register_detector("yunet")
class YuNetDetector:
    """YuNet over a scale pyramid with tiling and NMS (see the module docs for the algorithm).

    Args:
        threshold: minimum score in ``[0, 1]`` (0.6: no false positives but two painted faces on 180
            face-free photos; the LFW faces score ≥ 0.8).
        min_size: smallest face to report, box longer side in input pixels (≥ 4). Sets the fine
            pass scale ``24 / min_size``: halving it quadruples the time on big images.
        max_upscale: cap on the fine pass scale (upscaling finds 12-20 px faces; beyond 2× it finds
            no more).
        nms_iou: IoU above which the lower-scored of two boxes is dropped.
        whole_side: long side of the coarsest, whole-frame pass.
        tile: largest pass image run in one piece; larger ones are tiled (≤ 960: yuface degrades on
            bigger inputs).
        overlap: pixels shared by neighbouring tiles (≥ 32 and < tile / 2).

    Raises:
        UsageError: an option out of range.
    """

    name = "yunet"

    def __init__(self, *, threshold: float = 0.6, min_size: float = 24, max_upscale: float = 2.0,
                 nms_iou: float = 0.4, whole_side: int = 640, tile: int = 960,
                 overlap: int = 192) -> None:
        if not (0.0 <= threshold <= 1.0):
            raise UsageError(f"detection threshold must lie in [0, 1], got {threshold!r}")
        if not (min_size >= 4):
            raise UsageError(f"min_size must be at least 4 pixels, got {min_size!r}")
        if not (1.0 <= max_upscale <= 4.0):
            raise UsageError(f"max_upscale must lie in [1, 4], got {max_upscale!r}")
        if not (0.0 < nms_iou < 1.0):
            raise UsageError(f"nms_iou must lie in (0, 1), got {nms_iou!r}")
        if not (64 <= whole_side <= 960 and whole_side <= tile <= 960):
            raise UsageError(f"need 64 <= whole_side <= tile <= 960, got {whole_side!r}, {tile!r}")
        if not (32 <= overlap < tile // 2):
            raise UsageError(f"overlap must lie in [32, tile/2), got {overlap!r}")
        self._yuface = _import_yuface()
        self.threshold = float(threshold)
        self.min_size = float(min_size)
        self.max_upscale = float(max_upscale)
        self.nms_iou = float(nms_iou)
        self.whole_side = int(whole_side)
        self.tile = int(tile)
        self.overlap = int(overlap)

    def __repr__(self) -> str:
        return (f"YuNetDetector(threshold={self.threshold}, min_size={self.min_size}, "
                f"max_upscale={self.max_upscale}, nms_iou={self.nms_iou}, "
                f"whole_side={self.whole_side}, tile={self.tile}, overlap={self.overlap})")

    # -- the pyramid ---------------------------------------------------------------------------

    def scales(self, width: int, height: int) -> list[float]:
        """The pass scales for an image of ``width × height``, finest first."""
        long_side = max(width, height)
        s_fine = min(self.max_upscale, NATIVE_MIN_FACE / self.min_size)
        s_whole = min(s_fine, self.whole_side / long_side)
        if s_fine / s_whole <= 1.0 + 1e-9:
            return [s_fine]
        n = math.ceil(math.log(s_fine / s_whole) / math.log(PASS_RATIO) - 1e-9)
        return [s_fine * (s_whole / s_fine) ** (k / n) for k in range(n + 1)]

    def _run(self, bgr: np.ndarray) -> np.ndarray:
        """One yuface call → ``N×15`` float array: score (0-1), x0, y0, x1, y1, 5 landmarks (x, y)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Image size ... too large": our tiles stay ≤ 960
            confs, boxes, lms = self._yuface.detect(np.ascontiguousarray(bgr), conf=self.threshold)
        n = len(confs)
        out = np.empty((n, 15), dtype=np.float64)
        if n:
            b = boxes.astype(np.float64)
            out[:, 0] = confs.astype(np.float64) / 100.0
            out[:, 1:3] = b[:, 0:2]
            out[:, 3:5] = b[:, 0:2] + b[:, 2:4]
            out[:, 5:15] = lms.astype(np.float64)
        return out

    def _pass(self, rgb: np.ndarray, scale: float) -> np.ndarray:
        H, W = rgb.shape[:2]
        w, h = max(1, round(W * scale)), max(1, round(H * scale))
        if (w, h) == (W, H):
            img = rgb
        else:
            img = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        bgr = img[:, :, ::-1]
        found = []
        for ty in _tile_starts(h, self.tile, self.overlap):
            for tx in _tile_starts(w, self.tile, self.overlap):
                th, tw = min(self.tile, h - ty), min(self.tile, w - tx)
                r = self._run(bgr[ty:ty + th, tx:tx + tw])
                if not len(r):
                    continue
                # drop boxes cut by a window edge that is not an image edge
                keep = np.ones(len(r), dtype=bool)
                if tx > 0:
                    keep &= r[:, 1] > _EDGE
                if ty > 0:
                    keep &= r[:, 2] > _EDGE
                if tx + tw < w:
                    keep &= r[:, 3] < tw - _EDGE
                if ty + th < h:
                    keep &= r[:, 4] < th - _EDGE
                r = r[keep]
                r[:, [1, 3, 5, 7, 9, 11, 13]] += tx
                r[:, [2, 4, 6, 8, 10, 12, 14]] += ty
                found.append(r)
        if not found:
            return np.empty((0, 15))
        r = np.concatenate(found)
        r[:, [1, 3, 5, 7, 9, 11, 13]] *= W / w
        r[:, [2, 4, 6, 8, 10, 12, 14]] *= H / h
        return r

    def candidates(self, rgb: np.ndarray) -> np.ndarray:
        """All raw detections of all passes (before NMS and size filter), ``N×15`` as in ``_run``."""
        rgb = check_rgb(rgb)
        H, W = rgb.shape[:2]
        parts = [self._pass(rgb, s) for s in self.scales(W, H)]
        return np.concatenate(parts) if parts else np.empty((0, 15))

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB image, in raster order of their boxes (see the module docs).

        Shape:
            - rgb: ``H×W×3`` ``uint8`` RGB (not modified)

        Raises:
            ImageError: not a ``uint8`` numpy array.
            ShapeError: not ``H×W×3``.
        """
        r = self.candidates(rgb)
        r = r[(r[:, 0] >= self.threshold)
              & (np.maximum(r[:, 3] - r[:, 1], r[:, 4] - r[:, 2]) >= MIN_SIZE_SLACK * self.min_size)]
        faces = [
            Face(box=tuple(r[i, 1:5]), score=min(1.0, r[i, 0]), landmarks=r[i, 5:15].reshape(5, 2))
            for i in _nms(r[:, 1:5], r[:, 0], self.nms_iou)
        ]
        log.debug("yunet: %d faces in a %d×%d image", len(faces), rgb.shape[1], rgb.shape[0])
        return order_faces(faces)
