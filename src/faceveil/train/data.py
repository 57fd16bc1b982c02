"""Training samples: face crops and natural-image crops, veiled with a random veil of random strength.

PRO-Face S §V-A-2: the veil and its strength are drawn per sample (blur σ 6-10 at k 21, pixelate
5-13, median 8-22 at 112 px), scaled with the crop size. A face image stands for one detected face
crop of a random size in ``[crop_min, crop_max]``; the veil is applied to the whole crop (as the
photo pipeline does) and then a ``patch``×``patch`` window is cut from the original and the veil at
the same place, because the network is fully convolutional and sees only a local neighbourhood.
Natural images (random crops) are veiled the same way: hiding is largely content-agnostic.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UsageError
from ..obfuscate import apply_veil, get_veil
from .config import DataConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm"}


def list_images(roots: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for r in roots:
        r = Path(r)
        if r.is_file() and r.suffix.lower() in IMAGE_SUFFIXES:
            out.append(r)
        elif r.is_dir():
            out.extend(sorted(p for p in r.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            raise UsageError(f"training data folder not found: {r} (run `make data` first)")
    return out


def load_rgb(path: Path, max_side: int | None = None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_side and max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()


@dataclass
class Pools:
    faces: list[np.ndarray]
    natural: list[np.ndarray]
    holdout: list[np.ndarray]


def load_pools(cfg: DataConfig) -> Pools:
    face_paths = list_images(cfg.faces)
    if len(face_paths) <= cfg.holdout:
        raise UsageError(f"only {len(face_paths)} face images found in {cfg.faces}")
    # hold out the last N of each folder's sorted list for validation
    holdout_set: set[Path] = set()
    per = max(1, cfg.holdout // max(1, len(cfg.faces)))
    for r in cfg.faces:
        paths = [p for p in face_paths if Path(r) in p.parents]
        holdout_set.update(paths[-per:])
    faces = [load_rgb(p) for p in face_paths if p not in holdout_set]
    hold = [load_rgb(p) for p in sorted(holdout_set)]
    natural = [load_rgb(p, max_side=640) for p in list_images(cfg.natural)] if cfg.natural else []
    log.info("loaded %d training faces, %d held out, %d natural images", len(faces), len(hold), len(natural))
    return Pools(faces, natural, hold)


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0)


def _jitter(x: torch.Tensor, rng: random.Random, s: float) -> torch.Tensor:
    if s <= 0:
        return x
    b = 1 + rng.uniform(-s, s)
    c = 1 + rng.uniform(-s, s)
    sat = 1 + rng.uniform(-s, s)
    mean = x.mean()
    x = (x - mean) * c + mean
    x = x * b
    grey = x.mean(dim=0, keepdim=True)
    x = (x - grey) * sat + grey
    return x.clamp(0, 1)


class VeiledSampler:
    """Draws ``(x, y, veil_name)`` training triples, deterministic for a given seed."""

    def __init__(self, pools: Pools, cfg: DataConfig, seed: int = 0) -> None:
        self.pools = pools
        self.cfg = cfg
        self.rng = random.Random(seed)
        for v in cfg.veils:
            get_veil(v)  # fail early on an unknown veil name
        if not pools.faces and not pools.natural:
            raise UsageError("no training images")

    def state(self) -> object:
        return self.rng.getstate()

    def set_state(self, st: object) -> None:
        self.rng.setstate(st)

    def _crop_source(self, size: int) -> torch.Tensor:
        rng, cfg = self.rng, self.cfg
        use_nat = self.pools.natural and (not self.pools.faces or rng.random() < cfg.natural_fraction)
        if use_nat:
            img = self.pools.natural[rng.randrange(len(self.pools.natural))]
            h, w = img.shape[:2]
            side = rng.randint(min(size, h, w) // 2 or 1, min(h, w))
            y0, x0 = rng.randint(0, h - side), rng.randint(0, w - side)
            t = _to_tensor(img[y0:y0 + side, x0:x0 + side])
        else:
            img = self.pools.faces[rng.randrange(len(self.pools.faces))]
            h, w = img.shape[:2]
            side = min(h, w)
            # a square, slightly jittered crop (the pipeline's square face crop)
            s = max(8, int(side * rng.uniform(0.85, 1.0)))
            y0, x0 = rng.randint(0, h - s), rng.randint(0, w - s)
            t = _to_tensor(img[y0:y0 + s, x0:x0 + s])
        t = F.interpolate(t[None], size=(size, size), mode="bicubic", align_corners=False,
                          antialias=True)[0].clamp(0, 1)
        if rng.random() < 0.5:
            t = t.flip(-1)
        return _jitter(t, rng, cfg.jitter)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        rng, cfg = self.rng, self.cfg
        size = rng.randint(max(cfg.crop_min, cfg.patch), max(cfg.crop_max, cfg.patch))
        size -= size % 2
        x = self._crop_source(size)
        veil = rng.choice(cfg.veils)
        params = get_veil(veil).sample(rng, size)
        y, _ = apply_veil(x[None], veil, params)
        p = cfg.patch
        y0, x0 = rng.randint(0, size - p), rng.randint(0, size - p)
        return x[:, y0:y0 + p, x0:x0 + p], y[0, :, y0:y0 + p, x0:x0 + p], veil

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        xs, ys, names = zip(*(self.sample() for _ in range(n)))
        return torch.stack(xs), torch.stack(ys), list(names)


def fixed_validation_set(pools: Pools, cfg: DataConfig, n: int = 48, size: int = 112,
                         seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A fixed set of held-out faces at ``size`` px, each veil in turn at its test setting."""
    rng = random.Random(seed)
    imgs = pools.holdout or pools.faces
    xs, ys, names = [], [], []
    for i in range(n):
        a = imgs[rng.randrange(len(imgs))]
        side = min(a.shape[:2])
        t = _to_tensor(a[:side, :side])
        t = F.interpolate(t[None], size=(size, size), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        veil = cfg.veils[i % len(cfg.veils)]
        y, _ = apply_veil(t, veil)
        xs.append(t[0])
        ys.append(y[0])
        names.append(veil)
    return torch.stack(xs), torch.stack(ys), names
