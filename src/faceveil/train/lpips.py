"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
v0.1, written without torchvision, usable only with weights the user supplies.

``d(a, b) = Σ_l mean_hw ‖ w_l ⊙ (φ̂_l(a) − φ̂_l(b)) ‖²`` where ``φ̂_l`` are the channel-normalised
activations of five layers of an ImageNet backbone (VGG16: relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3; AlexNet: relu1-relu5) and ``w_l`` the learned non-negative 1×1 "lin" layers. Inputs are
mapped from [0, 1] to [-1, 1] and through the fixed scaling layer (shift −0.030, −0.088, −0.188;
scale 0.458, 0.448, 0.450).

Neither the ImageNet backbone nor the lin layers can be downloaded here, so
:meth:`LPIPS.from_file` takes them from files:

* the lin layers: the official ``lpips`` package's ``weights/v0.1/vgg.pth`` (or ``alex.pth``),
  keys ``lin{0..4}.model.1.weight``;
* the backbone: torchvision's ``vgg16`` (or ``alexnet``) ImageNet state dict, keys
  ``features.{i}.weight/bias`` (the classifier is ignored) — pass it as ``backbone=``;
* or one file holding both (e.g. a saved ``lpips.LPIPS().state_dict()``: ``net.slice{k}.{i}.*``
  keys are understood, as is a state dict of this module).

Files may be ``.safetensors`` or torch files (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError

# torchvision ``features`` layouts: (index, conv spec) ... and the indices after which LPIPS taps.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (3, 8, 15, 22, 29)
_VGG_CHANNELS = (64, 128, 256, 512, 512)
_ALEX_TAPS = (1, 4, 7, 9, 11)
_ALEX_CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)  # indices 0..29, as torchvision's vgg16().features[:30]


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )  # indices 0..11, as torchvision's alexnet().features[:12]


class NetLin(nn.Module):
    """LPIPS's ``NetLinLayer``: dropout (inactive in eval) + 1×1 conv to one channel, no bias."""

    def __init__(self, chn: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Per-image LPIPS distance. Call as ``lpips(a, b)``.

    Built directly it has **random** weights (for shape tests only); use :meth:`from_file`.

    Shape:
        a, b: ``B×3×H×W`` in [0, 1] (H, W ≥ 32 for VGG); returns ``B``.
    """

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        if net not in ("vgg", "alex"):
            raise UsageError(f"LPIPS backbone must be 'vgg' or 'alex', got {net!r}")
        self.net_name = net
        self.features = _vgg16_features() if net == "vgg" else _alexnet_features()
        self.taps = _VGG_TAPS if net == "vgg" else _ALEX_TAPS
        chans = _VGG_CHANNELS if net == "vgg" else _ALEX_CHANNELS
        for i, c in enumerate(chans):
            setattr(self, f"lin{i}", NetLin(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.source: str | None = None

    def train(self, mode: bool = True) -> "LPIPS":  # always eval: no dropout, fixed weights
        return super().train(False)

    def _activations(self, x: Tensor) -> list[Tensor]:
        x = (x * 2 - 1 - self.shift) / self.scale
        feats = []
        last = self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
            if i == last:
                break
        return feats

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise UsageError(f"LPIPS takes two B×3×H×W tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
        p = next(self.parameters())
        if p.device != a.device or p.dtype != a.dtype:
            self.to(device=a.device, dtype=a.dtype)
        fa, fb = self._activations(a), self._activations(b)
        total = a.new_zeros(a.shape[0])
        for i, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = getattr(self, f"lin{i}")((x - y) ** 2)
            total = total + d.mean(dim=(1, 2, 3))
        return total

    # -- loading ---------------------------------------------------------------------------------
    @staticmethod
    def _read(path: str | Path) -> dict[str, Tensor]:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"LPIPS weights file not found: {p}")
        try:
            if p.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(p))
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types
            raise UsageError(f"cannot read LPIPS weights {p}: {e}") from None
        for k in ("state_dict", "model", "net"):
            if isinstance(obj, dict) and isinstance(obj.get(k), dict):
                obj = obj[k]
        if not isinstance(obj, dict):
            raise UsageError(f"{p} holds no state dict")
        return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}

    @staticmethod
    def _translate(state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for k, v in state.items():
            m = re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", k)
            if m:  # the lpips package's sliced backbone keeps torchvision's indices
                out[f"features.{m.group(1)}.{m.group(2)}"] = v
            elif re.fullmatch(r"features\.\d+\.(weight|bias)", k) or re.fullmatch(r"lin\d\.model\.1\.weight", k):
                out[k] = v
            elif m := re.fullmatch(r"lins\.(\d)\.model\.1\.weight", k):
                out.setdefault(f"lin{m.group(1)}.model.1.weight", v)
            # classifier.*, scaling_layer.* (constants), anything else: ignored
        return out

    @classmethod
    def from_file(cls, path: str | Path | None, backbone: str | Path | None = None, net: str = "vgg") -> "LPIPS":
        """LPIPS with the lin layers (and backbone) from ``path``, the backbone from ``backbone``
        when ``path`` lacks it. ``net`` says which backbone the files are for ('vgg' or 'alex').

        Raises:
            UsageError: no file given, unreadable, or the weights do not fit ``net``.
        """
        if not path:
            raise UsageError("LPIPS needs weights that cannot be downloaded here: pass lpips_weights= a file "
                             "with the LPIPS lin layers (lpips' weights/v0.1/vgg.pth) and the ImageNet "
                             "backbone (torchvision vgg16 state dict), or use the 'msgrad'/'msssim' distance")
        state = cls._translate(cls._read(path))
        if backbone:
            for k, v in cls._translate(cls._read(backbone)).items():
                state.setdefault(k, v)
        model = cls(net)
        want = model.state_dict()
        bad = [k for k in want if k in state and state[k].shape != want[k].shape]
        bad += [k for k in state if k not in want]  # e.g. VGG layer indices given to AlexNet
        if bad:
            got = tuple(state[bad[0]].shape)
            exp = tuple(want[bad[0]].shape) if bad[0] in want else "no such layer"
            raise UsageError(f"LPIPS weights do not fit the {net!r} backbone (e.g. {bad[0]}: {got} vs {exp}); "
                             "pass net='alex' or net='vgg' to match the files")
        missing = [k for k in want if k not in state]
        if missing:
            what = ("the ImageNet backbone (features.*): pass backbone= a torchvision "
                    f"{'vgg16' if net == 'vgg' else 'alexnet'} state dict" if any(k.startswith("features.") for k in missing)
                    else "the LPIPS lin layers (lin0..lin4)")
            raise UsageError(f"LPIPS weights in {path} lack {what}")
        model.load_state_dict({k: state[k].float() for k in want})
        for p in model.parameters():
            p.requires_grad_(False)
        model.source = str(path)
        return model
