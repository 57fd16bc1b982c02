"""Per-face quality on whole photos, through saved files: protect -> PNG -> recover.

    python benchmarks/photo_quality.py [PHOTO ...] [--model NAME] [--veil V ...] [--no-write]

For every photo (default: the bundled ``examples/group.jpg``) and veil, the photo is protected with
``faceveil.protect``, written as PNG, read back and recovered with the right password and, with
``force``, with a wrong one. Per face it reports

* protection: PSNR of the protected face against the veil itself (PRO-Face S Table I, here at the
  face's native size inside a real photo);
* recovery: PSNR of the recovered face against the original crop (Table II);
* wrong password: PSNR against the original (Table III, RandWR), and the *leak*: the structure the
  wrong-password face shares with what the veil hid, ``detail_corr2(wrong, x − y, scales=4)``
  (:func:`faceveil.train.losses.detail_corr2`, squared local correlation of detail layers at four
  dyadic scales, 0 = none), beside the same score for uniform noise and for the original face.

Results go to the ``photo_quality`` section of ``docs/RESULTS.md`` and
``docs/results/photo_quality.json`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import faceveil  # noqa: E402
from faceveil.detect.geometry import extract  # noqa: E402
from faceveil.eval.harness import machine_info, quantize  # noqa: E402
from faceveil.eval.metrics import psnr  # noqa: E402
from faceveil.eval.report import RESULTS_MD, update_section  # noqa: E402
from faceveil.io.image import read_image  # noqa: E402
from faceveil.models.zoo import load_model  # noqa: E402
from faceveil.obfuscate import apply_veil  # noqa: E402
from faceveil.pipeline import to_tensor  # noqa: E402
from faceveil.train.losses import detail_corr2  # noqa: E402

PHOTOS = [ROOT / "examples" / "group.jpg"]
PASSWORD = "benchmark password: correct horse battery staple"
WRONG = "benchmark password: correct horse battery stapler"
SECTION = "photo_quality"


def measure(photo: Path, veil: str, model, tmp: Path) -> list[dict]:
    original = read_image(photo).rgb
    prot = faceveil.protect(photo, PASSWORD, veil=veil, model=model)
    path = prot.save(tmp / f"{photo.stem}.{veil}.png", overwrite=True)
    images = {"saved": read_image(path).rgb, "right": faceveil.recover(path, PASSWORD, model=model).image,
              "wrong": faceveil.recover(path, WRONG, force=True, model=model).image}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for f in prot.faces:
        x = to_tensor(extract(original, f.crop))
        saved, right, wrong = (to_tensor(extract(images[k], f.crop)) for k in ("saved", "right", "wrong"))
        y = quantize(apply_veil(x, f.veil, f.params)[0])
        hidden = x - y  # what the veil removed

        def db(a: torch.Tensor, b: torch.Tensor) -> float:
            return round(float(psnr(a, b)), 2)

        def leak(a: torch.Tensor) -> float:
            return round(float(detail_corr2(a, hidden, scales=4)), 4)

        box = f.crop.as_list()
        rows.append({
            "photo": photo.name, "veil": veil, "face": f.index, "crop": box, "side": box[2] - box[0],
            "protect_db": db(saved, y), "recover_db": db(right, x), "wrong_db": db(wrong, x),
            "wrong_leak": leak(wrong), "noise_leak": leak(quantize(torch.rand(x.shape, generator=gen))),
            "original_leak": leak(x),
        })
    return rows


def markdown(res: dict) -> str:
    m = res["meta"]
    head = ["photo", "veil", "face", "crop (px)", "protected vs veil (dB)", "recovered vs original (dB)",
            "wrong password vs original (dB)", "wrong-password leak", "noise leak", "original's own leak"]
    lines = [f"`{m['command']}` — model {m['model']} `{m['model_sha256'][:16]}…`, {m['machine']['cpu']}, "
             f"{m['date']}. Leak: structure shared with what the veil hid (x − y), four scales; "
             "0 = none; the last column scores the original face itself.\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["faces"]:
        lines.append(f"| {r['photo']} | {r['veil']} | {r['face']} | {r['side']} | {r['protect_db']:.2f} | "
                     f"{r['recover_db']:.2f} | {r['wrong_db']:.2f} | {r['wrong_leak']:.3f} | {r['noise_leak']:.3f} | "
                     f"{r['original_leak']:.3f} |")
    s = res["summary"]
    lines.append(f"| **all** | | {s['faces']} | | min {s['protect_min']:.2f} / mean {s['protect_mean']:.2f} | "
                 f"min {s['recover_min']:.2f} / mean {s['recover_mean']:.2f} | max {s['wrong_max']:.2f} | "
                 f"max {s['leak_max']:.3f} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="*", type=Path, help="photos (default: examples/group.jpg)")
    ap.add_argument("--model", help="model name or .safetensors (default: the shipped default)")
    ap.add_argument("--veil", nargs="+", default=["blur", "pixelate", "median"])
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    a = ap.parse_args(argv)
    model = load_model(a.model)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for photo in a.photos or PHOTOS:
            for veil in a.veil:
                rows.extend(measure(photo, veil, model, Path(tmp)))
    if not rows:
        print("photo_quality: no face found", file=sys.stderr)
        return 1
    cmd = "python benchmarks/photo_quality.py" + "".join(f" {p}" for p in a.photos)
    cmd += "" if a.model is None else f" --model {a.model}"
    cmd += "" if a.veil == ["blur", "pixelate", "median"] else " --veil " + " ".join(a.veil)
    import datetime as _dt

    res = {"meta": {"command": cmd, "model": model.name, "model_sha256": model.sha256,
                    "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "machine": machine_info()},
           "faces": rows,
           "summary": {"faces": len(rows),
                       "protect_min": min(r["protect_db"] for r in rows),
                       "protect_mean": round(sum(r["protect_db"] for r in rows) / len(rows), 2),
                       "recover_min": min(r["recover_db"] for r in rows),
                       "recover_mean": round(sum(r["recover_db"] for r in rows) / len(rows), 2),
                       "wrong_max": max(r["wrong_db"] for r in rows),
                       "leak_max": max(r["wrong_leak"] for r in rows)}}
    md = markdown(res)
    print(md)
    if not a.no_write:
        out = ROOT / "docs" / "results" / "photo_quality.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        update_section(ROOT / RESULTS_MD, SECTION, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
