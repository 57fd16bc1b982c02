"""Build the synthetic donor faces of the ``swap`` veil (``src/faceveil/obfuscate/donors/``).

    python tools/make_donors.py            # from .cache/data/utkface_128 (make data); ~30 min on one core
    python tools/make_donors.py --check    # then also print MobileFaceNet similarities (eval weights)

A donor must not be a real person: swapping someone's face into a photo exposes that someone.
Each donor is therefore the **uniform average of ``--faces`` (48; never fewer than 40) different
aligned UTKFace training faces** of one demographic group (gender × UTKFace race label × age band,
adults only; :data:`GROUPS`), so donors differ from each other the way faces differ across those
groups while none of them is anyone. No face is used in two donors.

Steps, all deterministic (``--seed``; one CPU thread):

1. YuNet landmarks on every adult UTKFace crop; faces kept when the detector is confident
   (≥ 0.85), the head is near frontal (nose within 0.12 inter-ocular distances of the eyes'
   midpoint) and upright (roll ≤ 12°).
2. Per group: a seeded sample of up to ``--pool`` (72) unused candidates. Their landmarks are
   brought onto a common 128-px template by a similarity; the donor's own five-point shape is
   their mean. Each candidate is warped onto that shape with a thin-plate spline through its five
   landmarks (:func:`faceveil.obfuscate.swap.fit_map`).
3. Of the candidates whose picture covers the whole swap mask (UTKFace crops are tight), the
   ``--faces`` closest to the group's per-pixel median inside the mask are kept: this drops
   glasses, hands, strong shadows and odd crops.
4. Dense alignment ("congealing", :func:`congeal`): each kept face gets a smooth displacement
   field bringing its local structure onto the group mean's, so eyes, brows and mouths line up
   beyond what five points can do and the average is not mush.
5. The faces are averaged with **equal weights** (every face covers every mask pixel; the
   minimum count is recorded and checked ≥ 40), sharpened a little (unsharp mask σ 1 px,
   amount 1) and saved as a 128×128 PNG.

``donors.json`` records, per donor: file, sha256 (checked on every load), the five landmarks, the
number of faces, the weight per face, the minimum number of faces at any mask pixel, the group,
and a hash of the source file list; and the dataset with its licence. UTKFace is for
non-commercial research only: like the shipped weights, the donors are derived from research data
and carry that restriction.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from faceveil.detect import get_detector  # noqa: E402
from faceveil.obfuscate.swap import (  # noqa: E402
    DONOR_FORMAT,
    DONOR_FORMAT_VERSION,
    DONOR_MANIFEST,
    MIN_DONOR_FACES,
    face_mask,
    _pixel_grid,
    fit_map,
    similarity,
)

SIZE = 128
#: The canvas template (pixels of a 128×128 donor, pixel centres at integers): the median YuNet
#: landmarks of the adult UTKFace crops, made symmetric about the vertical centre line.
TEMPLATE = np.array([[37.0, 42.5], [91.0, 42.5], [64.0, 71.0], [40.0, 93.0], [88.0, 93.0]])
RACES = {"white": "0", "black": "1", "asian": "2", "indian": "3", "other": "4"}
#: (name, gender 'm'/'f', UTKFace race label, youngest, oldest). Disjoint groups; a group named
#: twice (suffix b) takes the next candidates of the same seeded order, so its faces differ.
GROUPS = (
    ("f-white-18-34", "f", "white", 18, 34),
    ("f-white-35-59", "f", "white", 35, 59),
    ("f-white-60-99", "f", "white", 60, 99),
    ("m-white-18-34", "m", "white", 18, 34),
    ("m-white-35-59", "m", "white", 35, 59),
    ("m-white-60-99", "m", "white", 60, 99),
    ("f-black-18-59", "f", "black", 18, 59),
    ("m-black-18-59", "m", "black", 18, 59),
    ("f-asian-18-34", "f", "asian", 18, 34),
    ("f-asian-35-99", "f", "asian", 35, 99),
    ("m-asian-18-34", "m", "asian", 18, 34),
    ("m-asian-35-99", "m", "asian", 35, 99),
    ("f-indian-18-34", "f", "indian", 18, 34),
    ("f-indian-35-99", "f", "indian", 35, 99),
    ("m-indian-18-34", "m", "indian", 18, 34),
    ("m-indian-35-99", "m", "indian", 35, 99),
    ("f-other-18-34", "f", "other", 18, 34),
    ("m-other-18-34", "m", "other", 18, 34),
    ("f-white-18-34-b", "f", "white", 18, 34),
    ("m-white-35-59-b", "m", "white", 35, 59),
)
DATASET = {
    "name": "UTKFace aligned & cropped (the project's 128 px subset, faces_train_utkface_128)",
    "role": "training data",
    "license": "UTKFace: non-commercial research purposes only; copyright of the images belongs to "
               "their owners. The donors are averages derived from it, so they carry that restriction.",
}


def detect_all(root: Path, rows: list[dict], *, min_age: int = 18, min_score: float = 0.85, max_yaw: float = 0.12,
               max_roll: float = 12.0, iod: tuple[float, float] = (35.0, 80.0)) -> dict[int, np.ndarray]:
    """Row index -> 5×2 landmarks for the faces aged ``min_age``+ that pass the quality filter: a
    confident (``min_score``), near-frontal (nose within ``max_yaw`` inter-ocular distances of the
    eyes' midpoint), upright (roll ≤ ``max_roll`` degrees) face of a sensible size (``iod`` px)."""
    det = get_detector("yunet", threshold=0.5)
    out = {}
    for i, r in enumerate(rows):
        if int(r["age"]) < min_age:
            continue
        with Image.open(root / r["file"]) as im:
            rgb = np.asarray(im.convert("RGB"))
        h, w = rgb.shape[:2]
        faces = [f for f in det.detect(rgb) if f.landmarks is not None]
        if not faces:
            continue
        f = min(faces, key=lambda f: (f.center[0] - w / 2) ** 2 + (f.center[1] - h / 2) ** 2 - 100 * f.score)
        lm = np.asarray(f.landmarks, np.float64)
        d = float(np.hypot(*(lm[1] - lm[0])))
        yaw = (lm[2, 0] - (lm[0, 0] + lm[1, 0]) / 2) / max(d, 1e-6)
        roll = np.degrees(np.arctan2(lm[1, 1] - lm[0, 1], lm[1, 0] - lm[0, 0]))
        if f.score >= min_score and abs(yaw) <= max_yaw and abs(roll) <= max_roll and iod[0] <= d <= iod[1]:
            out[i] = lm
    return out


def load_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None]


