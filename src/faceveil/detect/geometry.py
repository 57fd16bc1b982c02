"""Face crops and paste-back with exact integer geometry.

The pipeline cuts one crop per face, veils and hides it, and pastes the result back at the same place;
recovery cuts the same crop (its coordinates are stored in the file), reverses the network and pastes
the original back. Everything here is integer pixel geometry on half-open ranges, so
``paste(img, c, extract(img, c))`` is the identity, bit for bit.

Coordinates: origin at the top-left corner of the image, ``x`` to the right, ``y`` down; a
:class:`CropBox` covers rows ``y0 <= y < y1`` and columns ``x0 <= x < x1`` (``img[y0:y1, x0:x1]``).

Crop rule (:func:`face_crop`), in order:

1. **square** around the centre of the face box, side ``max(w, h) * (1 + 2 * margin)`` rounded to
   the nearest even integer and at least :data:`MIN_CROP` (:func:`face_square`);
2. **clipped** at the image borders (never shifted: the face keeps its place in the crop);
3. at least :data:`MIN_CROP` wide and high: a crop that clipping left narrower is widened into the
   image around the visible face;
4. **even** width and height (the Haar transform halves them): an odd side loses one pixel row or
   column on the side farther from the centre of the visible face box.

The default ``margin=0.15`` gives a side of 1.3 × the face box's longer side. With YuNet boxes (brow
to chin, width ≈ 0.76 × height; LFW median 94×123 px) this matches the face crops the network is
trained on (the central 150×150 of LFW's 250×250 photos is 1.22 × the box height; 10-90 %:
1.10-1.34) and looks like the papers' 112×112 aligned crops with a little more background: at 112 px
the eyes sit ≈ 45 px and the mouth ≈ 76 px from the top (ArcFace template: 52 and 92). It is also
the smallest round margin that puts the whole face box inside the ellipse inscribed in the square
(corner at normalised radius 0.97; the face oval itself, radius 0.77, lies inside the fully opaque
part of the veil's soft ellipse, which ramps from 0.92 to 1.08).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError, ShapeError, UsageError

__all__ = [
    "MIN_CROP",
    "DEFAULT_MARGIN",
    "CropBox",
    "face_square",
    "face_crop",
    "extract",
    "paste",
    "order_faces",
    "crops_overlap",
    "check_box",
    "box_iou",
]

#: Smallest crop side (pixels). Three Haar levels need a multiple of 8 to be free of padding; the
#: pipeline pads anything else, but a crop narrower than this holds nothing worth protecting.
MIN_CROP = 8
#: Margin on each side of the face box, as a fraction of the box's longer side (see module docs).
DEFAULT_MARGIN = 0.15


def _round_half_up(v: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return math.floor(v + 0.5)


@dataclass(frozen=True)
class CropBox:
    """An integer rectangle of pixels ``[x0, x1) × [y0, y1)``.

    Raises:
        UsageError: coordinates that are not integers, or an empty or inverted rectangle.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise UsageError(f"CropBox.{name} must be an integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise UsageError(f"CropBox needs x1 > x0 and y1 > y0, got {self.as_list()}")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_list(self) -> list[int]:
        """``[x0, y0, x1, y1]`` (the form stored in a protected file)."""
        return [self.x0, self.y0, self.x1, self.y1]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> CropBox:
        """Inverse of :meth:`as_list`; rejects anything but four integers."""
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 4:
            raise UsageError(f"a crop box is a list of four integers [x0, y0, x1, y1], got {values!r}")
        return cls(*values)

    def inside(self, width: int, height: int) -> bool:
        """Whether the box lies within an image of ``width × height`` pixels."""
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height


def _check_box(box: Any) -> tuple[float, float, float, float]:
    b = getattr(box, "box", box)  # a Face or a plain (x0, y0, x1, y1)
    try:
        vals = tuple(float(v) for v in b)
    except (TypeError, ValueError):
        raise UsageError(f"a face box must be four numbers (x0, y0, x1, y1), got {box!r}") from None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"a face box must be four finite numbers (x0, y0, x1, y1), got {box!r}")
    if not (vals[2] > vals[0] and vals[3] > vals[1]):
        raise UsageError(f"a face box needs x1 > x0 and y1 > y0, got {vals}")
    return vals  # type: ignore[return-value]


