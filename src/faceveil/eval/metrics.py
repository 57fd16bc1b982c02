"""Image-quality metrics, always **per image** (never pooled over a batch), as the papers report them.

All functions take two ``B×3×H×W`` tensors in [0, 1] (data range 1) and return a length-``B`` float64
tensor, one value per image; the harness averages those values. Computation is in float64.

* **PSNR** (dB): ``10·log10(1 / MSE)`` over all pixels and channels of one image; identical images
  give ``inf``.
* **SSIM** (Wang et al. 2004, the reference ``ssim_index.m`` settings): Gaussian window 11×11,
  σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1, *valid* region (no padding), no automatic
  downsampling; computed per channel of RGB and averaged over the channels (``channel="rgb"``), or
  on the luma Y only (``channel="y"``).
* **MS-SSIM** (Wang et al. 2003): 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) and
  2×2 average pooling between scales, same window as SSIM; on images too small for 5 scales (the
  coarsest must still hold the 11×11 window, i.e. ≥ 176 px for all five), only the scales that fit
  are used and their weights are renormalised to sum to 1 (112 px → 4 scales). Contrast-structure
  terms are clamped at 0 before the power (negative values would give NaN).
* **RMSE / MAE** on the 0-255 scale (IMN §3.1, Table 2 and 4): ``255·sqrt(MSE)`` and ``255·mean|a−b|``,
  over RGB or over Y.
* **Y**: full-range BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (the JPEG/JFIF definition), in
  [0, 1]. (The super-resolution habit of studio-swing ``16 + 65.481 R + 128.553 G + 24.966 B`` is not
  used: it compresses the range to 219/255 and inflates PSNR by 1.3 dB.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
BT601 = (0.299, 0.587, 0.114)

SETTINGS = {
    "psnr": "per image, data range 1 (8-bit: 255), MSE over all pixels and RGB channels",
    "ssim": f"Gaussian {SSIM_WINDOW}x{SSIM_WINDOW}, sigma {SSIM_SIGMA}, K1 {SSIM_K1}, K2 {SSIM_K2}, "
            "data range 1, valid region, per RGB channel then averaged (ssim_y: on BT.601 Y)",
    "msssim": "5 scales, weights 0.0448/0.2856/0.3001/0.2363/0.1333, 2x2 average pooling; scales that "
              "cannot hold the 11x11 window are dropped and the weights renormalised (112 px: 4 scales)",
    "rmse_mae": "0-255 scale, per image, over RGB or over Y",
    "y": "full-range BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B",
}


def _check_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise ShapeError("metrics take two tensors")
    if a.dim() != 4 or a.shape != b.shape:
        raise ShapeError(f"metrics take two B×C×H×W tensors of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    return a.detach().to(torch.float64), b.detach().to(torch.float64)


def rgb_to_y(x: Tensor) -> Tensor:
    """Full-range BT.601 luma. Shape: ``B×3×H×W`` -> ``B×1×H×W``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ShapeError(f"rgb_to_y takes B×3×H×W, got {tuple(x.shape)}")
    w = torch.tensor(BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _select(a: Tensor, b: Tensor, channel: str) -> tuple[Tensor, Tensor]:
    if channel == "rgb":
        return a, b
    if channel == "y":
        return rgb_to_y(a), rgb_to_y(b)
    raise ValueError(f"channel must be 'rgb' or 'y', got {channel!r}")


def mse(a: Tensor, b: Tensor, channel: str = "rgb") -> Tensor:
    a, b = _check_pair(a, b)
    a, b = _select(a, b, channel)
    return ((a - b) ** 2).flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor, channel: str = "rgb", data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB (``inf`` for identical images). Shape: -> ``B``."""
    m = mse(a, b, channel)
    with torch.no_grad():
        out = 10.0 * torch.log10(data_range ** 2 / m)
    return torch.where(m == 0, torch.full_like(m, math.inf), out)


def rmse255(a: Tensor, b: Tensor, channel: str = "rgb") -> Tensor:
    """Per-image RMSE on the 0-255 scale (IMN). Shape: -> ``B``."""
    return 255.0 * mse(a, b, channel).sqrt()


def mae255(a: Tensor, b: Tensor, channel: str = "rgb") -> Tensor:
    """Per-image MAE on the 0-255 scale (IMN). Shape: -> ``B``."""
    a, b = _check_pair(a, b)
    a, b = _select(a, b, channel)
    return 255.0 * (a - b).abs().flatten(1).mean(1)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64) -> Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def _ssim_maps(a: Tensor, b: Tensor, data_range: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean SSIM and mean contrast-structure term: ``B×C`` each."""
    c = a.shape[1]
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ShapeError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got "
                         f"{a.shape[-2]}×{a.shape[-1]}")
    ssim_map, cs_map = ssim_terms(a, b, gaussian_window(dtype=a.dtype).to(a.device), data_range)
    return ssim_map.mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))


