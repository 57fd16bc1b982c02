"""Face detection and crop/paste-back geometry.

``get_detector()`` gives the default multi-scale YuNet detector; ``face_crop`` turns a face box into
the integer crop the pipeline protects; ``extract``/``paste`` cut and put back pixels exactly.
Images at this layer are ``H×W×3`` ``uint8`` RGB numpy arrays, already EXIF-rotated by ``io``.
"""

from __future__ import annotations

from .base import DETECTORS, LANDMARK_NAMES, Detector, Face, check_rgb, get_detector, register_detector
from .geometry import (
    DEFAULT_MARGIN,
    MIN_CROP,
    CropBox,
    crops_overlap,
    extract,
    face_crop,
    face_square,
    order_faces,
    paste,
)
from .yunet import YuNetDetector

__all__ = [
    "DETECTORS",
    "LANDMARK_NAMES",
    "Detector",
    "Face",
    "check_rgb",
    "get_detector",
    "register_detector",
    "DEFAULT_MARGIN",
    "MIN_CROP",
    "CropBox",
    "crops_overlap",
    "extract",
    "face_crop",
    "face_square",
    "order_faces",
    "paste",
    "YuNetDetector",
]
