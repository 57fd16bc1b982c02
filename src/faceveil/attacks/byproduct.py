"""The protection by-product (PRO-Face S §V-D-2): never written, logged or returned — and what it
would give away if it were.

The invertible network turns (original x, veil y) into (protected ŷ, by-product x̂); only ŷ is kept.
The paper warns that x̂ "reveals certain level visual information about the original face,
especially with the blur-based obfuscators" and must be discarded at once. Two checks:

1. **Nothing leaves.** Protect (and recover) photos through the public API with every ``faceveil``
   logger at DEBUG, then recompute x̂ for each face exactly as the pipeline did, and search for it
   in everything that leaves: the returned objects (walked recursively: arrays, tensors, bytes,
   strings), the record's JSON, the PNG's bytes and every chunk (zlib streams inflated), and the
   captured log text — as raw 8-bit bytes, raw float32 bytes (CHW and HWC), base64 and hex of
   those, printed numbers (a logged tensor), and any array that correlates with it.
   :func:`find_leaks` is the detector; the unit tests plant a leak to show it fires.
2. **What it would reveal.** On held-out faces, per veil: x̂ against x (PSNR, SSIM, MobileFaceNet),
   x̂ contrast-stretched, x̂ fed back into the network as the missing branch with a random key
   (keyless inversion *with* the by-product), a linear probe (how much better x is fitted from
   (y, x̂) than from y alone), and the recovery by-products y̌ (right key) and ÿ (wrong key).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import re
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import api, pipeline
from ..detect.geometry import CropBox, extract
from ..keys import derive_master_key, new_salt
from ..nn.haar import dwt
from ..obfuscate import VEILS, apply_veil
from .common import (Context, LogCapture, id_cells, load_photos, merge_lists, num, provenance, quality,
                     quality_summary, t, table, u8)

log = logging.getLogger(__name__)

NAME = "byproduct"
TITLE = "The protection by-product"
CORR_LEAK = 0.9  # an array this correlated with a secret counts as a leak
WINDOW = 24  # bytes per searched window


# -- the detector -------------------------------------------------------------------------------

def _signatures(secret: np.ndarray) -> dict[str, list[bytes]]:
    """Byte strings whose presence anywhere means ``secret`` (float H×W×3 in about [0, 1]) leaked."""
    s = np.asarray(secret, np.float32)
    q = (np.clip(s, 0, 1) * 255).round().astype(np.uint8)
    blobs = {"uint8 HWC": q.tobytes(), "uint8 CHW": np.ascontiguousarray(q.transpose(2, 0, 1)).tobytes(),
             "float32 HWC": s.tobytes(), "float32 CHW": np.ascontiguousarray(s.transpose(2, 0, 1)).tobytes()}
    out: dict[str, list[bytes]] = {}
    for name, b in blobs.items():
        n = len(b)
        offsets = sorted({(n * k // 7) // 4 * 4 for k in range(1, 7)})
        wins = [b[o:o + WINDOW] for o in offsets if o + WINDOW <= n]
        out[name] = wins
        out[name + " hex"] = [w.hex().encode() for w in wins]
        b64 = base64.b64encode(b)
        out[name + " base64"] = [b64[o:o + 32] for o in [(len(b64) * k // 7) // 4 * 4 for k in range(1, 7)]]
    return out


_FLOAT = re.compile(rb"-?\d+\.\d+(?:e-?\d+)?")


def _printed_numbers_match(text: bytes, secret: np.ndarray, run: int = 6, tol: float = 6e-4) -> bool:
    """Whether ``run`` consecutive numbers printed in ``text`` equal consecutive values of
    ``secret`` (in CHW or HWC order) to 4 decimals — a tensor or array written into a log."""
    nums = [float(m) for m in _FLOAT.findall(text)]
    if len(nums) < run:
        return False
    s = np.asarray(secret, np.float32)
    for flat in (s.transpose(2, 0, 1).ravel(), s.ravel()):
        index: dict[int, list[int]] = {}
        for i, v in enumerate(np.round(flat[:-run] * 1000).astype(np.int64)):
            index.setdefault(int(v), []).append(i)
        for j in range(len(nums) - run + 1):
            for i in index.get(int(round(nums[j] * 1000)), ())[:50]:
                if all(abs(nums[j + k] - flat[i + k]) <= tol for k in range(run)):
                    return True
    return False


def png_chunks(data: bytes) -> list[tuple[str, bytes]]:
    """``(type, data)`` of every chunk of a PNG byte string (empty if it is not a PNG)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return []
    out, pos = [], 8
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8].decode("latin-1")
        out.append((kind, data[pos + 8:pos + 8 + n]))
        pos += 12 + n
        if kind == "IEND":
            break
    return out


