"""Detection benchmark for faceveil.detect (YuNet, multi-scale): rate, false positives, sizes, speed.

Usage (from the repository root; the data comes from `make data` into .cache/data):

    nice .venv/bin/python benchmarks/detect_bench.py [--only lfw,fp,sizes,speed] [--dump DIR]

* lfw:   LFW full-frame 250×250 photos; the named person's face is the one whose box centre lies
         within 40 px of the image centre. Reports hits, extra faces, ms per photo.
* fp:    face-free scenes (Urban100, Sun-Hays80): detections at thresholds 0.5 / 0.6 / 0.7.
* sizes: LFW faces scaled to a given box size and pasted on Urban100 backgrounds (640×640):
         share found (IoU >= 0.4 with the pasted box) per size, with min_size 24 and 12.
* speed: a 640×480 and a 4000×3000 synthetic photo (LFW faces pasted at known sizes, 24-900 px).

``--dump DIR`` writes the extra-face and false-positive crops there for a manual check.
Timings depend on the load of the machine: say what else ran when you quote them.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from faceveil.detect import YuNetDetector

DATA = Path(".cache/data")
LFW = DATA / "lfw_dev_fullframe_250"
SCENES = [DATA / "natural_train" / "urban100", DATA / "natural_train" / "sun_hays80"]


def load(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    i = iw * ih
    return i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i)


def dump_crop(dump: Path | None, img: np.ndarray, box, name: str) -> None:
    if dump is None:
        return
    dump.mkdir(parents=True, exist_ok=True)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    h, w = img.shape[:2]
    crop = img[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if crop.size:
        Image.fromarray(crop).resize((96, int(96 * crop.shape[0] / crop.shape[1]) or 1)).save(dump / name)


def bench_lfw(det: YuNetDetector, dump: Path | None) -> None:
    files = sorted(LFW.glob("*/*.jpg"))
    hits, extra, t = 0, 0, 0.0
    missed = []
    for f in files:
        img = load(f)
        t0 = time.perf_counter()
        faces = det.detect(img)
        t += time.perf_counter() - t0
        h, w = img.shape[:2]
        central = [fc for fc in faces
                   if abs(fc.center[0] - w / 2) < 40 and abs(fc.center[1] - h / 2) < 40]
        if central:
            hits += 1
        else:
            missed.append(f.name)
        for k, fc in enumerate(faces):
            if fc not in central[:1]:
                extra += 1
                dump_crop(dump, img, fc.box, f"lfw_extra_{f.stem}_{k}_{fc.score:.2f}.png")
    print(f"lfw: central face found in {hits}/{len(files)} photos ({100 * hits / len(files):.1f} %), "
          f"{len(set(p.parent.name for p in files))} people; {extra} further faces; "
          f"{1000 * t / len(files):.1f} ms/photo; missed: {missed}")


def bench_fp(dump: Path | None) -> None:
    det = YuNetDetector(threshold=0.5)
    files = sorted(p for d in SCENES for p in d.glob("*.jpg"))
    scores = []
    per_img = {0.5: 0, 0.6: 0, 0.7: 0}
    for f in files:
        img = load(f)
        faces = det.detect(img)
        for k, fc in enumerate(faces):
            scores.append(fc.score)
            dump_crop(dump, img, fc.box, f"fp_{f.parent.name}_{f.stem}_{k}_{fc.score:.2f}.png")
        for th in per_img:
            per_img[th] += any(fc.score >= th for fc in faces)
    s = np.array(scores)
    print(f"fp: {len(files)} face-free scenes; boxes at >=0.5/0.6/0.7: "
          f"{(s >= 0.5).sum()}/{(s >= 0.6).sum()}/{(s >= 0.7).sum()}; "
          f"photos with any: {per_img[0.5]}/{per_img[0.6]}/{per_img[0.7]}; scores {sorted(s.round(2))}")


def reference_faces(n: int) -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    """n LFW photos with a confident central face, and that face's box."""
    det = YuNetDetector(threshold=0.8)
    files = sorted(LFW.glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    out = []
    for f in files:
        img = load(f)
        c = [fc for fc in det.detect(img) if abs(fc.center[0] - 125) < 25 and abs(fc.center[1] - 125) < 25]
        if c:
            out.append((img, c[0].box))
        if len(out) == n:
            break
    return out


def place(canvas: np.ndarray, img: np.ndarray, box, size: float, fx: float, fy: float):
    """Paste ``img`` scaled so that ``box``'s longer side is ``size``, with the box's top-left at
    (fx, fy) of the canvas (in place); returns the pasted box."""
    s = size / max(box[2] - box[0], box[3] - box[1])
    n = max(1, round(img.shape[1] * s))
    sim = np.asarray(Image.fromarray(img).resize((n, n), Image.BILINEAR))
    ox, oy = round(fx - box[0] * s), round(fy - box[1] * s)
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, ox), max(0, oy), min(W, ox + n), min(H, oy + n)
    canvas[y0:y1, x0:x1] = sim[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return (ox + box[0] * s, oy + box[1] * s, ox + box[2] * s, oy + box[3] * s)


def background(k: int, w: int, h: int) -> np.ndarray:
    files = sorted(SCENES[0].glob("*.jpg"))
    return np.asarray(Image.fromarray(load(files[k % len(files)])).resize((w, h), Image.BILINEAR)).copy()


def bench_sizes(refs) -> None:
    rng = random.Random(1)
    for min_size in (24, 12):
        det = YuNetDetector(min_size=min_size, threshold=0.6)
        row = []
        for size in (10, 12, 14, 16, 20, 24, 32, 64, 128, 256, 400, 560, 620):
            hit = 0
            for k, (img, box) in enumerate(refs):
                canvas = background(k, 640, 640)
                bw = (box[2] - box[0]) * size / max(box[2] - box[0], box[3] - box[1])
                bh = (box[3] - box[1]) * size / max(box[2] - box[0], box[3] - box[1])
                exp = place(canvas, img, box, size, rng.uniform(0, 640 - bw), rng.uniform(0, 640 - bh))
                hit += any(iou(f.box, exp) >= 0.4 for f in det.detect(canvas))
            row.append(f"{size}px {100 * hit / len(refs):.0f}%")
        print(f"sizes (min_size={min_size}, {len(refs)} faces): " + ", ".join(row))


def bench_speed(refs) -> None:
    det = YuNetDetector()
    rng = random.Random(2)
    # 640×480 with three faces
    canvas = background(3, 640, 480)
    boxes = [place(canvas, refs[i][0], refs[i][1], s, x, y)
             for i, (s, x, y) in enumerate([(120, 60, 80), (60, 300, 150), (30, 520, 300)])]
    det.detect(canvas)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        faces = det.detect(canvas)
    t = (time.perf_counter() - t0) / reps
    found = sum(any(iou(f.box, b) >= 0.4 for f in faces) for b in boxes)
    print(f"speed 640×480: {1000 * t:.0f} ms, {found}/{len(boxes)} pasted faces found, {len(faces)} boxes")
    # 4000×3000 with 12 faces from 24 to 900 px on a grid
    big = background(5, 4000, 3000)
    sizes = [24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 700, 900]
    boxes = []
    x, y, rowh = 50.0, 50.0, 0.0
    for i, s in enumerate(sizes):
        img, box = refs[(i + 3) % len(refs)]
        if x + s * 1.6 > 3950:
            x, y, rowh = 50.0, y + rowh + 60, 0.0
        boxes.append(place(big, img, box, s, x + rng.uniform(0, 20), y))
        x += s * 1.6 + 60
        rowh = max(rowh, s * 1.4)
    for ms in (24, 48, 96):
        d = YuNetDetector(min_size=ms)
        t0 = time.perf_counter()
        faces = d.detect(big)
        t = time.perf_counter() - t0
        found = [s for s, b in zip(sizes, boxes) if any(iou(f.box, b) >= 0.4 for f in faces)]
        print(f"speed 4000×3000 min_size={ms}: {t:.2f} s, scales {[round(s, 3) for s in d.scales(4000, 3000)]}, "
              f"found sizes {found} of {sizes}; {len(faces)} boxes")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="lfw,fp,sizes,speed")
    ap.add_argument("--dump", type=Path, default=None)
    ap.add_argument("--refs", type=int, default=40, help="faces for the size sweep")
    a = ap.parse_args(argv)
    parts = set(a.only.split(","))
    if not LFW.is_dir():
        print(f"no data at {LFW}; run `make data` first", file=sys.stderr)
        return 1
    if "lfw" in parts:
        bench_lfw(YuNetDetector(), a.dump)
    if "fp" in parts:
        bench_fp(a.dump)
    if parts & {"sizes", "speed"}:
        refs = reference_faces(a.refs)
        if "sizes" in parts:
            bench_sizes(refs)
        if "speed" in parts:
            bench_speed(refs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