check_box = _check_box


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two float boxes ``(x0, y0, x1, y1)`` (0 when disjoint)."""
    ax0, ay0, ax1, ay1 = _check_box(a)
    bx0, by0, bx1, by1 = _check_box(b)
    iw, ih = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)


def _check_margin(margin: float) -> float:
    m = float(margin)
    if not (math.isfinite(m) and 0.0 <= m <= 10.0):
        raise UsageError(f"crop margin must lie in [0, 10] (fraction of the face size), got {margin!r}")
    return m


def face_square(box: Any, *, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The unclipped square crop around a face box: ``(x0, y0, x1, y1)``, may reach outside the image.

    Side ``s`` = ``max(w, h) * (1 + 2 * margin)`` rounded to the nearest even integer, at least
    :data:`MIN_CROP`; centred on the box centre (``x0 = round(cx - s / 2)``, halves up). Useful to
    draw a veil's ellipse in the same place for a crop that :func:`face_crop` clipped.

    Args:
        box: ``(x0, y0, x1, y1)`` floats, or a :class:`~faceveil.detect.base.Face`.
        margin: fraction of the longer box side added on each side; ``[0, 10]``.
    """
    x0, y0, x1, y1 = _check_box(box)
    m = _check_margin(margin)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * m)
    s = max(MIN_CROP, 2 * _round_half_up(side / 2.0))
    sx = _round_half_up((x0 + x1) / 2.0 - s / 2.0)
    sy = _round_half_up((y0 + y1) / 2.0 - s / 2.0)
    return sx, sy, sx + s, sy + s


def _fit_axis(a: int, b: int, lo: float, hi: float, size: int) -> tuple[int, int]:
    """One axis of :func:`face_crop`: clip ``[a, b)`` to ``[0, size)``; ``[lo, hi]`` is the visible face."""
    c = (lo + hi) / 2.0  # centre of the visible part of the face box, 0 <= c < size
    a, b = max(a, 0), min(b, size)
    fc = min(math.floor(c), size - 1)  # never lose the pixel holding the face centre
    a, b = min(a, fc), max(b, fc + 1)
    if b - a < MIN_CROP:
        a = _round_half_up(c - MIN_CROP / 2.0)
        a = min(max(a, 0), size - MIN_CROP)
        b = a + MIN_CROP
    if (b - a) % 2:
        if c - a > b - c:
            a += 1
        else:
            b -= 1
    return a, b


