"""Named network configurations. Each name is written once here; the CLI and docs derive from it."""

from __future__ import annotations

from ..errors import ModelError
from ..nn.inn import HidingNet, INNConfig

ARCHITECTURES: dict[str, INNConfig] = {
    # PRO-Face S §IV: 3 secure affine coupling blocks, 4 dense sub-nets each fed features ‖ K;
    # 1,073,040 parameters (Table V: 1.07M).
    "proface-s": INNConfig(blocks=3, with_cover_scale=True, keyed=True),
    # The same network hiding a keyed wavelet scramble of the face (ours, file format version 2):
    # without the password even a perfect inversion yields only the scramble (nn/scramble.py).
    "proface-s-scramble": INNConfig(blocks=3, with_cover_scale=True, keyed=True, scramble=True),
    # ... hiding the keyed scramble of the residual x − y instead (ours, file format version 3): the
    # same security, a payload of a third of the energy, so far better recovery (nn/inn.py).
    "proface-s-residual": INNConfig(blocks=3, with_cover_scale=True, keyed=True, scramble=True, residual=True),
    # IMN §2.2-2.3 (the HiNet flow): 16 blocks of 3 dense sub-nets, no key, recovery from
    # Gaussian noise; 4,050,240 parameters (PRO-Face S Table V: 4.05M).
    "imn": INNConfig(blocks=16, with_cover_scale=False, keyed=False),
}


def build(arch: str | INNConfig) -> HidingNet:
    if isinstance(arch, INNConfig):
        return HidingNet(arch)
    try:
        return HidingNet(ARCHITECTURES[arch])
    except KeyError:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None
