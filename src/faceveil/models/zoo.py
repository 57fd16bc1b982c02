"""Shipped weights: ``faceveil/weights/manifest.json`` names each model, its architecture config,
its file and the file's sha256. Every load verifies the sha256; nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ModelError
from ..nn.inn import HidingNet, INNConfig

WEIGHTS_PACKAGE = "faceveil.weights"
MANIFEST = "manifest.json"


@dataclass
class LoadedModel:
    """A network in eval mode with the facts the protected file records about it."""

    name: str
    net: HidingNet
    sha256: str
    wr_mode: str = "randwr"
    info: dict = field(default_factory=dict)

    @property
    def keyed(self) -> bool:
        return self.net.config.keyed

    @property
    def trained_veils(self) -> list[str] | None:
        """The veils this network was trained with (from its manifest entry), ``None`` if unknown."""
        veils = ((self.info.get("trained") or {}).get("config") or {}).get("data", {}).get("veils")
        return sorted(set(veils)) if isinstance(veils, list) else None


def _weights_dir() -> Path:
    return Path(str(resources.files(WEIGHTS_PACKAGE)))


def read_manifest() -> dict:
    path = _weights_dir() / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": 1, "default": None, "models": {}}
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"the weights manifest {path} is unreadable: {e}") from None


def available_models() -> dict[str, dict]:
    return read_manifest().get("models", {})


def default_model_name() -> str:
    m = read_manifest()
    if not m.get("default"):
        raise ModelError("no model is shipped with this installation")
    return m["default"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(net: HidingNet, path: str | Path, *, name: str, extra: dict | None = None) -> str:
    """Write ``net`` as safetensors with its config in the header; returns the file's sha256."""
    meta = {"faceveil.name": name, "faceveil.config": json.dumps(net.config.to_dict(), sort_keys=True)}
    for k, v in (extra or {}).items():
        meta[f"faceveil.{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in net.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return sha256_file(path)


def _read_header(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _load_file(path: Path, name: str, expected_sha: str | None, config: dict | None,
               wr_mode: str | None, info: dict) -> LoadedModel:
    if not path.is_file():
        raise ModelError(f"weights file for {name!r} is missing: {path}")
    sha = sha256_file(path)
    if expected_sha is not None and sha != expected_sha:
        raise ModelError(f"weights file {path.name} fails its sha256 check "
                         f"(expected {expected_sha[:12]}…, got {sha[:12]}…): reinstall faceveil")
    try:
        meta = _read_header(path)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read weights {path}: {e}") from None
    cfg = config if config is not None else json.loads(meta.get("faceveil.config", "null") or "null")
    if cfg is None:
        raise ModelError(f"{path} carries no faceveil config; it is not a faceveil weights file")
    net = HidingNet(INNConfig.from_dict(cfg))
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"weights {path.name} do not fit the configured network: {e}") from None
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    mode = wr_mode or meta.get("faceveil.wr_mode", "randwr")
    return LoadedModel(name=name, net=net, sha256=sha, wr_mode=mode, info=info)


_cache: dict[tuple, LoadedModel] = {}
_lock = threading.Lock()


def load_model(name_or_path: str | None = None) -> LoadedModel:
    """Load a shipped model by name (default: the manifest's default) or a ``.safetensors`` path.

    Loaded models are cached per process; shipped files are verified against the manifest.
    """
    name = name_or_path or default_model_name()
    p = Path(name)
    with _lock:
        if p.suffix == ".safetensors" and p.exists():
            key = ("path", str(p.resolve()), p.stat().st_mtime_ns)
            if key not in _cache:
                meta = _read_header(p)
                _cache[key] = _load_file(p, meta.get("faceveil.name", p.stem), None, None, None,
                                         {"path": str(p)})
            return _cache[key]
        models = available_models()
        if name not in models:
            known = ", ".join(sorted(models)) or "none"
            raise ModelError(f"unknown model {name!r}; shipped models: {known}")
        entry = models[name]
        key = ("zoo", name, entry["sha256"])
        if key not in _cache:
            _cache[key] = _load_file(_weights_dir() / entry["file"], name, entry["sha256"],
                                     entry.get("config"), entry.get("wr_mode"), entry)
        return _cache[key]