def ssim_terms(a: Tensor, b: Tensor, g: Tensor, data_range: float = 1.0) -> tuple[Tensor, Tensor]:
    """SSIM and its contrast-structure term per pixel of the valid region (Wang et al. 2004), with
    the separable window ``g`` (1-D, sums to 1): ``B×C×H'×W'`` each. Shared with training's MS-SSIM."""
    c, w = a.shape[1], g.numel()
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, w)
    ky = g.view(1, 1, -1, 1).expand(c, 1, w, 1)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a ** 2
    sbb = filt(b * b) - mu_b ** 2
    sab = filt(a * b) - mu_a * mu_b
    cs = (2 * sab + c2) / (saa + sbb + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    return lum * cs, cs


def ssim(a: Tensor, b: Tensor, channel: str = "rgb", data_range: float = 1.0) -> Tensor:
    """Per-image SSIM (settings in the module docstring). Shape: -> ``B``."""
    a, b = _check_pair(a, b)
    a, b = _select(a, b, channel)
    with torch.no_grad():
        s, _ = _ssim_maps(a, b, data_range)
    return s.mean(dim=1)


def msssim_scales(size: int) -> int:
    """How many MS-SSIM scales fit an image whose shorter side is ``size``."""
    n = 0
    while n < len(MSSSIM_WEIGHTS) and size >= SSIM_WINDOW:
        n += 1
        size //= 2
    return n


def ms_ssim(a: Tensor, b: Tensor, channel: str = "rgb", data_range: float = 1.0) -> Tensor:
    """Per-image MS-SSIM (settings in the module docstring). Shape: -> ``B``."""
    a, b = _check_pair(a, b)
    a, b = _select(a, b, channel)
    n = msssim_scales(min(a.shape[-2:]))
    if n == 0:
        raise ShapeError(f"MS-SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}")
    w = torch.tensor(MSSSIM_WEIGHTS[:n], dtype=torch.float64)
    w = w / w.sum()
    out = torch.ones(a.shape[0], dtype=torch.float64, device=a.device)
    with torch.no_grad():
        for i in range(n):
            s, cs = _ssim_maps(a, b, data_range)
            term = (s if i == n - 1 else cs).mean(dim=1).clamp_min(0.0)
            out = out * term ** float(w[i])
            if i < n - 1:
                a = F.avg_pool2d(a, 2)
                b = F.avg_pool2d(b, 2)
    return out


#: name -> function(a, b) for :func:`image_metrics`.
METRICS = {
    "psnr": lambda a, b: psnr(a, b),
    "ssim": lambda a, b: ssim(a, b),
    "msssim": lambda a, b: ms_ssim(a, b),
    "rmse": lambda a, b: rmse255(a, b),
    "mae": lambda a, b: mae255(a, b),
    "psnr_y": lambda a, b: psnr(a, b, "y"),
    "ssim_y": lambda a, b: ssim(a, b, "y"),
    "rmse_y": lambda a, b: rmse255(a, b, "y"),
    "mae_y": lambda a, b: mae255(a, b, "y"),
}
SHORT = ("psnr", "ssim", "msssim")


def image_metrics(a: Tensor, b: Tensor, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """``{name: per-image values}`` for the named metrics (default: all of :data:`METRICS`)."""
    names = tuple(METRICS) if names is None else names
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRICS)}")
    return {n: METRICS[n](a, b) for n in names}
