"""The invertible hiding network: Haar DWT -> N coupling blocks -> IWT (PRO-Face S §IV-B/C, IMN §2.2-2.3).

``protect(x, y, k)`` embeds the original ``x`` into its veil ``y`` (eq. (7)-(13)) and returns the
protected image ``ŷ`` and the by-product ``x̂``. ``recover(ŷ, k)`` runs the same blocks backwards
(eq. (14)-(17)); the lost by-product branch is replaced by ``K‖K‖K`` (PRO-Face S §IV-C) for keyed
models, or by Gaussian noise for IMN (IMN eq. (6)-(8)).

Networks with ``scramble`` (file format version 2) hide the keyed scramble of ``x`` instead of ``x``
(:mod:`.scramble`): their key is ``B×4×H×W``, the secret map k in channel 0 and one ±1 sign per
wavelet coefficient of the three colour channels in channels 1-3.

Networks with ``residual`` as well (file format version 3) hide the keyed scramble of the
*residual* ``x − y`` — what the veil removed — and recovery adds it back to the veil that the
reverse pass returns in its cover branch: ``x̌ = y̌ + S(p̌) − 0.5`` (:meth:`HidingNet.unpayload`).
Why: the network embeds its payload as a small perturbation of ``y`` that must survive 8-bit
rounding, so what it can carry back is bounded by the payload's energy over the rounding noise's
(an analog channel). A sign-scrambled face keeps the full energy of the face (RMS 67 of 255 on LFW
crops); the scrambled residual keeps only the residual's (RMS 17-22 for blur, pixelate and
median; ``python tools/payload_energy.py``), for the same password-bound security: without the
signs, even a perfect inversion yields the veil and a coin-flip-signed residual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from ..errors import ShapeError
from .coupling import KeyedAffineCoupling
from .haar import dwt, iwt
from .scramble import scramble as _scramble


@dataclass(frozen=True)
class INNConfig:
    """Everything that defines the network's shape; stored with every weights file."""

    blocks: int = 3
    with_cover_scale: bool = True  # 4 sub-nets (PRO-Face S) or 3 (HiNet/IMN)
    keyed: bool = True  # sub-nets see ‖K; recovery substitutes K‖K‖K
    clamp: float = 2.0
    growth: int = 32
    depth: int = 5
    image_channels: int = 3
    scramble: bool = False  # hide a keyed wavelet scramble of x (format version 2); needs keyed
    residual: bool = False  # hide the keyed scramble of x − y instead (format version 3); needs scramble

    @classmethod
    def from_dict(cls, d: dict) -> "INNConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        cfg = cls(**d)
        if cfg.scramble and not cfg.keyed:
            raise ValueError("a scrambling network must be keyed")
        if cfg.residual and not cfg.scramble:
            raise ValueError("a residual network must scramble")
        return cfg

    @property
    def format_version(self) -> int:
        """The protected-file format this network writes (docs/FORMAT.md): 1 plain, 2 scrambled
        face, 3 scrambled residual."""
        return 3 if self.residual else 2 if self.scramble else 1

    def to_dict(self) -> dict:
        return asdict(self)


