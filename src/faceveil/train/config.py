"""Training configuration: a YAML file -> :class:`TrainConfig`; the resolved values are saved beside
every checkpoint (``config.yaml``) so a run can be told and repeated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import UsageError


@dataclass
class DataConfig:
    faces: list[str] = field(default_factory=lambda: [".cache/data/utkface_128", ".cache/data/celeba10k"])
    natural: list[str] = field(default_factory=lambda: [".cache/data/natural_train"])
    natural_fraction: float = 0.3
    holdout: int = 500  # the last N face images (sorted) are kept out of training, for validation
    patch: int = 64  # training patch size (the network is fully convolutional)
    crop_min: int = 64  # a face crop is resized to a random size in [crop_min, crop_max]
    crop_max: int = 144
    veils: list[str] = field(default_factory=lambda: ["blur", "pixelate", "median"])
    jitter: float = 0.1  # colour jitter strength (brightness, contrast, saturation)
    val_large: int = 0  # > 0: also validate the wrong-key output on 12 held-out faces at this size


@dataclass
class LossConfig:
    wr_mode: str = "randwr"  # randwr | obfswr | none (imn)
    lambda_protect: float = 1.0
    lambda_recover: float = 1.0
    lambda_wr: float = 0.1
    beta_perceptual: float = 1.0  # β of eq. (18), applied to the perceptual term
    perceptual: str = "msgrad"  # msgrad | msssim | lpips (needs lpips_weights)
    lpips_weights: str | None = None
    pixel: str = "l1"  # l1 | l2 | charbonnier
    margin: float = 1.0  # triplet margin of eq. (21)
    wr_every: int = 1  # run the wrong-key pass (and its loss) every N steps; it costs a third of a step
    lambda_aux: float = 0.0  # optional: pull the by-product towards K‖K‖K
    # Wrong-key hardening (ours, not in the paper; see losses.ProFaceSLoss). With the paper's
    # pixel triplet and margin 1 on [0, 1] images the network learns to push a few blobs far out
    # of range: PSNR vs x drops to ~10 dB while the face stays recognisable between the blobs.
    wr_clamp: bool = False  # judge the wrong-key output as a saved file shows it: clipped to [0, 1]
    wr_pixel_triplet: bool = True  # the L1 triplet of eq. (21) (beside the perceptual one)
    lambda_decorr: float = 0.0  # penalise local structure shared by the wrong-key output and x
    decorr_scales: int = 2  # dyadic scales of that penalty (3+ reaches the coarse structure of big faces)
    decorr_target: str = "x"  # x | residual: decorrelate from x, or only from x − y (what the veil hides)
    lambda_range: float = 0.0  # penalise wrong-key values outside [0, 1]
    imn_weights: list[float] = field(default_factory=lambda: [1.0, 3.0, 1.0])  # IMN eq. (12)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    lr_min: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch: int = 16
    steps: int = 20000
    warmup: int = 200


@dataclass
class TrainConfig:
    name: str = "proface-s-randwr"
    model: str = "proface-s"  # a registered model config name
    init: str | None = None  # start from these weights (a .safetensors or checkpoint)
    seed: int = 0
    quantize: bool = True  # 8-bit rounding of ŷ in the loop (straight-through)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out_dir: str = "runs"
    log_every: int = 20
    val_every: int = 250
    ckpt_every: int = 250
    threads: int = 0  # torch CPU threads; 0 = leave the default
    device: str = "auto"  # auto | cpu | cuda

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(cls, data: dict, where: str):
    names = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise UsageError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    kw = {}
    for k, v in data.items():
        sub = {"data": DataConfig, "loss": LossConfig, "optim": OptimConfig}.get(k) if cls is TrainConfig else None
        kw[k] = _build(sub, v or {}, f"{where}.{k}") if sub else v
    return cls(**kw)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML config (missing keys take the defaults above) and apply dotted overrides
    such as ``{"optim.steps": 100}``."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise UsageError(f"cannot read config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise UsageError(f"config {path} is not valid YAML: {e}") from None
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = _build(TrainConfig, raw, "config")
    for key, value, allowed in (("loss.wr_mode", cfg.loss.wr_mode, ("randwr", "obfswr", "none")),
                                ("loss.decorr_target", cfg.loss.decorr_target, ("x", "residual")),
                                ("loss.perceptual", cfg.loss.perceptual, ("msgrad", "msssim", "lpips")),
                                ("loss.pixel", cfg.loss.pixel, ("l1", "l2", "charbonnier"))):
        if value not in allowed:
            raise UsageError(f"config {key} must be one of {', '.join(allowed)}, not {value!r}")
    return cfg
