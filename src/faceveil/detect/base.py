"""The detector contract: :class:`Face`, the :class:`Detector` protocol and the registry of detectors.

Coordinates are pixels of the image passed to ``detect`` (already EXIF-rotated by ``io``), with the
origin at the top-left corner of the top-left pixel; ``x`` grows to the right, ``y`` downwards. A box
``(x0, y0, x1, y1)`` covers ``x0 <= x < x1`` and ``y0 <= y < y1`` (``x1``/``y1`` exclusive), so its
width is ``x1 - x0``. Boxes are floats and may reach past the image border when a face is cut off by
it; :func:`faceveil.detect.geometry.face_crop` clips.

Detectors are registered by name with :func:`register_detector`; :func:`get_detector` builds one
the first time it is asked for with given options and then returns the same instance (a detector
holds no per-image state, so sharing it is safe).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ImageError, ShapeError, UsageError

__all__ = [
    "LANDMARK_NAMES",
    "Face",
    "Detector",
    "DETECTORS",
    "register_detector",
    "get_detector",
    "check_rgb",
]

#: Order of the five landmarks in :attr:`Face.landmarks` (the subject's right eye is the one on
#: the *image-left* side of a frontal face). This is YuNet's / libfacedetection's order and the
#: order of the ArcFace/InsightFace five-point template.
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in pixels of the input image, ``x1``/``y1`` exclusive; floats; may
            extend past the image border for a face cut off by it.
        score: detector confidence in ``[0, 1]``.
        landmarks: ``5×2`` float64 array of ``(x, y)`` points in the order of
            :data:`LANDMARK_NAMES` (subject's right eye first, i.e. image-left for a frontal face),
            or ``None`` when the detector gives none. Not part of equality or hashing.

    Shape:
        - box: ``(4,)`` tuple of float
        - landmarks: ``(5, 2)`` or ``None``
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            box = tuple(float(v) for v in self.box)
            score = float(self.score)
        except (TypeError, ValueError):
            raise UsageError(f"a face box must be four numbers, got {self.box!r}") from None
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise UsageError(f"a face box must be four finite numbers (x0, y0, x1, y1), got {self.box!r}")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise UsageError(f"a face box needs x1 > x0 and y1 > y0, got {box}")
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise UsageError(f"a face score must lie in [0, 1], got {self.score!r}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", score)
        if self.landmarks is not None:
            lm = np.array(self.landmarks, dtype=np.float64)  # a private copy
            if lm.shape != (5, 2):
                raise ShapeError(f"face landmarks must be 5×2, got shape {lm.shape}")
            lm.setflags(write=False)
            object.__setattr__(self, "landmarks", lm)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@runtime_checkable
class Detector(Protocol):
    """Anything with a ``name`` and ``detect(rgb) -> list[Face]``.

    ``detect`` must not modify its input and must be deterministic for a given input. Implementations
    document the order of the faces they return.

    Shape:
        - rgb: ``H×W×3`` ``uint8`` RGB
    """

    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


#: name -> factory (usually the class) taking keyword options.
DETECTORS: dict[str, Callable[..., Detector]] = {}

_INSTANCES: dict[tuple[str, tuple[tuple[str, Any], ...]], Detector] = {}
_LOCK = threading.Lock()


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """Class decorator: ``@register_detector("yunet")`` puts the factory in :data:`DETECTORS`."""

    def deco(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} registered twice")
        DETECTORS[name] = factory
        return factory

    return deco


def get_detector(name: str = "yunet", **opts: Any) -> Detector:
    """The detector ``name`` built with ``opts``; cached, so a second call returns the same object.

    Raises:
        UsageError: unknown name, or options that are not hashable values.
    """
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise UsageError(
            f"unknown face detector {name!r}; choose one of: {', '.join(sorted(DETECTORS))}"
        ) from None
    key = (name, tuple(sorted(opts.items())))
    try:
        hash(key)
    except TypeError:
        raise UsageError(f"detector options must be plain values (numbers, strings), got {opts!r}") from None
    with _LOCK:
        det = _INSTANCES.get(key)
        if det is None:
            det = factory(**opts)
            _INSTANCES[key] = det
    return det


def check_rgb(rgb: object, what: str = "image") -> np.ndarray:
    """Validate the detection-layer image convention and return the array unchanged.

    Raises:
        ImageError: not a numpy ``uint8`` array.
        ShapeError: not ``H×W×3`` with ``H, W >= 1``.

    Shape:
        - rgb: ``H×W×3`` ``uint8``
    """
    if not isinstance(rgb, np.ndarray):
        raise ImageError(f"{what} must be a numpy uint8 H×W×3 RGB array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ImageError(f"{what} must be uint8 RGB (0-255), got dtype {rgb.dtype}; convert in io first")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ShapeError(f"{what} must be H×W×3 RGB, got shape {rgb.shape}")
    return rgb