class HidingNet(nn.Module):
    """Keyed invertible hiding network.

    Shape:
        x, y: ``B×3×H×W`` in [0, 1], H and W even.
        key_map: ``B×1×H×W`` (or ``1×…``, broadcast) of ±1 — the secret map k of eq. (5); for a
        scrambling network ``B×4×H×W``: k, then the three channels of scramble signs.
        protect -> ``(ŷ, x̂)``, recover -> ``(x̌, y̌)``, each ``B×3×H×W``.
    """

    def __init__(self, config: INNConfig | None = None) -> None:
        super().__init__()
        self.config = config or INNConfig()
        c = self.config
        sub = 4 * c.image_channels
        self.blocks = nn.ModuleList(
            KeyedAffineCoupling(sub, 4 if c.keyed else 0, with_cover_scale=c.with_cover_scale,
                                clamp=c.clamp, growth=c.growth, depth=c.depth)
            for _ in range(c.blocks)
        )

    @property
    def key_channels(self) -> int:
        """Channels of the key this network takes: 0 (IMN), 1 (k) or 4 (k and scramble signs)."""
        c = self.config
        return 0 if not c.keyed else 1 + c.image_channels * int(c.scramble)

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def receptive_radius(self) -> int:
        """How far (in full-resolution pixels) an output pixel can see: the tiling halo."""
        c = self.config
        per_subnet = c.depth  # 3×3 convolutions at half resolution
        return 2 * (2 * per_subnet * c.blocks) + 2

    # -- the flow in the wavelet domain -----------------------------------------------------------
    def flow(self, X: Tensor, Y: Tensor, K: Tensor | None, *, rev: bool = False) -> tuple[Tensor, Tensor]:
        """Run the coupling blocks on sub-bands (eq. (10)-(11), or (14)-(15) with ``rev``)."""
        blocks = reversed(self.blocks) if rev else self.blocks
        for blk in blocks:
            X, Y = blk((X, Y), K, rev=rev)
        return X, Y

    def secret_map(self, key_map: Tensor | None, like: Tensor) -> Tensor | None:
        """K = DWT(k) (eq. (6)), checked against the image ``like``."""
        if not self.config.keyed:
            return None
        if key_map is None:
            raise ShapeError("this model is keyed: a secret map is required")
        if key_map.dim() != 4 or key_map.shape[1] not in (1, self.key_channels) \
                or key_map.shape[-2:] != like.shape[-2:]:
            raise ShapeError(f"secret map must be B×{self.key_channels}×{like.shape[-2]}×{like.shape[-1]}, "
                             f"got {tuple(key_map.shape)}")
        return dwt(key_map[:, :1].to(like.dtype))

    def _signs(self, key_map: Tensor | None) -> Tensor | None:
        """The scramble signs carried by a full key, ``None`` when the network does not scramble
        or the key is only the secret map."""
        if not self.config.scramble or key_map is None or key_map.shape[1] == 1:
            return None
        return key_map[:, 1:]

    def _check_image(self, t: Tensor, name: str) -> None:
        if t.dim() != 4 or t.shape[1] != self.config.image_channels:
            raise ShapeError(f"{name} must be B×{self.config.image_channels}×H×W, got {tuple(t.shape)}")
        if t.shape[-1] % 2 or t.shape[-2] % 2:
            raise ShapeError(f"{name} needs even height and width, got {t.shape[-2]}×{t.shape[-1]}")

    def protect(self, x: Tensor, y: Tensor, key_map: Tensor | None = None, *,
                scrambled: bool = False) -> tuple[Tensor, Tensor]:
        """Hide ``x`` in ``y``: returns ``(ŷ, x̂)`` (eq. (7)-(13)).

        A scrambling network hides :meth:`payload` (the scrambled face or residual) instead of
        ``x``; ``scrambled=True`` says ``x`` already is that payload (the photo pipeline scrambles a
        whole crop, then hides it tile by tile) and lets the key be the secret map alone.
        """
        self._check_image(x, "original")
        self._check_image(y, "veil")
        if x.shape != y.shape:
            raise ShapeError(f"original and veil differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        K = self.secret_map(key_map, x)
        if self.config.scramble and not scrambled:
            signs = self._signs(key_map)
            if signs is None:
                raise ShapeError("this network scrambles the original: the key must carry the scramble "
                                 f"signs (B×{self.key_channels}×H×W)")
            x = self.payload(x, y, signs)
        X, Y = self.flow(dwt(x), dwt(y), K)
        return iwt(Y), iwt(X)

    def payload(self, x: Tensor, y: Tensor, signs: Tensor) -> Tensor:
        """What a scrambling network hides: ``S(x)`` (format 2) or ``S(0.5 + x − y)`` (format 3),
        ``S`` the keyed wavelet scramble with ``signs`` (``B×3×H×W`` ±1, :mod:`.scramble`)."""
        return _scramble(x - y + 0.5 if self.config.residual else x, signs)

    def unpayload(self, p: Tensor, y_rec: Tensor, signs: Tensor) -> Tensor:
        """The inverse of :meth:`payload` on recovery: ``S(p̌)`` or ``y̌ + S(p̌) − 0.5``, with ``y̌``
        the veil returned by the reverse pass."""
        s = _scramble(p, signs)
        return y_rec + s - 0.5 if self.config.residual else s

    def auxiliary(self, y_hat: Tensor, K: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """What stands in for the lost by-product: ``K‖K‖K`` (keyed) or N(0, 1) noise (IMN)."""
        if K is not None:
            return torch.cat([K] * self.config.image_channels, dim=1).expand(y_hat.shape[0], -1, -1, -1)
        h, w = y_hat.shape[-2] // 2, y_hat.shape[-1] // 2
        shape = (y_hat.shape[0], 4 * self.config.image_channels, h, w)
        return torch.randn(shape, generator=generator, dtype=y_hat.dtype, device=y_hat.device)

    def recover(self, y_hat: Tensor, key_map: Tensor | None = None, *, aux: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Lift the veil: returns ``(x̌, y̌)`` (eq. (14)-(17)).

        ``aux`` overrides the substitute for the by-product branch (sub-band domain, ``B×12×H/2×W/2``).
        A scrambling network unscrambles ``x̌`` with the key's signs (:meth:`unpayload`); given the
        secret map alone it returns the still-scrambled payload — all that anyone without the
        password can get.
        """
        self._check_image(y_hat, "protected image")
        K = self.secret_map(key_map, y_hat)
        X = self.auxiliary(y_hat, K, generator) if aux is None else aux
        X, Y = self.flow(X, dwt(y_hat), K, rev=True)
        x, y = iwt(X), iwt(Y)
        signs = self._signs(key_map)
        if signs is not None:
            x = self.unpayload(x, y, signs)
        return x, y


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
