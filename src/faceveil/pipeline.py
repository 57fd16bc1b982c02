"""Whole photos: detect -> crop -> veil -> hide -> paste, and the exact inverse.

Protection (PRO-Face S eq. (2), applied per face): for face ``i`` in processing order, take the
square, margin-expanded, even-sized crop ``x`` at its native resolution, veil it (``y = O(x)``, eq. (1)),
derive its ±1 secret map ``k_i`` from the master key, run the network (``ŷ = P(x, y, k_i)``), round
``ŷ`` to 8 bits and paste it back. Crops may overlap: a later face's crop then contains the earlier
face's protected pixels, and recovery (``x̌ = P⁻¹(ŷ, k_i)``, eq. (3)) walks the faces in reverse
order, so every step undoes exactly the step it mirrors. Pixels outside every crop are never
touched, so they come back bit for bit.

Large crops run tile by tile with a halo of the network's receptive radius (``nn/tiling.py``), which
gives the same result as a single pass.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .detect.geometry import CropBox, extract, face_crop, paste
from .errors import ShapeError
from .keys import MasterKey
from .models.zoo import LoadedModel
from .nn.haar import dwt, iwt
from .nn.tiling import tiled_apply
from .obfuscate import apply_veil, get_veil
from .obfuscate.registry import check_strength

log = logging.getLogger(__name__)

TILE = 512  # pixels per tile side for crops larger than this (bounded memory at any face size)


@dataclass
class FacePlan:
    """One face to protect: where it is, which crop is processed, how it is veiled."""

    index: int
    box: tuple[float, float, float, float]
    crop: CropBox
    score: float = 1.0
    veil: str = "blur"
    params: dict = field(default_factory=dict)
    strength: float = 1.0


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 -> float32 1×3×H×W in [0, 1]."""
    # np.require copies only a read-only or non-contiguous array (torch cannot wrap a read-only one)
    return torch.from_numpy(np.require(a, requirements=["C", "W"])).permute(2, 0, 1)[None].float().div(255.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float 1×3×H×W -> uint8 H×W×3 (round half to even, clipped): the 8-bit step of the scheme."""
    return t[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _secret_map(master: MasterKey | None, index: int, h: int, w: int, model: LoadedModel) -> torch.Tensor | None:
    if not model.keyed:
        return None
    if master is None:
        raise ShapeError("a keyed model needs the master key")
    return master.key_for(model.net, index, h, w)


def _run(model: LoadedModel, fn, inputs: list[torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return tiled_apply(fn, inputs, tile=TILE, halo=model.net.receptive_radius)


def protect_face(crop_rgb: np.ndarray, plan: FacePlan, master: MasterKey | None,
                 model: LoadedModel) -> tuple[np.ndarray, dict]:
    """Veil and hide one crop. Returns the 8-bit protected crop and the veil's concrete params."""
    h, w = crop_rgb.shape[:2]
    if h % 2 or w % 2:
        raise ShapeError(f"face crops must have even sides, got {w}×{h}")
    x = to_tensor(crop_rgb)
    with torch.inference_mode():
        y, params = apply_veil(x, plan.veil, plan.params, strength=plan.strength)
    k = _secret_map(master, plan.index, h, w, model)
    net = model.net
    if k is None:
        y_hat = _run(model, lambda a, b: net.protect(a, b, None)[0], [x, y])
    else:
        # a scrambling network: the whole crop is scrambled once, then hidden tile by tile
        if k.shape[1] > 1:
            x = net.payload(x, y, k[:, 1:])
        y_hat = _run(model, lambda a, b, c: net.protect(a, b, c, scrambled=True)[0], [x, y, k[:, :1]])
    return to_uint8(y_hat), params


def recover_face(crop_rgb: np.ndarray, index: int, master: MasterKey | None, model: LoadedModel,
                 seed: int = 0) -> np.ndarray:
    """Lift the veil from one protected crop with the face's secret map (eq. (14)-(17))."""
    h, w = crop_rgb.shape[:2]
    y_hat = to_tensor(crop_rgb)
    k = _secret_map(master, index, h, w, model)
    net = model.net
    if k is None:  # IMN: recovery from a Gaussian auxiliary, seeded for reproducibility; it is
        # carried at full resolution (iwt) so that it tiles with the image, and split back per tile
        gen = torch.Generator().manual_seed(seed + index)
        aux = torch.randn((1, 12, h // 2, w // 2), generator=gen)
        x = _run(model, lambda a, n: net.recover(a, None, aux=dwt(n))[0], [y_hat, iwt(aux)])
    else:
        # both branches of the reverse pass, tile by tile: the payload and the veil
        xy = _run(model, lambda a, c: torch.cat(net.recover(a, c), 1), [y_hat, k[:, :1]])
        x = xy[:, :3] if k.shape[1] == 1 else net.unpayload(xy[:, :3], xy[:, 3:], k[:, 1:])
    return to_uint8(x)


def plan_faces(image_w: int, image_h: int, faces: list, veil: str, params: dict | None,
               margin: float, strength: float = 1.0, rng: random.Random | None = None) -> list[FacePlan]:
    """Turn detections (in processing order) into plans with crops; faces whose crop would be
    smaller than the minimum are skipped with a log line.

    A veil with an ``identity`` hook (what replaces the face) draws it per face from ``rng`` (a
    fresh, unseeded generator when ``None``); one with a ``place`` hook takes its geometry from the
    face's landmarks when the detector gave them. Explicit ``params`` override both."""
    v = get_veil(veil)
    strength = check_strength(strength)
    rng = rng if rng is not None else random.Random()
    plans: list[FacePlan] = []
    for f in faces:
        crop = face_crop(f.box, image_w, image_h, margin=margin)
        if crop is None:
            log.warning("skipping a face at %s: its crop is too small", [round(v) for v in f.box])
            continue
        p: dict = {}
        if v.identity is not None:
            p.update(v.identity(rng))
        landmarks = getattr(f, "landmarks", None)
        if v.place is not None and landmarks is not None:
            p.update(v.place(np.asarray(landmarks, np.float64) - [crop.x0, crop.y0], crop.width, crop.height))
        p.update(params or {})
        plans.append(FacePlan(len(plans), tuple(float(x) for x in f.box), crop, float(f.score), veil, p,
                              strength))
    return plans


def protect_array(rgb: np.ndarray, plans: list[FacePlan], master: MasterKey | None,
                  model: LoadedModel, progress=None) -> tuple[np.ndarray, list[FacePlan]]:
    """Protect every planned face in order. Returns a new array and the plans with concrete veil
    parameters filled in; ``rgb`` is not modified."""
    out = rgb
    done: list[FacePlan] = []
    for plan in plans:
        patch, params = protect_face(extract(out, plan.crop), plan, master, model)
        out = paste(out, plan.crop, patch)
        done.append(FacePlan(plan.index, plan.box, plan.crop, plan.score, plan.veil, params))
        if progress:
            progress(1)
    return out, done


def anonymize_array(rgb: np.ndarray, plans: list[FacePlan], progress=None) -> tuple[np.ndarray, list[FacePlan]]:
    """Veil every planned face in order and nothing else: the irreversible ``faceveil anonymize``
    (no network, no key; the original faces are not kept anywhere). Returns a new array and the
    plans with concrete veil parameters; ``rgb`` is not modified."""
    out = rgb
    done: list[FacePlan] = []
    for plan in plans:
        x = to_tensor(extract(out, plan.crop))
        with torch.inference_mode():
            y, params = apply_veil(x, plan.veil, plan.params, strength=plan.strength)
        out = paste(out, plan.crop, to_uint8(y))
        done.append(FacePlan(plan.index, plan.box, plan.crop, plan.score, plan.veil, params, plan.strength))
        if progress:
            progress(1)
    return out, done


def recover_array(rgb: np.ndarray, faces: list[tuple[int, CropBox]], master: MasterKey | None,
                  model: LoadedModel, progress=None) -> np.ndarray:
    """Recover faces given as ``(index, crop)`` pairs, walking them in reverse processing order."""
    out = rgb
    for index, crop in sorted(faces, key=lambda t: t[0], reverse=True):
        out = paste(out, crop, recover_face(extract(out, crop), index, master, model))
        if progress:
            progress(1)
    return out