def _inflated(b: bytes) -> list[bytes]:
    """``b`` and, where it is or holds zlib streams (PNG chunks), their inflated contents."""
    out = [b]
    chunks = png_chunks(b)
    if chunks:
        idat = b"".join(d for k, d in chunks if k == "IDAT")
        for k, d in chunks:
            if k in ("iTXt", "zTXt", "tEXt", "iCCP"):
                out.append(d)
                for start in range(len(d)):
                    if d[start:start + 1] == b"x":  # a zlib header somewhere after the keyword
                        try:
                            out.append(zlib.decompress(d[start:]))
                            break
                        except zlib.error:
                            continue
        if idat:
            try:
                out.append(zlib.decompress(idat))
            except zlib.error:
                pass
    elif b[:1] == b"x":
        try:
            out.append(zlib.decompress(b))
        except zlib.error:
            pass
    return out


def _walk(obj, path: str, found: list, seen: set, depth: int = 0) -> None:
    """Collect ``(path, bytes | ndarray)`` from an object graph."""
    if depth > 8 or id(obj) in seen:
        return
    seen.add(id(obj))
    if obj is None or isinstance(obj, (bool, int, float)):
        return
    if isinstance(obj, str):
        found.append((path, obj.encode("utf-8", "surrogatepass")))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        found.append((path, bytes(obj)))
    elif isinstance(obj, np.ndarray):
        found.append((path, obj))
    elif isinstance(obj, Tensor):
        found.append((path, obj.detach().cpu().float().numpy()))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _walk(k, f"{path}.key", found, seen, depth + 1)
            _walk(v, f"{path}[{k!r}]", found, seen, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            _walk(v, f"{path}[{i}]", found, seen, depth + 1)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name, None), f"{path}.{f.name}", found, seen, depth + 1)
    elif hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            _walk(v, f"{path}.{k}", found, seen, depth + 1)


def _array_leak(a: np.ndarray, secret: np.ndarray, crop: CropBox | None) -> float:
    """Highest |correlation| of ``a`` (or its crop window) with the secret, in any layout."""
    a = np.asarray(a, np.float64)
    h, w = secret.shape[:2]
    cands = []
    if a.size == secret.size:
        cands += [a.reshape(secret.shape), a.reshape(3, h, w).transpose(1, 2, 0)]
    if crop is not None and a.ndim == 3 and a.shape[2] in (3, 4) and a.shape[0] >= crop.y1 and a.shape[1] >= crop.x1:
        cands.append(a[crop.y0:crop.y1, crop.x0:crop.x1, :3])
    best = 0.0
    s = secret.astype(np.float64).ravel()
    s = s - s.mean()
    for c in cands:
        v = c.ravel()
        if v.size != s.size:
            continue
        v = v - v.mean()
        den = np.sqrt((v * v).sum() * (s * s).sum())
        if den > 0:
            best = max(best, abs(float((v * s).sum() / den)))
    return best


def find_leaks(secrets: dict[str, np.ndarray], artifacts: dict[str, object],
               crops: dict[str, CropBox] | None = None) -> list[dict]:
    """Search ``artifacts`` (anything: objects, bytes, text, arrays) for any of ``secrets``
    (float H×W×3 arrays). Returns one finding per (artifact path, secret, form); empty = clean."""
    findings = []
    items: list[tuple[str, object]] = []
    for name, obj in artifacts.items():
        _walk(obj, name, items, set())
    for sname, secret in secrets.items():
        sigs = _signatures(secret)
        crop = (crops or {}).get(sname)
        for path, item in items:
            if isinstance(item, np.ndarray):
                c = _array_leak(item, secret, crop)
                if c >= CORR_LEAK:
                    findings.append({"where": path, "secret": sname, "form": f"array (|r| = {c:.3f})"})
                continue
            for blob in _inflated(item):
                hit = next((form for form, wins in sigs.items() if any(w and w in blob for w in wins)), None)
                if hit is None and _printed_numbers_match(blob, secret):
                    hit = "printed numbers"
                if hit:
                    findings.append({"where": path, "secret": sname, "form": hit})
                    break
    return findings


# -- 1. nothing leaves --------------------------------------------------------------------------

