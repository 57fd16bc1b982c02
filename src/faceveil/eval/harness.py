"""``faceveil eval``: the papers' tables, measured on our models from saved 8-bit files.

For every face crop in a folder and every veil, per image and then averaged (the papers' protocol,
PRO-Face S §V-A-3, IMN §3.1), at 112×112 unless ``size`` says otherwise:

* **protection** (PRO-Face S Table I): protected ŷ vs veil y (and vs the original x);
* **recovery** (Table II; IMN Tables 2, 4): correct-key recovery vs x, with RMSE and MAE on 0-255,
  RGB and Y;
* **wrong key** (Table III): recovery with (a) random ±1 maps and (b) the maps of a password one bit
  away from the right one (real scrypt KDF), vs x and vs y;
* **spoofing** (§V-D-1): the veil itself fed to recovery with the right key, vs x and vs y;
* **by-product** x̂ (§V-D-2): what the protection step emits besides ŷ, vs x; never written unless
  ``save_images`` (then as ``byproduct.png``);
* **identity leakage** (MobileFaceNet, :mod:`.identity`): the rate at which each output still
  matches its original at the 0.1 %-FMR threshold;
* **cost** (Table V): parameters and seconds per batch of 16 at 112×112.

Modes — how ŷ travels from protection to recovery:

* ``png`` (default): ŷ is rounded to 8 bits and actually encoded and decoded as PNG (Pillow); the
  veil, recovery and wrong-key outputs are rounded to 8 bits too, so every number can be recomputed
  from the images ``save_images`` writes.
* ``float``: the papers' optimistic protocol — ŷ goes to recovery as a float tensor; outputs are only
  clipped to [0, 1].
* ``jpeg:Q``: ŷ is encoded as JPEG at quality Q (Pillow defaults: 4:2:0 chroma subsampling) and
  decoded before recovery; the spoofing input goes through the same channel.

IMN models (``net.config.keyed == False``) recover from seeded Gaussian noise and have no wrong-key
rows. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import logging
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import __version__
from ..errors import FaceveilError, UsageError
from ..keys import DEFAULT_KDF, derive_master_key, normalize_password
from ..models.zoo import LoadedModel, load_model
from ..nn.inn import HidingNet, count_parameters
from .. import pipeline
from ..obfuscate import VEILS, apply_veil
from . import metrics as M

log = logging.getLogger(__name__)

DEFAULT_TEST_PASSWORD = "faceveil-eval: correct horse battery staple"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PSNR_CAP = 100.0  # identical images give inf; averages use this cap (dB)
BATCH = 16
SCHEMA = "faceveil-eval/1"

#: Which comparisons each row of the report holds: section -> (image a, image b).
SECTIONS = {
    "protection.vs_veil": ("protected", "veil"),
    "protection.vs_original": ("protected", "original"),
    "recovery.vs_original": ("recovered", "original"),
    "wrong_random.vs_original": ("wrong_random", "original"),
    "wrong_random.vs_veil": ("wrong_random", "veil"),
    "wrong_onebit.vs_original": ("wrong_onebit", "original"),
    "wrong_onebit.vs_veil": ("wrong_onebit", "veil"),
    "spoof.vs_original": ("spoof", "original"),
    "spoof.vs_veil": ("spoof", "veil"),
    "byproduct.vs_original": ("byproduct", "original"),
    "veil.vs_original": ("veil", "original"),
}
#: Outputs whose identity match against the original is measured.
IDENTITY_OUTPUTS = ("protected", "recovered", "wrong_random", "wrong_onebit", "spoof", "byproduct", "veil")
KEYED_ONLY = ("wrong_random", "wrong_onebit")


# -- inputs -----------------------------------------------------------------------------------------

def list_faces(faces_dir: str | Path, limit: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``faces_dir`` (recursive, sorted). With ``limit``, a seeded random sample
    of that many, returned in sorted order."""
    root = Path(faces_dir)
    if not root.is_dir():
        raise UsageError(f"--faces: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"no images under {root}")
    if limit is not None and limit < len(files):
        if limit < 1:
            raise UsageError("--limit must be at least 1")
        files = sorted(random.Random(seed).sample(files, limit))
    return files


def load_face(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 crop resized to ``size``×``size`` (bicubic with antialiasing, Pillow), or at native
    size cut to even sides (``size=0``). Returns ``(rgb, native (h, w))``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            native = (im.height, im.width)
            if size:
                im = im.resize((size, size), Image.BICUBIC)
            rgb = np.asarray(im)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not size:
        rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
    if min(rgb.shape[:2]) < 16:
        raise UsageError(f"{path} is smaller than 16×16")
    return np.ascontiguousarray(rgb), native


def to_tensor(a: np.ndarray) -> Tensor:
    """uint8 H×W×3 -> float32 3×H×W in [0, 1]."""
    return pipeline.to_tensor(a)[0]


def to_uint8(t: Tensor) -> np.ndarray:
    """``3×H×W`` float -> ``H×W×3`` uint8 (clipped, rounded half to even)."""
    return pipeline.to_uint8(t.detach().cpu()[None])


def quantize(t: Tensor) -> Tensor:
    return t.clamp(0, 1).mul(255.0).round().div(255.0)


# -- the channel between protection and recovery ----------------------------------------------------

def parse_mode(mode: str) -> tuple[str, int | None]:
    if mode in ("float", "png"):
        return mode, None
    if mode.startswith("jpeg:"):
        try:
            q = int(mode.split(":", 1)[1])
        except ValueError:
            q = -1
        if 1 <= q <= 100:
            return "jpeg", q
    raise UsageError(f"--mode must be float, png or jpeg:Q with 1 <= Q <= 100, got {mode!r}")


def encode(rgb: np.ndarray, kind: str, quality: int | None) -> bytes:
    buf = io.BytesIO()
    if kind == "png":
        Image.fromarray(rgb).save(buf, format="PNG")
    else:
        Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


class Channel:
    """What happens to an image between protection and recovery (see the module docs)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.kind, self.quality = parse_mode(mode)

    @property
    def eight_bit(self) -> bool:
        return self.kind != "float"

    def transmit(self, t: Tensor) -> tuple[Tensor, list[bytes] | None]:
        """``B×3×H×W`` -> what the receiver decodes, plus the encoded files (None for float)."""
        if self.kind == "float":
            return t, None
        files = [encode(to_uint8(im), self.kind, self.quality) for im in t]
        back = torch.stack([to_tensor(decode(f)) for f in files]).to(t.device)
        return back, files

    def output(self, t: Tensor) -> Tensor:
        """An image the user gets (recovery, veil, ...): clipped, and 8-bit unless float mode."""
        return quantize(t) if self.eight_bit else t.clamp(0, 1)


# -- models and keys --------------------------------------------------------------------------------

def resolve_model(model: str | Path | LoadedModel | HidingNet | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, HidingNet):
        model.eval()
        return LoadedModel(name="unsaved network", net=model, sha256="unsaved (random or in-memory weights)")
    return load_model(str(model) if model is not None else None)


def test_salt(seed: int) -> bytes:
    return hashlib.sha256(b"faceveil eval salt " + str(int(seed)).encode()).digest()[:16]


def one_bit_away(password: str | bytes) -> bytes:
    """The password's UTF-8 bytes with the lowest bit of the last byte flipped."""
    raw = normalize_password(password)
    return raw[:-1] + bytes([raw[-1] ^ 1])


class KeySource:
    """Per-image secret maps: the right password, the one-bit-off password and random maps.

    Both master keys are derived once (scrypt is slow) with a fixed test salt; face ``i`` of the
    evaluation gets ``secret_map(i, h, w)``, so every image has its own map as in real use.
    """

    def __init__(self, password: str | bytes, seed: int, kdf: dict | None = None) -> None:
        salt = test_salt(seed)
        self.right = derive_master_key(password, salt, kdf)
        self.onebit = derive_master_key(one_bit_away(password), salt, kdf)
        self.gen = torch.Generator().manual_seed(seed + 7)

    def maps(self, indices: Sequence[int], h: int, w: int,
             scramble: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Right, one-bit-off and random keys (with scramble signs for a scrambling network)."""
        right = torch.cat([self.right.secret_map(i, h, w, scramble) for i in indices])
        onebit = torch.cat([self.onebit.secret_map(i, h, w, scramble) for i in indices])
        rnd = torch.randint(0, 2, right.shape, generator=self.gen).float() * 2 - 1
        return right, onebit, rnd


# -- timing (PRO-Face S Table V) --------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(net: HidingNet, *, device: str | torch.device = "cpu", size: int = 112, batch: int = BATCH,
               veil: str = "blur", repeats: int = 5, x: Tensor | None = None, seed: int = 0) -> dict:
    """Median seconds per batch: protect (veil + hiding network) and recover (network only)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    if x is None or x.shape[-1] != size:
        x = torch.rand((batch, 3, size, size), generator=g)
    x = x[:batch]
    if x.shape[0] < batch:
        x = x.repeat(math.ceil(batch / x.shape[0]), 1, 1, 1)[:batch]
    x = x.to(device)
    net = net.to(device)
    k = (torch.randint(0, 2, (batch, net.key_channels, size, size), generator=g).float() * 2 - 1).to(device) \
        if net.config.keyed else None
    gen = torch.Generator(device=device).manual_seed(seed) if not net.config.keyed else None
    tp, tr = [], []
    with torch.inference_mode():
        for i in range(repeats + 1):  # the first run warms up
            _sync(device)
            t0 = time.perf_counter()
            y, _ = apply_veil(x, veil)
            y_hat, _ = net.protect(x, y, k)
            _sync(device)
            t1 = time.perf_counter()
            net.recover(y_hat, k, generator=gen)
            _sync(device)
            t2 = time.perf_counter()
            if i:
                tp.append(t1 - t0)
                tr.append(t2 - t1)
    net.to("cpu")
    return {"device": str(device), "device_name": _device_name(device), "threads": torch.get_num_threads(),
            "size": size, "batch": batch, "veil": veil, "repeats": repeats,
            "protect_s_per_batch": float(np.median(tp)), "recover_s_per_batch": float(np.median(tr)),
            "protect_ms_per_face": 1000 * float(np.median(tp)) / batch,
            "recover_ms_per_face": 1000 * float(np.median(tr)) / batch}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


# -- aggregation ------------------------------------------------------------------------------------

class Accumulator:
    """Per-image values by (section, metric)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {}

    def add(self, section: str, name: str, vals: Tensor | Sequence[float]) -> None:
        v = vals.tolist() if isinstance(vals, Tensor) else list(vals)
        self.values.setdefault(section, {}).setdefault(name, []).extend(float(x) for x in v)

    def summary(self) -> dict:
        out: dict = {}
        for section, d in self.values.items():
            node = out
            parts = section.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            leaf = node.setdefault(parts[-1], {})
            for name, vals in d.items():
                a = np.array(vals, dtype=np.float64)
                if name.startswith("psnr"):
                    a = np.minimum(a, PSNR_CAP)
                leaf[name] = round(float(a.mean()), 6) if len(a) else None
                if name in ("psnr", "ssim", "match_rate", "cosine"):
                    leaf[name + "_std"] = round(float(a.std()), 6) if len(a) else None
        return out


def average_over_veils(per_veil: dict) -> dict:
    """The papers' "Avg." row: the mean over veils of each per-veil mean."""
    ok = [v for v in per_veil.values() if "error" not in v]

    def merge(nodes: list):
        if all(isinstance(n, dict) for n in nodes):
            keys = set().union(*nodes)
            return {k: merge([n[k] for n in nodes if k in n]) for k in sorted(keys)}
        nums = [n for n in nodes if isinstance(n, int | float) and n is not None and not isinstance(n, bool)]
        return round(float(np.mean(nums)), 6) if nums else None

    if not ok:
        return {}
    avg = merge([{k: v for k, v in pv.items() if k not in ("params", "n_faces")} for pv in ok])
    avg["veils"] = [k for k, v in per_veil.items() if "error" not in v]
    return avg


# -- the evaluation ---------------------------------------------------------------------------------

def _face_stem(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def _save_png(path: Path, t: Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(t)).save(path, format="PNG")


def evaluate(faces_dir: str | Path, model: str | Path | LoadedModel | HidingNet | None = None,
             veils: Sequence[str] | None = None, mode: str = "png", limit: int | None = None, size: int = 112,
             save_images: str | Path | None = None, password: str | bytes = DEFAULT_TEST_PASSWORD, seed: int = 0,
             *, identity: bool = True, timing: bool = True, timing_size: int = 112, timing_repeats: int = 5,
             kdf: dict | None = None, batch: int = BATCH,
             progress: Callable[[int], None] | None = None, identity_weights: str | Path | None = None,
             identity_threshold: float | None = None,
             lpips=None, command: str | None = None, password_source: str = "default test password") -> dict:
    """Run the evaluation and return the result dict (see ``docs/RESULTS.md`` for its tables).

    ``model``: a shipped name, a ``.safetensors`` path, a :class:`LoadedModel` or a bare
    :class:`HidingNet`. ``veils``: names (default: every registered veil at its test setting, scaled
    to ``size``). ``identity=False`` skips MobileFaceNet; ``identity_threshold`` replaces the
    calibrated cosine threshold (default: calibrated on the LFW dev pairs, cached under ``.cache/``). ``lpips``: an optional
    :class:`faceveil.train.lpips.LPIPS` adds an ``lpips`` column. ``kdf`` overrides scrypt's
    parameters for the test keys (tests use a cheap one).
    """
    channel = Channel(mode)
    if size < 0 or (size and (size % 2 or size < 16)):
        raise UsageError(f"--size must be 0 (native) or an even number >= 16, got {size}")
    lm = resolve_model(model)
    net = lm.net
    net.eval()
    keyed = net.config.keyed
    names = list(veils) if veils else sorted(VEILS)
    for v in names:
        if v not in VEILS:
            raise UsageError(f"unknown veil {v!r}; choose from: {', '.join(sorted(VEILS))}")
    root = Path(faces_dir)
    files = list_faces(root, limit, seed)
    torch.manual_seed(seed)
    t_start = time.time()

    faces = [load_face(p, size) for p in files]
    keys = KeySource(password, seed, kdf) if keyed else None
    noise_gen = torch.Generator().manual_seed(seed + 11)

    # identity: the recogniser, its threshold, landmarks and embeddings of the originals
    ident = None
    calibration = None
    if identity:
        from . import identity as I

        ident = I.IdentityModel(identity_weights)
        if identity_threshold is not None:
            calibration = {"threshold": float(identity_threshold), "source": "given by the caller"}
        else:
            try:
                calibration = I.calibrate(ident)
            except UsageError as e:
                log.warning("identity threshold not calibrated (match rates omitted): %s", e)
                calibration = {"error": str(e)}
        face_index = I.FaceIndex()
        file_keys = [I.file_key(p) for p in files]
        landmarks = []
        for p, (rgb, native), k in zip(files, faces, file_keys):
            lmk = face_index.landmarks(p, key=k)
            landmarks.append(I.scale_landmarks(lmk, native, rgb.shape[:2]) if size else lmk)
        face_index.save()
        threshold = calibration.get("threshold") if calibration else None
        orig_cache = I.EmbeddingCache(I.embeddings_path(ident.sha256, size))

    save_root = Path(save_images) if save_images else None
    per_veil: dict[str, dict] = {}
    per_image_rows: dict[tuple[int, str], dict] = {}

    # batches of equal-shape faces, in file order
    batches: list[list[int]] = []
    for i, (rgb, _) in enumerate(faces):
        if batches and len(batches[-1]) < batch and faces[batches[-1][0]][0].shape == rgb.shape:
            batches[-1].append(i)
        else:
            batches.append([i])

    veil_params: dict[str, list] = {}
    for vname in names:
        acc = Accumulator()
        try:
            for idx in batches:
                x = torch.stack([to_tensor(faces[i][0]) for i in idx])
                n, _, h, w = x.shape
                with torch.inference_mode():
                    y, params = apply_veil(x, vname)
                    ps = veil_params.setdefault(vname, [])
                    if params not in ps:
                        ps.append(params)
                    if keyed:
                        k_right, k_onebit, k_rand = keys.maps(idx, h, w, net.config.scramble)
                    else:
                        k_right = k_onebit = k_rand = None
                    y_hat, byproduct = net.protect(x, y, k_right)
                    y_sent, files_sent = channel.transmit(y_hat)
                    veil_sent, _ = channel.transmit(y)

                    def recover(inp: Tensor, k: Tensor | None) -> Tensor:
                        if keyed:
                            return net.recover(inp, k)[0]
                        return net.recover(inp, None, generator=noise_gen)[0]

                    imgs = {
                        "original": x,
                        "veil": channel.output(y),
                        "protected": y_sent.clamp(0, 1),
                        "recovered": channel.output(recover(y_sent, k_right)),
                        "spoof": channel.output(recover(veil_sent, k_right)),
                        "byproduct": channel.output(byproduct),
                    }
                    if keyed:
                        imgs["wrong_random"] = channel.output(recover(y_sent, k_rand))
                        imgs["wrong_onebit"] = channel.output(recover(y_sent, k_onebit))
                for section, (a, b) in SECTIONS.items():
                    if a not in imgs:
                        continue
                    vals = M.image_metrics(imgs[a], imgs[b])
                    if lpips is not None:
                        with torch.no_grad():
                            vals["lpips"] = lpips(imgs[a], imgs[b]).double()
                    for mname, v in vals.items():
                        acc.add(section, mname, v)
                    if save_root is not None:
                        for j, i in enumerate(idx):
                            row = per_image_rows.setdefault((i, vname), {"face": str(files[i]), "veil": vname})
                            for mname, v in vals.items():
                                row[f"{section}.{mname}"] = float(v[j])
                if ident is not None:
                    orig = []
                    todo = []
                    for j, i in enumerate(idx):
                        e = orig_cache.get(file_keys[i])
                        orig.append(None if e is None else torch.from_numpy(e.copy()))
                        if e is None:
                            todo.append(j)
                    if todo:
                        emb = ident.embed(x[todo], np.stack([landmarks[idx[j]] for j in todo]))
                        for t, j in enumerate(todo):
                            orig[j] = emb[t]
                            orig_cache.put(file_keys[idx[j]], emb[t].numpy())
                    e_orig = torch.stack(orig)
                    lms = np.stack([landmarks[i] for i in idx])
                    for out in IDENTITY_OUTPUTS:
                        if out not in imgs:
                            continue
                        res = I.leakage(e_orig, ident.embed(imgs[out], lms), threshold)
                        acc.add(f"identity.{out}", "cosine", res.cosine)
                        if threshold is not None:
                            acc.add(f"identity.{out}", "match_rate", res.match.double())
                if save_root is not None:
                    for j, i in enumerate(idx):
                        d = save_root / vname / _face_stem(files[i], root)
                        for nm, t in imgs.items():
                            _save_png(d / f"{nm}.png", t[j])
                        if files_sent is not None and channel.kind == "jpeg":
                            (d / "protected.jpg").write_bytes(files_sent[j])
                if progress is not None:
                    progress(len(idx))
        except FaceveilError as e:
            if veils:  # asked for by name: fail loudly
                raise
            log.warning("veil %s skipped: %s", vname, e)
            per_veil[vname] = {"error": str(e)}
            continue
        s = acc.summary()
        s["n_faces"] = len(files)
        s["params"] = veil_params.get(vname, [])
        per_veil[vname] = s

    if ident is not None:
        orig_cache.save()

    result: dict = {
        "schema": SCHEMA,
        "meta": {
            "command": command or "evaluate(...)",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "faceveil": __version__,
            "git_commit": git_commit(),
            "machine": machine_info(),
            "faces_dir": str(faces_dir),
            "n_faces": len(files),
            "faces_sha256": hashlib.sha256("\n".join(str(p.relative_to(root)) for p in files).encode()).hexdigest(),
            "limit": limit,
            "size": size,
            "mode": mode,
            "seed": seed,
            "veils": names,
            "password_source": password_source,
            "kdf": dict(kdf or DEFAULT_KDF) if keyed else None,
            "model": {"name": lm.name, "sha256": lm.sha256, "wr_mode": lm.wr_mode, "keyed": keyed,
                      "config": net.config.to_dict(), "params": count_parameters(net)},
            "metric_settings": {**M.SETTINGS, "psnr_cap_for_averages_db": PSNR_CAP,
                                "eight_bit": channel.eight_bit},
            "seconds": None,
        },
        "per_veil": per_veil,
        "average": average_over_veils(per_veil),
    }
    if identity:
        result["identity_calibration"] = calibration
        result["meta"]["identity"] = {"model": "MobileFaceNet (Xiaoccer 068.ckpt)", "sha256": ident.sha256,
                                      "threshold": threshold, "protocol": I.PROTOCOL_VERSION,
                                      "landmark_fallbacks": face_index.fallbacks,
                                      "alignment": "original's YuNet 5 landmarks -> 96x112 template, "
                                                   "used for every derived image"}
    if timing:
        x16 = torch.stack([to_tensor(f[0]) for f in faces[:BATCH]]) if size == timing_size else None
        tk = {"size": timing_size, "repeats": timing_repeats, "x": x16, "seed": seed}
        speed = {"params": count_parameters(net), "cpu": time_model(net, device="cpu", **tk)}
        if torch.cuda.is_available():
            speed["cuda"] = time_model(net, device="cuda", **tk)
        result["speed"] = speed
    result["meta"]["seconds"] = round(time.time() - t_start, 1)
    if save_root is not None:
        _write_per_image_csv(save_root / "per_image.csv", list(per_image_rows.values()))
        (save_root / "README.txt").write_text(
            "faceveil eval images (8-bit PNG). Per face: original, veil, protected (what the channel "
            "delivered), recovered, spoof (veil fed to recovery), wrong_random / wrong_onebit "
            "(wrong-key recovery), and byproduct.png = the protection BY-PRODUCT x^ that the real "
            "pipeline discards: it leaks the face (PRO-Face S V-D-2); delete these files when done.\n"
            f"mode: {mode}; in float mode the PNGs are rounded, so metrics recomputed from them differ "
            "slightly from per_image.csv.\n")
    return result


def _write_per_image_csv(path: Path, rows: list[dict]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


# -- CLI --------------------------------------------------------------------------------------------

def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``faceveil eval`` (the lead's CLI mounts them on its subparser)."""
    parser.add_argument("--faces", required=True, metavar="DIR", help="folder of aligned face crops (recursive)")
    parser.add_argument("--model", metavar="NAME|PATH", help="model name or .safetensors file (default: shipped default)")
    parser.add_argument("--veil", action="extend", nargs="+", metavar="NAME", dest="veils",
                        help=f"veil(s) to test (default: all: {', '.join(sorted(VEILS))})")
    parser.add_argument("--mode", default="png", metavar="float|png|jpeg:Q",
                        help="how the protected face reaches recovery: real 8-bit PNG (default), float "
                             "tensors (the papers' protocol) or JPEG at quality Q")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate a seeded sample of N faces")
    parser.add_argument("--save-images", metavar="DIR",
                        help="write each face's images as 8-bit PNG (including the leaky by-product)")
    parser.add_argument("--json-out", metavar="FILE", help="write the full results as JSON")
    parser.add_argument("--password-env", metavar="VAR",
                        help="take the test password from this environment variable (default: a fixed test password)")
    parser.add_argument("--size", type=int, default=112, metavar="N",
                        help="resize crops to N×N (default 112, the papers'; 0 = native size)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling, random keys and noise")
    parser.add_argument("--no-identity", action="store_true", help="skip the MobileFaceNet identity metric")
    if not any("--quiet" in a.option_strings for a in parser._actions):
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """``faceveil eval``: prints the Markdown tables on stdout, progress on stderr."""
    from . import report

    password: str | bytes = DEFAULT_TEST_PASSWORD
    source = "default test password"
    if args.password_env:
        pw = os.environ.get(args.password_env)
        if not pw:
            raise UsageError(f"environment variable {args.password_env} is not set or empty")
        password, source = pw, f"env:{args.password_env}"
    mode = args.mode
    parse_mode(mode)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    quiet = getattr(args, "quiet", False)
    files = list_faces(args.faces, args.limit, args.seed)
    veils = args.veils or sorted(VEILS)
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(files) * len(veils), unit="face", file=sys.stderr, desc="eval")
    try:
        res = evaluate(args.faces, args.model, args.veils, mode=mode, limit=args.limit, size=args.size,
                       save_images=args.save_images, password=password, seed=args.seed,
                       identity=not args.no_identity, progress=bar.update if bar else None,
                       command="faceveil eval " + shlex.join(_argv_of(args)), password_source=source)
    finally:
        if bar is not None:
            bar.close()
    if args.json_out:
        report.write_json(res, args.json_out)
    sys.stdout.write(report.markdown(res))
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The options as given, reconstructed (for the results' ``command`` field; no password)."""
    out = ["--faces", str(args.faces)]
    if args.model:
        out += ["--model", str(args.model)]
    if args.veils:
        out += ["--veil", *args.veils]
    out += ["--mode", args.mode]
    if args.limit is not None:
        out += ["--limit", str(args.limit)]
    if args.save_images:
        out += ["--save-images", str(args.save_images)]
    if args.json_out:
        out += ["--json-out", str(args.json_out)]
    if args.password_env:
        out += ["--password-env", args.password_env]
    out += ["--size", str(args.size), "--seed", str(args.seed)]
    if args.no_identity:
        out.append("--no-identity")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m faceveil.eval`` (the same options as ``faceveil eval``)."""
    p = argparse.ArgumentParser(prog="faceveil eval", description=__doc__.split("\n\n")[0])
    add_eval_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_eval(args)
    except FaceveilError as e:
        print(f"faceveil eval: error: {e}", file=sys.stderr)
        return e.exit_code
