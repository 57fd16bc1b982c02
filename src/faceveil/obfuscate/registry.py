"""The registry of veils (pre-obfuscators, PRO-Face S §III-A eq. (1): ``y = O(x)``).

Each veil is a pure, deterministic function of the crop and a dict of concrete parameters. The
parameters of a default veil are the paper's test settings (§V-A-2) at 112×112, scaled to the crop
size; the training ranges are the paper's training ranges, scaled the same way. Parameters are stored
per face in the protected file, so a veil can always be told and reproduced.

Every veil is composited inside a soft ellipse inscribed in the square crop (``region="ellipse"``,
the default), so the face is covered and the crop's corners keep the background; ``region="square"``
veils the whole crop.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import VeilError

REFERENCE_SIZE = 112  # the papers' crop size; parameters scale with crop_size / 112


@dataclass(frozen=True)
class Veil:
    """A registered veil.

    ``apply(x, params)`` takes ``B×3×H×W`` in [0, 1] and returns a new tensor of the same shape.
    ``defaults(size)`` gives the test-setting parameters for a crop of ``size`` pixels;
    ``sample(rng, size)`` draws training parameters.
    ``place(landmarks, w, h)``, when given, derives geometric parameters from the face's five
    landmarks in crop pixels (a sticker or a swapped face follows the face); ``identity(rng)``,
    when given, draws the parameters that choose *what* replaces the face (a sticker design, a
    donor) — fresh for every face unless the caller seeds ``rng``.
    """

    name: str
    apply: Callable[[Tensor, dict], Tensor]
    defaults: Callable[[int], dict]
    sample: Callable[[random.Random, int], dict]
    summary: str
    param_help: dict[str, str] = field(default_factory=dict)
    place: Callable[..., dict] | None = None
    identity: Callable[[random.Random], dict] | None = None


VEILS: dict[str, Veil] = {}


def register(veil: Veil) -> Veil:
    if veil.name in VEILS:
        raise ValueError(f"veil {veil.name!r} registered twice")
    VEILS[veil.name] = veil
    return veil


def get_veil(name: str) -> Veil:
    try:
        return VEILS[name]
    except KeyError:
        raise VeilError(f"unknown veil {name!r}; choose one of: {', '.join(sorted(VEILS))}") from None


def scale(size: int) -> float:
    return max(size, 1) / REFERENCE_SIZE


def odd(v: float, minimum: int = 3) -> int:
    """Nearest odd integer ≥ ``minimum``."""
    k = max(minimum, int(round(v)))
    return k if k % 2 else k + 1


def ellipse_mask(h: int, w: int, feather: float = 0.08, *, dtype=torch.float32,
                 device=None) -> Tensor:
    """Soft mask ``1×1×h×w``: 1 inside the inscribed ellipse, 0 outside, a smooth ramp of
    ``feather`` × size at the rim."""
    yy = (torch.arange(h, dtype=torch.float64, device=device) + 0.5) / h * 2 - 1
    xx = (torch.arange(w, dtype=torch.float64, device=device) + 0.5) / w * 2 - 1
    r = torch.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    f = max(feather, 1e-6) * 2
    m = ((1.0 - r) / f + 0.5).clamp(0, 1)
    m = m * m * (3 - 2 * m)  # smoothstep
    return m.to(dtype)[None, None]


def composite(x: Tensor, veiled: Tensor, region: str) -> Tensor:
    if region == "square":
        return veiled
    if region != "ellipse":
        raise VeilError(f"region must be 'ellipse' or 'square', got {region!r}")
    m = ellipse_mask(x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)
    return veiled * m + x * (1 - m)


def check_image(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise VeilError(f"a veil takes a B×3×H×W tensor, got {shape}")
    if not x.is_floating_point():
        raise VeilError("a veil takes a floating-point tensor in [0, 1]")


MIN_STRENGTH, MAX_STRENGTH = 0.25, 4.0


def check_strength(strength: float) -> float:
    """``strength`` must be a finite number in [0.25, 4]; returns it as a float."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength) \
            or not MIN_STRENGTH <= strength <= MAX_STRENGTH:
        raise VeilError(f"veil strength must be a number from {MIN_STRENGTH} to {MAX_STRENGTH}, got {strength!r}")
    return float(strength)


def apply_veil(x: Tensor, name: str, params: dict | None = None, *,
               strength: float = 1.0) -> tuple[Tensor, dict]:
    """Veil ``x`` with the named veil. ``params`` may be partial: missing keys take the default
    for this crop size. Returns the veil and the full, concrete parameter dict (what gets stored).

    ``strength`` (0.25-4, default 1) scales the defaults: they are those of a crop ``strength``
    times as large, since every default grows with the crop (sigma, kernel, cell size), so the
    stored parameters stay concrete and each veil's own constraints (odd kernels) hold.
    Explicit ``params`` are taken as given."""
    check_image(x)
    veil = get_veil(name)
    size = int(min(x.shape[-2:]))
    full = veil.defaults(max(1, int(round(size * check_strength(strength)))))
    if params:
        unknown = set(params) - set(full)
        if unknown:
            raise VeilError(f"veil {name!r} has no parameter(s) {sorted(unknown)}; "
                            f"it takes {sorted(full)}")
        for k, v in params.items():  # a numeric parameter must be a finite number (not "abc")
            if isinstance(full[k], numbers.Real) and not isinstance(full[k], bool) and (
                    isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
                raise VeilError(f"veil {name!r}: parameter {k!r} must be a finite number, got {v!r}")
        full.update(params)
    with torch.no_grad() if not x.requires_grad else _nullctx():
        y = veil.apply(x, full)
    return y.clamp(0, 1), full


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def gaussian_kernel1d(sigma: float, size: int, dtype=torch.float32) -> Tensor:
    if sigma <= 0 or not math.isfinite(sigma):
        raise VeilError(f"sigma must be a positive number, got {sigma}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return (k / k.sum()).to(dtype)