def leak_check(ctx: Context, n: int) -> tuple[dict, str]:
    photos, box, data = load_photos(ctx, n)
    net = ctx.model.net
    all_findings, chunk_types, repro, record_bytes, byproduct_bytes, log_lines = [], set(), [], [], [], 0
    baseline_corr = []
    for i, photo in enumerate(photos):
        with LogCapture(logging.DEBUG) as logs, tempfile.TemporaryDirectory() as tmp:
            prot = api.protect(photo, ctx.password, boxes=[box], model=ctx.model, kdf=ctx.kdf)
            path = prot.save(Path(tmp) / "p.png")
            on_disk = path.read_bytes()
            in_memory = prot.to_bytes()
            rec = api.recover(on_disk, ctx.password, model=ctx.model)
            wrong = api.recover(on_disk, "not the password", model=ctx.model, force=True)
        log_lines += len(logs.records)
        face = prot.record.faces[0]
        crop = CropBox.from_list(face.crop)
        master = derive_master_key(ctx.password, prot.record.kdf.salt, ctx.kdf)
        x = t(extract(photo, crop))
        h, w = x.shape[-2:]
        with torch.inference_mode():
            y, _ = apply_veil(x, face.veil.name, dict(face.veil.params))
            k = master.key_for(net, face.index, h, w)
            y_hat, x_hat = net.protect(x, y, k)
            y8 = t(extract(prot.image, crop))
            _, y_check = net.recover(y8, k)
            _, y_wrong = net.recover(y8, derive_master_key("not the password", prot.record.kdf.salt, ctx.kdf)
                                     .key_for(net, face.index, h, w))
        repro.append(int(np.abs(u8(y_hat).astype(int) - extract(prot.image, crop).astype(int)).max()))
        secrets = {"protection by-product x̂": x_hat[0].permute(1, 2, 0).numpy(),
                   "recovery by-product y̌ (right key)": y_check[0].permute(1, 2, 0).numpy(),
                   "recovery by-product ÿ (wrong key)": y_wrong[0].permute(1, 2, 0).numpy()}
        baseline_corr.append(_array_leak(prot.image, secrets["protection by-product x̂"], crop))
        artifacts = {"Protected": prot, "record JSON": prot.record.to_json(), "PNG written to disk": on_disk,
                     "PNG in memory": in_memory, "Recovered": rec, "Recovered (forced, wrong password)": wrong,
                     "log at DEBUG": logs.text}
        # x̂ is also compared, as an array, with the crop window of every image that leaves; the
        # recovery by-products only byte for byte (y̌ resembles the veil, which is public anyway)
        all_findings += find_leaks(secrets, artifacts, {"protection by-product x̂": crop})
        chunk_types |= {k for k, _ in png_chunks(on_disk)}
        record_bytes.append(len(prot.record.to_json().encode()))
        byproduct_bytes.append(h * w * 3)
    res = {"photos": len(photos), "findings": all_findings, "png_chunk_types": sorted(chunk_types),
           "record_bytes_max": max(record_bytes), "byproduct_bytes_8bit": max(byproduct_bytes),
           "log_records_at_debug": log_lines, "reproduction_max_abs_diff": max(repro),
           "protected_vs_byproduct_abs_corr_max": round(max(baseline_corr), 4)}
    return res, data


# -- 2. what it would reveal --------------------------------------------------------------------

def linear_probe_psnr(x: Tensor, feats: list[Tensor]) -> list[float]:
    """Per image: PSNR of the least-squares fit of x from ``feats`` (+ a constant), per channel."""
    out = []
    for i in range(x.shape[0]):
        mse = 0.0
        for c in range(3):
            cols = [f[i, c].reshape(-1).double() for f in feats] + [torch.ones(x.shape[-2] * x.shape[-1], dtype=torch.float64)]
            A = torch.stack(cols, 1)
            b = x[i, c].reshape(-1).double()
            sol = torch.linalg.lstsq(A, b[:, None]).solution
            mse += float(((A @ sol)[:, 0].clamp(0, 1) - b).pow(2).mean()) / 3
        out.append(10 * np.log10(1 / max(mse, 1e-12)))
    return out


