"""Training objectives. Every function returns a dict of named terms with ``"loss"`` the total.

PRO-Face S §IV-E: protection eq. (18), correct recovery eq. (19), RandWR eq. (20)-(21), ObfsWR
eq. (22), total eq. (23). LPIPS (eq. (18), (21)) needs ImageNet weights that are not available
offline, so the perceptual distance is pluggable: ``msgrad`` (multi-scale gradient L1, default),
``msssim`` (1 − MS-SSIM) or ``lpips`` when the user supplies backbone weights.
IMN §2.4: embedding eq. (9), recovering eq. (10), low-frequency wavelet loss eq. (11), total (12).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..eval.metrics import gaussian_window, ssim_terms
from ..nn.haar import dwt, low_band
from .config import LossConfig

Distance = Callable[[Tensor, Tensor], Tensor]


def quantize_ste(t: Tensor) -> Tensor:
    """8-bit rounding and clipping with a straight-through gradient: what a saved PNG holds."""
    q = torch.round(t.clamp(0, 1) * 255.0) / 255.0
    return t + (q - t).detach()


def per_image_mean(t: Tensor) -> Tensor:
    return t.flatten(1).mean(dim=1)


def pixel_distance(kind: str) -> Distance:
    if kind == "l1":
        return lambda a, b: per_image_mean((a - b).abs())
    if kind == "l2":
        return lambda a, b: per_image_mean((a - b) ** 2)
    if kind == "charbonnier":
        return lambda a, b: per_image_mean(torch.sqrt((a - b) ** 2 + 1e-6))
    raise ValueError(f"unknown pixel loss {kind!r}")


def dyadic_pairs(a: Tensor, b: Tensor, scales: int, min_side: int):
    """``(a, b)`` at full, 1/2, 1/4 … resolution (2×2 average pooling), ``scales`` levels at most,
    stopping before a side gets shorter than ``min_side``."""
    for s in range(scales):
        if s:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        if min(a.shape[-2:]) < min_side:
            return
        yield a, b


def msgrad_distance(a: Tensor, b: Tensor, scales: int = 3) -> Tensor:
    """Multi-scale gradient L1: compares horizontal and vertical differences at 1, 1/2, 1/4
    resolution; sensitive to texture and edges, like a perceptual metric, and needs no weights."""
    total = a.new_zeros(a.shape[0])
    for a, b in dyadic_pairs(a, b, scales, 2):
        d = a - b
        gx = d[..., :, 1:] - d[..., :, :-1]
        gy = d[..., 1:, :] - d[..., :-1, :]
        total = total + per_image_mean(gx.abs()) + per_image_mean(gy.abs())
    return total


def ssim_components(a: Tensor, b: Tensor, win: int = 11, sigma: float = 1.5) -> tuple[Tensor, Tensor]:
    """Per-image SSIM and contrast-structure term with a Gaussian window (Wang et al. 2004
    settings: 11×11, σ 1.5, K1 0.01, K2 0.03, data range 1), valid region only."""
    win = min(win, a.shape[-1], a.shape[-2])
    ssim_map, cs_map = ssim_terms(a, b, gaussian_window(win, sigma, a.dtype).to(a.device))
    return per_image_mean(ssim_map), per_image_mean(cs_map)


def msssim_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 − MS-SSIM (standard 5-scale weights, fewer scales for small images)."""
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    vals = []
    for i, w in enumerate(weights):
        ssim, cs = ssim_components(a, b)
        last = i == len(weights) - 1 or min(a.shape[-2:]) < 22
        vals.append((ssim if last else cs).clamp_min(1e-6) ** w)
        if last:
            break
        a = F.avg_pool2d(a, 2)
        b = F.avg_pool2d(b, 2)
    out = vals[0]
    for v in vals[1:]:
        out = out * v
    return 1 - out


def perceptual_distance(cfg: LossConfig) -> Distance:
    if cfg.perceptual == "msgrad":
        return msgrad_distance
    if cfg.perceptual == "msssim":
        return msssim_distance
    if cfg.perceptual == "lpips":
        from .lpips import LPIPS

        return LPIPS.from_file(cfg.lpips_weights)
    raise ValueError(f"unknown perceptual loss {cfg.perceptual!r}")