def _canvas_grid(n: int, size: int = SIZE, dtype=torch.float64) -> torch.Tensor:
    """The identity sampling grid of a ``size`` canvas, ``n×size×size×2`` normalised (align_corners=False)."""
    t = (torch.arange(size, dtype=dtype) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx, yy], -1)[None].expand(n, -1, -1, -1)


def _gblur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(np.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(-1, -2), groups=x.shape[1])


def _features(x: torch.Tensor, sigma: float, local: float) -> torch.Tensor:
    """Lighting-free structure for registration: luminance (blurred by ``sigma``) minus its local
    mean, over its local spread (both over ``local`` pixels). Shape: ``N×3×H×W`` -> ``N×1×H×W``."""
    g = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    if sigma > 0:
        g = _gblur(g, sigma)
    hp = g - _gblur(g, local)
    return hp / (_gblur(hp ** 2, local) + 1e-4).sqrt()


def _field(disp: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(disp, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def _compose(base: torch.Tensor, disp: torch.Tensor, size: int) -> torch.Tensor:
    """Sampling grids ``base`` (into the sources) evaluated at the displaced canvas points."""
    ident = _canvas_grid(base.shape[0], size, base.dtype)
    b = base.permute(0, 3, 1, 2)
    if b.shape[-1] != size:
        b = F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False)
    return F.grid_sample(b, ident + _field(disp, size), mode="bilinear", padding_mode="border",
                         align_corners=False).permute(0, 2, 3, 1)


#: Congealing schedule: (working canvas in pixels, feature blur sigma in those pixels, Adam steps),
#: coarse to fine. The displacement field is smooth and resolution-free: it carries over.
ROUNDS = ((64, 1.0, 60), (64, 0.5, 60), (128, 1.0, 40), (128, 0.5, 40))
LR = 2e-3
DEBUG = False


def congeal(src: torch.Tensor, base: torch.Tensor, mask: torch.Tensor, cells: int = 12,
            smooth: float = 0.3) -> torch.Tensor:
    """Groupwise dense registration ("congealing"): every face gets a smooth displacement field
    (``cells``×``cells`` control grid, bicubic) that brings its structure onto the group's mean
    structure, re-estimated in :data:`ROUNDS` at finer scales, in float32, weighted by ``mask``
    where each face's picture is (``src`` carries a validity channel: ``N×4×H×W``). The fields
    are kept at zero mean over the group (their gradient's mean is removed), so the average face
    does not drift off the five-point shape its landmarks record. Returns the full-size sampling
    grids ``N×H×W×2`` into the sources: the thin-plate grids ``base`` composed with the
    displacement."""
    n = src.shape[0]
    base32 = base.float()
    disp = torch.zeros(n, 2, cells + 1, cells + 1, dtype=torch.float32, requires_grad=True)
    for work, sigma, steps in ROUNDS:
        f = src.shape[-1] // work
        s32 = F.avg_pool2d(src.float(), f) if f > 1 else src.float()
        m = F.interpolate(mask.float(), size=(work, work), mode="area").expand(n, -1, -1, -1)
        local = 3.0 * work / 64
        with torch.no_grad():
            out = F.grid_sample(s32, _compose(base32, disp, work), align_corners=False)
            cov = (out[:, 3:4] > 0.999).float()
            mean_feat = (_features(out[:, :3], sigma, local) * cov).sum(0, keepdim=True) \
                / cov.sum(0, keepdim=True).clamp_min(1)
        opt = torch.optim.Adam([disp], lr=LR)
        for step in range(steps):
            opt.zero_grad()
            out = F.grid_sample(s32, _compose(base32, disp, work), align_corners=False)
            feat = _features(out[:, :3], sigma, local)
            wt = m * (out[:, 3:4].detach() > 0.999)  # only where the face's picture is
            data = (((feat - mean_feat) ** 2) * wt).sum((1, 2, 3)) / wt.sum((1, 2, 3)).clamp_min(1)
            reg = (disp.diff(dim=2) ** 2).sum((1, 2, 3)) + (disp.diff(dim=3) ** 2).sum((1, 2, 3))
            loss = (data + smooth * reg * (SIZE / 2) ** 2 / cells ** 2).sum()
            if DEBUG and step in (0, steps - 1):
                print(f"    {work}px sigma {sigma} step {step}: data {float(data.detach().mean()):.4f}")
            loss.backward()
            disp.grad -= disp.grad.mean(0, keepdim=True)  # no common drift
            opt.step()
    with torch.no_grad():
        return _compose(base, disp.detach().double(), SIZE)


def build_donor(root: Path, rows: list[dict], cands: list[int], lms: dict[int, np.ndarray], n_faces: int,
                dense: bool = True) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """Average ``n_faces`` of ``cands`` (see the module docs). Returns the image (H×W×3 float in
    [0, 1], unsharpened), its landmarks, the chosen row indices and the minimum face count inside
    the mask."""
    norm = []
    for i in cands:
        m = similarity(lms[i], TEMPLATE)
        norm.append(lms[i] @ m[:, :2].T + m[:, 2])
    shape = np.mean(norm, axis=0)
    srcs, grids = [], []
    for i in cands:
        img = load_rgb(root / rows[i]["file"])
        srcs.append(torch.cat([img, torch.ones_like(img[:, :1])], 1))
        q = fit_map(shape, lms[i])(_pixel_grid(SIZE, SIZE))  # canvas pixel -> source pixel
        h, w = img.shape[-2:]
        grids.append(torch.stack([(2 * q[:, 0] + 1) / w - 1, (2 * q[:, 1] + 1) / h - 1], 1).reshape(1, SIZE, SIZE, 2))
    src, base = torch.cat(srcs), torch.cat(grids)
    out = F.grid_sample(src, base, align_corners=False)
    inner = face_mask(SIZE, SIZE, shape, 1.0, 0.25)
    cov = (out[:, 3:4] > 0.999).double()
    stack = out[:, :3] * cov
    # the per-pixel median of the candidates (over the ones covering the pixel), inside the mask
    med = torch.where(cov > 0, stack, torch.nan).nanmedian(dim=0, keepdim=True).values.nan_to_num(0.0)
    dist = (((stack - med) ** 2).sum(1, keepdim=True) * inner * cov).sum((1, 2, 3)) / (inner * cov).sum((1, 2, 3))
    # only faces whose picture covers the whole mask (the UTKFace crops are tight: a big face's
    # chin or cheek may be cut off); at least MIN_DONOR_FACES of them
    whole = [k for k in range(len(cands)) if bool(cov[k, 0][inner[0, 0] > 0].all())]
    if len(whole) < MIN_DONOR_FACES:
        raise SystemExit(f"only {len(whole)} of {len(cands)} candidates cover the face; raise --pool")
    keep = sorted(sorted(whole, key=lambda k: (float(dist[k]), cands[k]))[:n_faces])
    src, base = src[keep], base[keep]
    if dense:
        base = congeal(src, base, face_mask(SIZE, SIZE, shape, 0.95, 0.3))
    out = F.grid_sample(src, base, align_corners=False)
    cov = (out[:, 3:4] > 0.999).double()
    s, c = (out[:, :3] * cov).sum(0, keepdim=True), cov.sum(0, keepdim=True)
    mean = torch.where(c > 0, s / c.clamp_min(1), med)  # med: never used inside the mask
    min_count = int(c[0, 0][inner[0, 0] > 0].min())
    img = mean[0].permute(1, 2, 0).numpy()
    return img, shape, [cands[k] for k in keep], min_count


def unsharp(img: np.ndarray, sigma: float = 1.0, amount: float = 1.0) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    r = int(np.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
    b = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k, groups=3)
    b = F.conv2d(F.pad(b, (0, 0, r, r), mode="replicate"), k.transpose(-1, -2), groups=3)
    return (x + amount * (x - b)).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def identity_check(root: Path, rows: list[dict], donors: list[tuple[np.ndarray, np.ndarray, list[int]]]) -> None:
    """Print MobileFaceNet cosines: each donor against its own sources (none should match) and
    against the other donors (evaluation weights from .cache/data/weights; not shipped)."""
    from faceveil.eval.identity import IdentityModel, detect_landmarks

    model = IdentityModel()
    embs = []
    for k, (img, lm, keep) in enumerate(donors):
        d = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        e = model.embed(d, lm[None])
        srcs, slm = [], []
        for i in keep:
            x = load_rgb(root / rows[i]["file"]).float()
            rgb = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            lm_i = detect_landmarks(rgb)
            if lm_i is not None:
                srcs.append(x)
                slm.append(lm_i)
        cos = (model.embed(torch.cat(srcs), np.stack(slm)) @ e.T).squeeze(1)
        embs.append(e)
        print(f"donor {k:02d} vs its {len(srcs)} sources: max cosine {cos.max():.3f}, mean {cos.mean():.3f}")
    e = torch.cat(embs)
    off = (e @ e.T)[~torch.eye(len(e), dtype=torch.bool)]
    print(f"donor vs donor: max cosine {off.max():.3f}, mean {off.mean():.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "data", help="extracted data folder")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "faceveil" / "obfuscate" / "donors")
    ap.add_argument("--faces", type=int, default=48,
                    help=f"faces per donor (fewer, but at least {MIN_DONOR_FACES}, where a group has fewer)")
    ap.add_argument("--pool", type=int, default=72, help="candidates per donor before the median vote")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="print MobileFaceNet similarities (needs eval weights)")
    args = ap.parse_args(argv)
    if args.faces < MIN_DONOR_FACES or args.pool < args.faces:
        ap.error(f"need --pool >= --faces >= {MIN_DONOR_FACES}")
    torch.set_num_threads(1)
    root = args.data
    meta = root / "utkface_128" / "meta.csv"
    if not meta.is_file():
        ap.error(f"{meta} not found: run `make data` first")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    lms = detect_all(root, rows)
    print(f"{len(lms)} usable adult faces of {len(rows)}")
    rng = random.Random(args.seed)
    used: set[int] = set()
    entries, built, files = [], [], {}
    for name, gender, race, lo, hi in GROUPS:
        g = "1" if gender == "f" else "0"
        cands = [i for i in sorted(lms) if i not in used and rows[i]["gender_0m_1f"] == g
                 and rows[i]["race_0W_1B_2A_3I_4O"] == RACES[race] and lo <= int(rows[i]["age"]) <= hi]
        rng.shuffle(cands)
        cands = sorted(cands[:args.pool])
        if len(cands) < MIN_DONOR_FACES:
            raise SystemExit(f"group {name}: only {len(cands)} faces, need {MIN_DONOR_FACES}")
        img, shape, keep, min_count = build_donor(root, rows, cands, lms, args.faces)
        if min_count < MIN_DONOR_FACES:
            raise SystemExit(f"group {name}: only {min_count} faces cover some pixel of the mask")
        used.update(cands)  # the next groups draw from other faces
        img = unsharp(img)
        k = len(entries)
        data = png_bytes(img)
        file = f"donor-{k:02d}.png"
        files[file] = data
        entries.append({
            "index": k, "file": file, "sha256": hashlib.sha256(data).hexdigest(), "name": name,
            "landmarks": [[round(float(v), 3) for v in p] for p in shape],
            "faces": len(keep), "weight_per_face": round(1 / len(keep), 6), "min_faces_per_pixel": min_count,
            "group": {"gender": gender, "utkface_race": race, "age": [lo, hi]},
            "sources": hashlib.sha256(",".join(rows[i]["file"] for i in keep).encode()).hexdigest(),
        })
        built.append((img, shape, keep))
        print(f"{file} {name}: {len(keep)} faces (at least {min_count} at every mask pixel), {len(data)} bytes")
    manifest = {
        "format": DONOR_FORMAT, "format_version": DONOR_FORMAT_VERSION, "size": SIZE,
        "landmark_order": ["right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner"],
        "landmark_convention": "YuNet's five points, pixels, pixel centres at integers",
        "made_by": "tools/make_donors.py", "seed": args.seed, "pool": args.pool,
        "recipe": "per demographic group: the faces closest to the group's per-pixel median (of those whose picture "
                  "covers the swap mask), each thin-plate-warped onto the group's mean five-point shape and densely "
                  "aligned to the others (congealing), averaged with equal weights; unsharp mask sigma 1 px, amount 1",
        "dataset": DATASET,
        "sources_note": "'sources' is the sha256 of the comma-joined source file names (utkface_128/NNNNN.jpg); "
                        "rerun the tool to list them",
        "donors": entries,
    }
    # replace the old set only now that the new one is complete
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("donor-*.png"):
        old.unlink()
    for file, data in files.items():
        (args.out / file).write_bytes(data)
    (args.out / DONOR_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{len(entries)} donors, {total / 1024:.0f} KiB in {args.out}")
    if args.check:
        identity_check(root, rows, built)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
