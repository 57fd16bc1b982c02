"""A contact sheet of every veil: the same faces (rows) under every variant that ``faceveil
eval-veils`` measures (columns: the original, each registered veil at its default, the
pose-consistency paper's pixelate/blur baselines), each column labelled with its parameters.

    python tools/contact_sheet.py                     # docs/veils.png from the public-domain sample faces
    python tools/contact_sheet.py --faces .cache/data/lfw_dev_128 -n 5 -o out/veils-lfw.png

The default faces are the four in ``examples/group.jpg`` (public domain, see examples/CREDITS.md),
cut the way the pipeline cuts them (YuNet box + 15 % margin, square) and resized to ``--size``: a
sheet that may be committed. ``--faces DIR`` takes a seeded sample of crops from a folder instead
(the LFW dev crops): LFW is research data that must not be committed, so write that sheet outside
``docs/`` (``out/`` is git-ignored). Veils are applied with the parameters they get for a crop of
``--size`` pixels, the cartoon sticker placed from each face's landmarks.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from faceveil.detect import face_crop, get_detector  # noqa: E402
from faceveil.eval.harness import list_faces  # noqa: E402
from faceveil.eval.identity import fallback_landmarks  # noqa: E402
from faceveil.eval.veils import central_face, variants, veil_crops  # noqa: E402

GAP, HEADER, MARGIN = 4, 38, 8


def sample_faces(photo: Path, size: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every face of ``photo`` as a ``size``×``size`` crop (the pipeline's crop rule) with its landmarks."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    h, w = rgb.shape[:2]
    out = []
    for f in sorted(get_detector("yunet").detect(rgb), key=lambda f: -f.width):
        c = face_crop(f.box, w, h)
        if c is None or c.width != c.height:  # a crop clipped by the border would be distorted
            continue
        crop = Image.fromarray(rgb[c.y0:c.y1, c.x0:c.x1]).resize((size, size), Image.BICUBIC)
        s = size / c.width
        lm = None if f.landmarks is None else (np.asarray(f.landmarks) - [c.x0, c.y0] + 0.5) * s - 0.5
        out.append((np.asarray(crop), lm))
    return out


def folder_faces(folder: Path, n: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """A seeded sample of ``n`` crops from ``folder``, resized to ``size``, with YuNet landmarks."""
    out = []
    for p in list_faces(folder, n, seed):
        im = np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC))
        f = central_face(get_detector("yunet").detect(im), size, size)
        out.append((im, None if f is None else np.asarray(f.landmarks)))
    return out


def label_of(variant, params: dict) -> tuple[str, str]:
    if variant.veil is None:
        return "original", ""
    if variant.label == "cartoon":
        return "cartoon", "sticker per face"
    short = {"kernel": "kernel", "sigma": "sigma", "block": "cell"}  # the default font has no Greek
    text = ", ".join(f"{short.get(k, k)} {v:.3g}" if isinstance(v, float) else f"{short.get(k, k)} {v}"
                     for k, v in params.items() if k != "region")
    return variant.label, text


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", type=Path, default=ROOT / "examples" / "group.jpg",
                    help="take the faces of this photo (default: the public-domain sample)")
    ap.add_argument("--faces", type=Path, help="take a seeded sample of crops from this folder instead")
    ap.add_argument("-n", type=int, default=5, help="faces from --faces (default 5)")
    ap.add_argument("--size", type=int, default=128, help="tile size in pixels (default 128)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "veils.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    faces = folder_faces(args.faces, args.n, args.size, args.seed) if args.faces else sample_faces(args.photo, args.size)
    if not faces:
        print("contact_sheet: no faces found", file=sys.stderr)
        return 1
    chosen = variants()
    x = torch.stack([torch.from_numpy(f.copy()).permute(2, 0, 1).float() / 255.0 for f, _ in faces])
    lms = np.stack([lm if lm is not None else fallback_landmarks(args.size, args.size) for _, lm in faces])
    columns = []
    for v in chosen:
        y, params = veil_crops(x, v, lms, random.Random(f"{args.seed}:{v.label}"))
        columns.append((label_of(v, params[0]), (y.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()))

    s = args.size
    sheet = Image.new("RGB", (2 * MARGIN + len(columns) * (s + GAP) - GAP,
                              2 * MARGIN + HEADER + len(faces) * (s + GAP) - GAP), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(14), _font(11)
    for j, ((name, detail), tiles) in enumerate(columns):
        x0 = MARGIN + j * (s + GAP)
        draw.text((x0 + 2, MARGIN), name, fill="black", font=big)
        draw.text((x0 + 2, MARGIN + 18), detail, fill=(90, 90, 90), font=small)
        for i, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile), (x0, MARGIN + HEADER + i * (s + GAP)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output} ({len(faces)} faces × {len(columns)} variants)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