def face_crop(box: Any, image_width: int, image_height: int, *,
              margin: float = DEFAULT_MARGIN) -> CropBox | None:
    """The crop to protect for one face (see the module docs for the rule).

    Guarantees: inside the image; width and height even and ``>= MIN_CROP``; contains the centre of
    the face box clipped to the image; square (the :func:`face_square`) when that fits the image.

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels (floats, ``x1``/``y1`` exclusive) or a ``Face``; it may
            reach outside the image.
        image_width, image_height: image size in pixels.
        margin: see :func:`face_square`.

    Returns:
        The :class:`CropBox`, or ``None`` when there is nothing to crop: the image is smaller than
        ``MIN_CROP`` in either direction, or the face box does not overlap the image.

    Raises:
        UsageError: a malformed box, margin or image size.
    """
    for name, v in (("image_width", image_width), ("image_height", image_height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise UsageError(f"{name} must be a positive integer, got {v!r}")
    W, H = int(image_width), int(image_height)
    bx0, by0, bx1, by1 = _check_box(box)
    if W < MIN_CROP or H < MIN_CROP:
        return None
    vx0, vy0, vx1, vy1 = max(bx0, 0.0), max(by0, 0.0), min(bx1, float(W)), min(by1, float(H))
    if vx1 <= vx0 or vy1 <= vy0:
        return None
    sx0, sy0, sx1, sy1 = face_square((bx0, by0, bx1, by1), margin=margin)
    x0, x1 = _fit_axis(sx0, sx1, vx0, vx1, W)
    y0, y1 = _fit_axis(sy0, sy1, vy0, vy1, H)
    return CropBox(x0, y0, x1, y1)


def _check_image(img: Any, what: str = "image") -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise ImageError(f"{what} must be a numpy array (H×W or H×W×C), got {type(img).__name__}")
    if img.ndim not in (2, 3):
        raise ShapeError(f"{what} must be H×W or H×W×C, got shape {img.shape}")
    return img


def _check_crop_in(crop: Any, img: np.ndarray) -> CropBox:
    if not isinstance(crop, CropBox):
        raise UsageError(f"expected a CropBox, got {type(crop).__name__}")
    h, w = img.shape[:2]
    if not crop.inside(w, h):
        raise ShapeError(f"crop {crop.as_list()} reaches outside the {w}×{h} image")
    return crop


def extract(img: np.ndarray, crop: CropBox) -> np.ndarray:
    """A copy of the pixels under ``crop``.

    Shape:
        - img: ``H×W×C`` or ``H×W``, any dtype
        - output: ``crop.height × crop.width (× C)``, same dtype, C-contiguous

    Raises:
        ShapeError: the crop is not inside the image, or the image is not 2-D/3-D.
        ImageError: ``img`` is not a numpy array.
    """
    img = _check_image(img)
    c = _check_crop_in(crop, img)
    return np.array(img[c.y0:c.y1, c.x0:c.x1], copy=True, order="C")


def paste(img: np.ndarray, crop: CropBox, patch: np.ndarray) -> np.ndarray:
    """A new image equal to ``img`` with ``patch`` written over ``crop``; neither input is modified.

    Shape:
        - img: ``H×W×C`` or ``H×W``
        - patch: ``crop.height × crop.width (× C)``, same trailing shape and dtype as ``img``
        - output: like ``img``

    Raises:
        ShapeError: the crop is not inside the image, or the patch does not have the crop's shape.
        ImageError: not numpy arrays, or the patch's dtype differs from the image's (convert first:
            a silent cast would round or wrap values).
    """
    img = _check_image(img)
    patch = _check_image(patch, "patch")
    c = _check_crop_in(crop, img)
    want = (c.height, c.width) + img.shape[2:]
    if patch.shape != want:
        raise ShapeError(f"patch shape {patch.shape} does not match crop {c.as_list()} of the image: "
                         f"expected {want}")
    if patch.dtype != img.dtype:
        raise ImageError(f"patch dtype {patch.dtype} differs from image dtype {img.dtype}; "
                         "convert the patch (round and clip) before pasting")
    out = img.copy()
    out[c.y0:c.y1, c.x0:c.x1] = patch
    return out


def _order_key(item: Any) -> tuple[float, ...]:
    if isinstance(item, CropBox):
        return (item.y0, item.x0, item.y1, item.x1, 0.0)
    box = _check_box(item)
    score = float(getattr(item, "score", 0.0))
    return (box[1], box[0], box[3], box[2], -score)


def order_faces(faces: Iterable[Any]) -> list[Any]:
    """The processing order: raster order of the boxes' top-left corners.

    Sort key ``(y0, x0, y1, x1, -score)`` on the face box (or the crop box for :class:`CropBox`
    items), so the order depends only on the geometry and is total for distinct boxes. The pipeline
    protects faces in this order and recovers them in the reverse order, which makes overlapping
    crops exact: each recovery undoes the last protection that touched those pixels.
    :class:`~faceveil.detect.yunet.YuNetDetector` already returns faces in this order.

    Args:
        faces: ``Face`` objects, ``CropBox`` objects or ``(x0, y0, x1, y1)`` boxes.

    Returns:
        A new list; the input is not modified.
    """
    items = list(faces)
    return sorted(items, key=_order_key)


def crops_overlap(a: CropBox, b: CropBox) -> bool:
    """Whether two crops share at least one pixel (touching edges do not count)."""
    for c in (a, b):
        if not isinstance(c, CropBox):
            raise UsageError(f"expected a CropBox, got {type(c).__name__}")
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1
