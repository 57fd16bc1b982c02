"""Protect / recover speed per face (112, 256, 512 px crops) and per photo, on this machine.

    python benchmarks/bench_speed.py [--model NAME] [--repeats 5] [--threads N] [--no-write]

Per face: one crop (a real face from ``examples/group.jpg``, resized) veiled with blur, hidden and
recovered through the same code the CLI uses (``faceveil.pipeline``: tiling above 512 px, 8-bit
rounding), median of ``--repeats`` runs after one warm-up, plus the time per megapixel of crop.
Per photo: ``faceveil.protect`` / ``faceveil.recover`` on the bundled group photo, detection and
the scrypt key derivation included (each timed separately as well).

The results go into the ``bench_speed`` section of ``docs/RESULTS.md`` (and
``docs/results/bench_speed.json``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import faceveil  # noqa: E402
from faceveil.detect import get_detector  # noqa: E402
from faceveil.eval.harness import machine_info  # noqa: E402
from faceveil.eval.report import BENCH_SECTION, RESULTS_MD, update_section  # noqa: E402
from faceveil.io.image import read_image  # noqa: E402
from faceveil.keys import DEFAULT_KDF, derive_master_key, new_salt  # noqa: E402
from faceveil.models.zoo import load_model  # noqa: E402
from faceveil.pipeline import FacePlan, protect_face, recover_face  # noqa: E402
from faceveil.detect.geometry import CropBox  # noqa: E402

PHOTO = ROOT / "examples" / "group.jpg"
SIZES = (112, 256, 512)


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def face_sample(size: int) -> np.ndarray:
    img = read_image(PHOTO)
    faces = get_detector("yunet").detect(img.rgb)
    x0, y0, x1, y1 = max(faces, key=lambda f: f.score).box
    c, s = ((x0 + x1) / 2, (y0 + y1) / 2), max(x1 - x0, y1 - y0) * 1.3
    crop = Image.fromarray(img.rgb).crop((int(c[0] - s / 2), int(c[1] - s / 2), int(c[0] + s / 2), int(c[1] + s / 2)))
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model name or .safetensors (default: the shipped default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    master = derive_master_key("bench", new_salt(), DEFAULT_KDF)

    rows = []
    for size in SIZES:
        crop = face_sample(size)
        plan = FacePlan(0, (0, 0, size, size), CropBox(0, 0, size, size), veil="blur")
        tp, (prot, _) = timed(lambda: protect_face(crop, plan, master, lm), args.repeats)
        tr, rec = timed(lambda: recover_face(prot, 0, master, lm), args.repeats)
        mp = size * size / 1e6
        psnr = 10 * np.log10(255.0 ** 2 / max(1e-12, np.mean((rec.astype(float) - crop.astype(float)) ** 2)))
        rows.append({"size": size, "protect_s": tp, "recover_s": tr, "protect_s_per_mp": tp / mp,
                     "recover_s_per_mp": tr / mp, "recovery_psnr_db": float(psnr)})
        print(f"{size:4d} px: protect {tp * 1e3:8.1f} ms ({tp / mp:6.2f} s/MP), recover {tr * 1e3:8.1f} ms "
              f"({tr / mp:6.2f} s/MP), recovery {psnr:.2f} dB", flush=True)

    t0 = time.perf_counter()
    derive_master_key("bench", new_salt(), DEFAULT_KDF)
    t_kdf = time.perf_counter() - t0
    img = read_image(PHOTO)
    t0 = time.perf_counter()
    faces = get_detector("yunet").detect(img.rgb)
    t_det = time.perf_counter() - t0
    t0 = time.perf_counter()
    prot = faceveil.protect(img.rgb, "bench")
    t_prot = time.perf_counter() - t0
    out = ROOT / ".cache" / "bench_speed.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    prot.save(out)
    t0 = time.perf_counter()
    faceveil.recover(out, "bench")
    t_rec = time.perf_counter() - t0
    crop_mp = sum(f.crop.width * f.crop.height for f in prot.faces) / 1e6
    h, w = img.rgb.shape[:2]
    photo = {"file": str(PHOTO.relative_to(ROOT)), "width": w, "height": h, "faces": len(faces),
             "face_crop_megapixels": crop_mp, "detect_s": t_det, "kdf_s": t_kdf,
             "protect_total_s": t_prot, "recover_total_s": t_rec}
    print(f"photo {w}×{h}, {len(faces)} faces ({crop_mp:.2f} MP of crops): detect {t_det:.2f} s, scrypt "
          f"{t_kdf:.2f} s, protect total {t_prot:.2f} s, recover total {t_rec:.2f} s")

    mach = machine_info()
    res = {"model": {"name": lm.name, "sha256": lm.sha256}, "machine": mach,
           "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "per_face": rows, "photo": photo,
           "command": "python benchmarks/bench_speed.py" + (f" --threads {args.threads}" if args.threads else "")}
    if args.no_write:
        return 0
    jp = ROOT / "docs" / "results" / "bench_speed.json"
    jp.parent.mkdir(parents=True, exist_ok=True)
    jp.write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"Command: `{res['command']}` — model {lm.name} `{lm.sha256[:16]}…`, {mach.get('cpu')}, "
             f"{res['torch_threads']} torch threads, median of {args.repeats} runs, blur veil, 8-bit output.\n",
             "| face crop | protect | recover | protect per MP | recover per MP | recovery PSNR |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']}×{r['size']} | {r['protect_s'] * 1e3:.0f} ms | {r['recover_s'] * 1e3:.0f} ms | "
                     f"{r['protect_s_per_mp']:.2f} s | {r['recover_s_per_mp']:.2f} s | {r['recovery_psnr_db']:.2f} dB |")
    lines.append("")
    lines.append(f"Whole photo `{photo['file']}` ({w}×{h}, {len(faces)} faces, {crop_mp:.2f} MP of face crops): "
                 f"protect {t_prot:.2f} s, recover {t_rec:.2f} s in all, of which face detection {t_det:.2f} s "
                 f"and the scrypt key derivation (n=2^16, r=8) {t_kdf:.2f} s each time.")
    update_section(ROOT / RESULTS_MD, BENCH_SECTION, "\n".join(lines))
    print(f"wrote {jp.relative_to(ROOT)} and the {BENCH_SECTION} section of {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