def _blur(t: Tensor, sigma: float, win: int) -> Tensor:
    c = t.shape[1]
    g = gaussian_window(win, sigma, t.dtype).to(t.device)
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, win)
    ky = g.view(1, 1, -1, 1).expand(c, 1, win, 1)
    t = F.pad(t, (win // 2,) * 4, mode="replicate")
    return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)


def detail_corr2(a: Tensor, b: Tensor, scales: int = 2, eps: float = 1e-5) -> Tensor:
    """Shared fine structure of ``a`` and ``b``, per image, in [0, 1].

    Both are split into a detail layer (the image minus its Gaussian blur, σ 1.5) at ``scales``
    dyadic scales; in 9×9 Gaussian windows (σ 2) the correlation of the two detail layers — the
    structure term of SSIM — is squared, so an inverted copy counts as much as a faithful one, and
    averaged over windows, channels and scales. The detail layer is where identity lives and what
    every veil removes. ``benchmarks/photo_quality.py`` reports it (four scales, against x − y) for
    the wrong-password faces, uniform noise and the original faces of a real photo; the training
    log's ``val_*_detail`` fields report it for the veil. ``eps`` keeps flat windows near 0."""
    total = a.new_zeros(a.shape[0])
    n = 0
    for a, b in dyadic_pairs(a, b, scales, 9):
        da, db = a - _blur(a, 1.5, 7), b - _blur(b, 1.5, 7)
        mu_a, mu_b = _blur(da, 2.0, 9), _blur(db, 2.0, 9)
        saa = (_blur(da * da, 2.0, 9) - mu_a ** 2).clamp_min(0)
        sbb = (_blur(db * db, 2.0, 9) - mu_b ** 2).clamp_min(0)
        sab = _blur(da * db, 2.0, 9) - mu_a * mu_b
        total = total + per_image_mean(sab ** 2 / ((saa + eps) * (sbb + eps)))
        n += 1
    return total / max(n, 1)


def decorr_reference(x: Tensor, y: Tensor, target: str) -> Tensor:
    """What the wrong-key output must not share structure with: the original ``x``, or only the
    residual ``x − y`` — what the veil removed. The residual is the right reference at coarse
    scales, where a blurred veil still shares the face's layout with x (and where ObfsWR's target,
    the veil, must be allowed). Stage 2 (decorrelation from x at two scales) still left the coarse
    layout of large faces in its wrong-key output: against x − y at four scales it scored 0.09-0.16
    on ``examples/group.jpg``, uniform noise 0.015-0.022 (``python benchmarks/photo_quality.py
    --model runs/proface-s-randwr-ft/best.safetensors --veil blur``)."""
    if target == "x":
        return x
    if target == "residual":
        return x - y
    raise ValueError(f"unknown decorrelation target {target!r} (x or residual)")


def range_excess(t: Tensor) -> Tensor:
    """Mean distance of ``t`` outside [0, 1], per image."""
    return per_image_mean(F.relu(t - 1) + F.relu(-t))


def triplet(dist: Distance, anchor: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """Eq. (21): ``max(d(A, P) − d(A, N) + margin, 0)``, per image."""
    return F.relu(dist(anchor, pos) - dist(anchor, neg) + margin)


class ProFaceSLoss:
    """Eq. (23): ``λ1·L_P + λ2·L_R + λ3·L_WR``.

    Takes the original ``x``, veil ``y``, protected ``ŷ`` (quantised), correct recovery ``x̌``,
    wrong-key recovery ``ẍ`` and optionally the by-product ``x̂`` and the auxiliary ``K‖K‖K``.

    Wrong-key hardening (ours; off by default, on in the shipped configs): the paper's pixel
    triplet with margin 1 cannot be met inside [0, 1], so training pushes a few regions of ẍ far
    out of range and the face stays recognisable between them (42 % of wrong-password outputs of
    the stage-1 weights matched the original identity at FMR 0.1 %: ``faceveil eval --faces
    .cache/data/lfw_dev_128 --model runs/proface-s-randwr/best.safetensors --limit 60``). ``wr_clamp`` judges ẍ clipped as a file
    shows it, ``lambda_range`` keeps it in range and ``lambda_decorr`` penalises local structure ẍ
    shares with x (:func:`detail_corr2`, blind to sign, so an inverted face is no escape).
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.pix = pixel_distance(cfg.pixel)
        self.l1 = pixel_distance("l1")
        self.perc = perceptual_distance(cfg)

    def __call__(self, x: Tensor, y: Tensor, y_hat: Tensor, x_rec: Tensor, x_wrong: Tensor | None,
                 byproduct: Tensor | None = None, aux: Tensor | None = None) -> dict[str, Tensor]:
        c = self.cfg
        protect_pix = self.pix(y_hat, y)
        protect_perc = self.perc(y_hat, y)
        protect = protect_pix + c.beta_perceptual * protect_perc  # eq. (18)
        recover = self.pix(x_rec, x)  # eq. (19)
        terms: dict[str, Tensor] = {
            "protect_pix": protect_pix.mean(), "protect_perc": protect_perc.mean(),
            "protect": protect.mean(), "recover": recover.mean(),
        }
        total = c.lambda_protect * protect + c.lambda_recover * recover
        if c.wr_mode != "none" and x_wrong is not None:
            seen = x_wrong.clamp(0, 1) if c.wr_clamp else x_wrong
            if c.lambda_range > 0:
                rng = range_excess(x_wrong)
                terms["wr_range"] = rng.mean()
                total = total + c.lambda_range * rng
            if c.lambda_decorr > 0:
                dec = detail_corr2(seen, decorr_reference(x, y, c.decorr_target), scales=c.decorr_scales)
                terms["wr_decorr"] = dec.mean()
                total = total + c.lambda_decorr * dec
            if c.wr_mode == "randwr":  # eq. (20)
                t_perc = triplet(self.perc, x, x_rec, seen, c.margin)
                wr = t_perc
                terms["wr_tri_perc"] = t_perc.mean()
                if c.wr_pixel_triplet:
                    t_l1 = triplet(self.l1, x, x_rec, seen, c.margin)
                    wr = wr + t_l1
                    terms["wr_tri_l1"] = t_l1.mean()
            elif c.wr_mode == "obfswr":  # eq. (22)
                to_veil = self.l1(x_wrong, y)
                t1 = triplet(self.perc, seen, y, x, c.margin)
                t2 = triplet(self.perc, x_rec, x, y, c.margin)
                wr = to_veil + t1 + t2
                terms.update(wr_to_veil=to_veil.mean(), wr_tri_wrong=t1.mean(), wr_tri_right=t2.mean())
            else:
                raise ValueError(f"unknown wrong-recovery mode {c.wr_mode!r}")
            terms["wr"] = wr.mean()
            total = total + c.lambda_wr * wr
        if c.lambda_aux > 0 and byproduct is not None and aux is not None:
            a = self.l1(dwt(byproduct), aux)
            terms["aux"] = a.mean()
            total = total + c.lambda_aux * a
        terms["loss"] = total.mean()
        return terms


class IMNLoss:
    """IMN eq. (12): ``λ1·L_embedding + λ2·L_recovering + λ3·L_low-frequency`` (1:3:1), L2 distances."""

    def __init__(self, cfg: LossConfig) -> None:
        self.w = cfg.imn_weights
        self.l2 = pixel_distance("l2")

    def __call__(self, x: Tensor, y: Tensor, y_hat: Tensor, x_rec: Tensor, *_: object,
                 **__: object) -> dict[str, Tensor]:
        emb = self.l2(y_hat, y)  # eq. (9)
        rec = self.l2(x_rec, x)  # eq. (10)
        low = per_image_mean((low_band(dwt(y_hat)) - low_band(dwt(y))) ** 2)  # eq. (11)
        total = self.w[0] * emb + self.w[1] * rec + self.w[2] * low
        return {"embedding": emb.mean(), "recover": rec.mean(), "low_freq": low.mean(),
                "loss": total.mean()}