def stretch(a: Tensor) -> Tensor:
    """Per image and channel min-max to [0, 1] (how one would look at a by-product)."""
    lo = a.amin(dim=(-2, -1), keepdim=True)
    hi = a.amax(dim=(-2, -1), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(1e-6)


def reveal(ctx: Context, n: int) -> dict:
    judge = ctx.judge()
    probes = ctx.probes(n)
    net = ctx.model.net
    master = derive_master_key(ctx.password, new_salt(), ctx.kdf)
    gen = torch.Generator().manual_seed(ctx.seed + 3)
    out = {}
    idx = list(range(len(probes)))
    x = torch.cat([t(p.rgb) for p in probes])
    s = x.shape[-1]
    k = torch.cat([master.key_for(net, i, s, s) for i in idx])
    k_rand = torch.randint(0, 2, k.shape, generator=gen).float() * 2 - 1
    for veil in sorted(VEILS):
        imgs: dict[str, Tensor] = {}
        with torch.inference_mode():
            y, _ = apply_veil(x, veil)
            y8 = torch.cat([t(u8(y[i:i + 1])) for i in idx])
            y_hat, x_hat = net.protect(x, y, k)
            yq = torch.cat([t(u8(y_hat[i:i + 1])) for i in idx])
            inv, _ = net.recover(yq, k_rand, aux=dwt(x_hat))
            _, y_check = net.recover(yq, k)
            _, y_wrong = net.recover(yq, k_rand)
        imgs["by-product x̂"] = x_hat.clamp(0, 1)
        imgs["x̂ contrast-stretched"] = stretch(x_hat)
        imgs["x̂ + random key through the network"] = inv.clamp(0, 1)
        imgs["recovery by-product y̌ (right key)"] = y_check.clamp(0, 1)
        imgs["recovery by-product ÿ (wrong key)"] = y_wrong.clamp(0, 1)
        imgs["veil itself"] = y8
        row = {}
        for name, im in imgs.items():
            q = quality(im, x)
            row[name] = {"vs_original": quality_summary(q)}
            if judge is not None:
                row[name]["identity"] = judge.summary(judge.verdicts(idx, im))
        row["linear probe"] = {"from_veil_psnr": float(np.mean(linear_probe_psnr(x, [y8]))),
                               "from_veil_and_byproduct_psnr": float(np.mean(linear_probe_psnr(x, [y8, x_hat])))}
        out[veil] = row
    return out


def run(ctx: Context) -> dict:
    t0 = time.time()
    n_photos = ctx.n(4, 1)
    ctx.say(f"byproduct: leak check on {n_photos} photos")
    leaks, data = leak_check(ctx, n_photos)
    n = ctx.n(20, 2)
    ctx.say(f"byproduct: what it would reveal ({n} faces × {len(VEILS)} veils)")
    rev = reveal(ctx, n)
    ok = not leaks["findings"] and leaks["reproduction_max_abs_diff"] <= 1
    summary = (f"{leaks['photos']} photo{'s' if leaks['photos'] != 1 else ''} protected and recovered through the API: the by-products were found "
               f"in none of the returned objects, record, PNG chunks or {leaks['log_records_at_debug']} DEBUG log "
               "records" if ok else f"LEAK: {leaks['findings'][:3]}")
    res = {"name": NAME, "title": TITLE, "leak_check": leaks, "reveal": rev, "faces": n,
           "verdict": {"status": "ok" if ok else "finding", "summary": summary}}
    res["meta"] = ctx.meta(f"{data}; {ctx.faces_dir} ({n} faces, {ctx.size} px)", t0, kdf=ctx.kdf)
    return res


def markdown(r: dict) -> str:
    lc = r["leak_check"]
    out = [provenance(r["meta"]), "\n"]
    out.append(f"**Nothing leaves.** {lc['photos']} photos protected, saved, re-read and recovered (right "
               f"password, and a wrong one with `force`) through `faceveil.api` with the `faceveil` loggers at "
               f"DEBUG ({lc['log_records_at_debug']} records captured). The by-products were recomputed exactly "
               f"(the recomputed ŷ differs from the saved pixels by at most {lc['reproduction_max_abs_diff']} "
               f"of 255 levels) and searched for in the returned `Protected`/`Recovered` objects, the record JSON, the PNG "
               f"bytes and every chunk ({', '.join(lc['png_chunk_types'])}; zlib streams inflated) and the log "
               f"text, as 8-bit and float32 bytes (CHW/HWC), hex, base64, printed numbers and correlated arrays "
               f"(|r| ≥ {CORR_LEAK}; the protected pixels themselves correlate "
               f"{lc['protected_vs_byproduct_abs_corr_max']} with x̂). **Findings: {len(lc['findings'])}.** "
               f"The record is at most {lc['record_bytes_max']:,} bytes; one 8-bit by-product alone would need "
               f"{lc['byproduct_bytes_8bit']:,}.\n\n")
    out.append(f"**What it would reveal if it leaked** ({r['faces']} held-out faces per veil; vs the original):\n\n")
    rows = []
    for veil, row in r["reveal"].items():
        for name, d in row.items():
            if name == "linear probe":
                continue
            rows.append([veil, name, num(d["vs_original"]["psnr"]), num(d["vs_original"]["ssim"], 4),
                         *id_cells(d.get("identity"))])
        lp = row["linear probe"]
        rows.append([veil, "linear probe: x fitted from y / from (y, x̂)",
                     f"{lp['from_veil_psnr']:.2f} / {lp['from_veil_and_byproduct_psnr']:.2f}", "", "", "", ""])
    out.append(table(["veil", "image", "PSNR", "SSIM", "identity match", "rank-1", "mean cosine"], rows))
    return "".join(out)
