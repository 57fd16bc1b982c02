"""A second, independent face detector for the detection-rate metrics: RetinaFace (Deng et al. 2020)
with a MobileNetV1-0.25 backbone, in the layout of biubug6/Face-Detector-1MB-with-landmark (commit
2b07565, ``weights/mobilenet0.25_Final.pth``: WIDER FACE, MIT licence).

Evaluation only, like the MobileFaceNet judge (:mod:`.identity`): the network below is written from
the published architecture so that the checkpoint's state dict loads key for key; nothing is
downloaded. The weights come from the project's data (``weights_face.tar.gz``, extracted by
``make data`` to ``.cache/data/weights``; ``FACEVEIL_RETINAFACE`` overrides) and are verified
against their sha256. It is not registered in :data:`faceveil.detect.DETECTORS`: the pipeline never
depends on evaluation weights.

Architecture (433 k parameters):

* **backbone** MobileNetV1 at width 0.25: a 3×3/2 conv to 8 channels, then depthwise-separable
  blocks (3×3 depthwise → BN → ReLU → 1×1 → BN → ReLU) to 16, 32/2, 32, 64/2, 64 (``stage1``,
  stride 8), 128/2 and 5 × 128 (``stage2``, stride 16), 256/2 and 256 (``stage3``, stride 32);
* **FPN** (Lin et al. 2017): 1×1 lateral convs to 64 channels; the coarser level is upsampled
  (nearest) onto the finer one, added, and smoothed by a 3×3 conv (``merge2``, ``merge1``);
* **SSH** context module per level (Najibi et al. 2017): the concatenation of a 3×3 branch (32 ch)
  and two stacked-3×3 branches equivalent to 5×5 and 7×7 receptive fields (16 ch each), then ReLU;
* **heads** per level: 1×1 convs giving, for each of 2 anchors per cell, 2 class logits, 4 box
  offsets and 10 landmark offsets.

All activations are plain ReLU, as in that repository's ``models/net.py`` (the Pytorch_Retinaface
original uses a leaky slope of 0.1). Checked on 12 LFW photos at threshold 0.3: with ReLU every
central face scores ≥ 0.998 and the number of boxes equals YuNet's on 11 of 12 (one extra on the
twelfth); with a 0.1 leak the same weights score central faces down to 0.48 and add up to five boxes.

Anchors (SSD-style prior boxes): at each level with stride ``s`` ∈ (8, 16, 32), one anchor per size
in ((10, 20), (32, 64), (128, 256)) pixels, centred on every cell ``((j + ½)·s, (i + ½)·s)``, cells
in row-major order, anchors of a cell consecutive (the order of the heads' reshaped outputs).
Decoding (variances 0.1, 0.2): centre ``= a_c + 0.1·δ_c·a_wh``, size ``= a_wh·exp(0.2·δ_wh)``,
landmark ``= a_c + 0.1·δ_l·a_wh``. Input: **BGR**, 0-255, minus the mean (104, 117, 123), at the
image's own size. Greedy NMS at IoU 0.4.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..detect.base import Face, check_rgb
from ..errors import ModelError, UsageError
from ..models.zoo import sha256_file

log = logging.getLogger(__name__)

RETINAFACE_FILE = "retinaface_mobilenet0.25_Final.pth"
RETINAFACE_SHA256 = "ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1"
DEFAULT_WEIGHTS_DIRS = (Path(".cache/data/weights"),)
DATA_TARBALL = Path("../shared/data/weights_face.tar.gz")

STEPS = (8, 16, 32)
ANCHOR_SIZES = ((10, 20), (32, 64), (128, 256))
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
#: Score at which a face counts as detected (the source repository's display threshold).
DEFAULT_THRESHOLD = 0.6
NMS_IOU = 0.4


# -- the network ------------------------------------------------------------------------------------

def _conv_bn(inp: int, oup: int, k: int = 3, stride: int = 1, *, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """conv (no bias) → BN (→ ReLU). Indices 0, 1 (, 2) match the checkpoint's keys."""
    layers: list[nn.Module] = [nn.Conv2d(inp, oup, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(oup)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _separable(inp: int, oup: int, stride: int) -> nn.Sequential:
    """Depthwise 3×3 (stride) → BN → ReLU → pointwise 1×1 → BN → ReLU (keys 0, 1, 3, 4)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(),
    )


class MobileNetV1Quarter(nn.Module):
    """MobileNetV1 at width 0.25, returning the stride-8, -16 and -32 feature maps (64, 128, 256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 8, 3, 2), _separable(8, 16, 1), _separable(16, 32, 2),
                                    _separable(32, 32, 1), _separable(32, 64, 2), _separable(64, 64, 1))
        self.stage2 = nn.Sequential(_separable(64, 128, 2), *[_separable(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_separable(128, 256, 2), _separable(256, 256, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class FPN(nn.Module):
    """Top-down feature pyramid: 1×1 laterals to ``out`` channels, nearest upsampling, 3×3 merge."""

    def __init__(self, in_channels: tuple[int, int, int] = (64, 128, 256), out: int = 64) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out, 1)
        self.output2 = _conv_bn(in_channels[1], out, 1)
        self.output3 = _conv_bn(in_channels[2], out, 1)
        self.merge1 = _conv_bn(out, out, 3)
        self.merge2 = _conv_bn(out, out, 3)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        p1, p2, p3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Single-stage headless context module: ``ReLU(3×3 ‖ 5×5-equivalent ‖ 7×7-equivalent)``."""

    def __init__(self, inp: int = 64, out: int = 64) -> None:
        super().__init__()
        q = out // 4
        self.conv3X3 = _conv_bn(inp, out // 2, relu=False)
        self.conv5X5_1 = _conv_bn(inp, q)
        self.conv5X5_2 = _conv_bn(q, q, relu=False)
        self.conv7X7_2 = _conv_bn(q, q)
        self.conv7x7_3 = _conv_bn(q, q, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        mid = self.conv5X5_1(x)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(mid), self.conv7x7_3(self.conv7X7_2(mid))], 1))


class _Head(nn.Module):
    """A 1×1 conv predicting ``per_anchor`` values for each anchor; output ``B×(H·W·A)×per_anchor``."""

    def __init__(self, inp: int, anchors: int, per_anchor: int) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(inp, anchors * per_anchor, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace-MobileNet0.25.

    Shape:
        x: ``B×3×H×W`` BGR minus :data:`BGR_MEAN` (0-255 scale). Returns ``(loc B×N×4,
        scores B×N (face probability), landmarks B×N×10)``, ``N`` = the number of anchors of
        :func:`prior_boxes` for ``H×W``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = MobileNetV1Quarter()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        a = len(ANCHOR_SIZES[0])
        self.ClassHead = nn.ModuleList([_Head(64, a, 2) for _ in STEPS])
        self.BboxHead = nn.ModuleList([_Head(64, a, 4) for _ in STEPS])
        self.LandmarkHead = nn.ModuleList([_Head(64, a, 10) for _ in STEPS])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.fpn(self.body(x))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], 1)
        cls = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], 1)
        lmk = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], 1)
        return loc, F.softmax(cls, dim=-1)[..., 1], lmk


def prior_boxes(h: int, w: int) -> Tensor:
    """Anchors ``(cx, cy, w, h)`` in pixels for an ``h×w`` input, in the heads' output order.

    Shape: -> ``N×4``, ``N = Σ_levels ⌈h/s⌉·⌈w/s⌉·2``."""
    out = []
    for step, sizes in zip(STEPS, ANCHOR_SIZES):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        cy, cx = torch.meshgrid((torch.arange(fh, dtype=torch.float32) + 0.5) * step,
                                (torch.arange(fw, dtype=torch.float32) + 0.5) * step, indexing="ij")
        per_size = [torch.stack([cx, cy, torch.full_like(cx, s), torch.full_like(cx, s)], -1) for s in sizes]
        out.append(torch.stack(per_size, 2).reshape(-1, 4))  # cell-major, anchors of a cell consecutive
    return torch.cat(out)


def decode(loc: Tensor, lmk: Tensor, priors: Tensor) -> tuple[Tensor, Tensor]:
    """Offsets -> boxes ``(x0, y0, x1, y1)`` and landmarks ``5×(x, y)`` in pixels.

    Shape: ``N×4, N×10, N×4 -> N×4, N×5×2``."""
    c, wh = priors[:, :2], priors[:, 2:]
    centre = c + loc[:, :2] * VARIANCE[0] * wh
    size = wh * torch.exp(loc[:, 2:] * VARIANCE[1])
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    points = c[:, None, :] + lmk.reshape(-1, 5, 2) * VARIANCE[0] * wh[:, None, :]
    return boxes, points


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Greedy non-maximum suppression; kept indices, best score first."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        order = rest[inter / (area[i] + area[rest] - inter + 1e-12) <= iou]
    return keep


# -- weights ----------------------------------------------------------------------------------------

def find_weights(path: str | Path | None = None) -> Path:
    """The checkpoint: ``path``, else ``$FACEVEIL_RETINAFACE``, else
    ``.cache/data/weights/retinaface_mobilenet0.25_Final.pth``. Raises :class:`ModelError` saying
    what to do."""
    if path:
        cands = [Path(path)]
    elif os.environ.get("FACEVEIL_RETINAFACE"):
        cands = [Path(os.environ["FACEVEIL_RETINAFACE"])]
    else:
        cands = [d / RETINAFACE_FILE for d in DEFAULT_WEIGHTS_DIRS]
    for c in cands:
        if c.is_file():
            return c
    hint = (f"run `make data` (extracts {DATA_TARBALL})" if DATA_TARBALL.exists()
            else f"point FACEVEIL_RETINAFACE at {RETINAFACE_FILE}")
    raise ModelError(f"RetinaFace weights (evaluation only) not found (looked for "
                     f"{', '.join(map(str, cands))}); {hint}, or pass --no-retinaface")


def load_retinaface(path: str | Path | None = None) -> tuple[RetinaFace, str]:
    """Build the network and load the verified checkpoint with ``weights_only=True``."""
    p = find_weights(path)
    sha = sha256_file(p)
    if sha != RETINAFACE_SHA256:
        raise ModelError(f"{p} fails its sha256 check (expected {RETINAFACE_SHA256[:12]}…, got {sha[:12]}…): "
                         "re-extract it from weights_face.tar.gz")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelError(f"cannot read {p}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{p} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    from .identity import frozen

    return frozen(RetinaFace(), state, p, "RetinaFace-MobileNet0.25"), sha


# -- the detector -----------------------------------------------------------------------------------

class RetinaFaceDetector:
    """The :class:`faceveil.detect.Detector` protocol over :class:`RetinaFace`, single scale.

    ``detect(rgb)`` returns faces scoring at least ``threshold``, best first; ``detect_batch``
    runs same-sized images in one forward pass. Landmarks come in
    :data:`faceveil.detect.LANDMARK_NAMES` order (image-left eye first, as YuNet's)."""

    name = "retinaface"

    def __init__(self, weights: str | Path | None = None, *, threshold: float = DEFAULT_THRESHOLD,
                 nms_iou: float = NMS_IOU) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"RetinaFace threshold must lie in [0, 1], got {threshold!r}")
        self.net, self.sha256 = load_retinaface(weights)
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        self._priors: dict[tuple[int, int], Tensor] = {}

    def _prep(self, rgbs: list[np.ndarray]) -> Tensor:
        x = torch.from_numpy(np.stack([check_rgb(r)[:, :, ::-1] for r in rgbs]).astype(np.float32))
        x = x - torch.tensor(BGR_MEAN)
        return x.permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def detect_batch(self, rgbs: list[np.ndarray]) -> list[list[Face]]:
        if not rgbs:
            return []
        h, w = rgbs[0].shape[:2]
        if any(r.shape[:2] != (h, w) for r in rgbs):
            raise UsageError("detect_batch takes images of one size")
        loc, score, lmk = self.net(self._prep(rgbs))
        priors = self._priors.get((h, w))
        if priors is None:
            priors = self._priors[(h, w)] = prior_boxes(h, w)
        out = []
        for b in range(len(rgbs)):
            keep = score[b] >= self.threshold
            if not keep.any():
                out.append([])
                continue
            boxes, points = decode(loc[b][keep], lmk[b][keep], priors[keep])
            s = score[b][keep].double().numpy()
            bx = boxes.double().numpy()
            pts = points.double().numpy()
            faces = []
            for i in nms(bx, s, self.nms_iou):
                x0, y0, x1, y1 = bx[i]
                if x1 > x0 and y1 > y0:
                    faces.append(Face((x0, y0, x1, y1), float(min(max(s[i], 0.0), 1.0)), pts[i]))
            out.append(faces)
        return out

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detect_batch([rgb])[0]
