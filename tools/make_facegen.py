"""Build faceveil's face generator (``src/faceveil/obfuscate/models/``): the linear latent model and
the enhancer of :mod:`faceveil.obfuscate.facegen`, from the UTKFace training faces.

    python tools/make_facegen.py                       # .cache/data (make data); ~25 min on 2 cores
    python tools/make_facegen.py --steps 3000          # a longer enhancer run (resumes its checkpoint)

1. Faces: every UTKFace crop aged 16+ on which YuNet finds a confident, near-frontal, upright face
   (``make_donors.detect_all``'s filter, widened: |yaw| ≤ 0.2 inter-ocular distances, roll ≤ 15°).
   Each is thin-plate-warped onto the donors' five-point template on a 128-px canvas (the picture's
   edge repeated beyond it); faces whose picture does not cover the region at extent 1 are
   dropped; a seeded 300 are held out.
2. Latent model: the canvas reduced to 64 px, the region (the ``synthetic`` veil's mask of the
   template at extent 1.25, the rest zero-weighted), PCA by SVD: ``--dims`` (96) components, their
   σ, the mean face.
3. Enhancer: trained to map ``upsample(decode(project(face)))`` — what the generator makes — to the
   face itself, on random flips and ±8 % brightness, L1 + multi-scale gradient L1 weighted by the
   region, plus ``--adv`` (0.02) times a PatchGAN critic's hinge score (pix2pix; spectral norm) so
   the added detail looks like skin rather than its average, on random 64-px windows, Adam
   5e-4 → 5e-5 (cosine, β₁ 0.5), batch 16, ``--steps`` (1500); resumable from
   ``runs/facegen/enhancer.pt``. Reports held-out PSNR in the region before and after.

Writes ``facegen-v1.safetensors`` and ``facegen.json`` (sha256, dims, steps, held-out numbers,
dataset and licence). UTKFace is for non-commercial research only; like the shipped weights the
generator is derived from it and carries that restriction.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))

from faceveil.obfuscate import facegen as G  # noqa: E402
from faceveil.obfuscate.swap import _pixel_grid, fit_map  # noqa: E402
from faceveil.obfuscate.synthetic import REGION_EXTENT, region_mask  # noqa: E402
from faceveil.train.losses import msgrad_distance  # noqa: E402
from make_donors import DATASET, TEMPLATE, detect_all, load_rgb  # noqa: E402


def aligned_faces(root: Path, rows: list[dict], lms: dict[int, np.ndarray], region: torch.Tensor) -> torch.Tensor:
    """Every face warped onto the template (``N×3×128×128`` float32); faces not covering the region dropped."""
    size = G.CANVAS
    out = []
    grid = _pixel_grid(size, size)
    for i in sorted(lms):
        img = load_rgb(root / rows[i]["file"])
        src = torch.cat([img, torch.ones_like(img[:, :1])], 1)
        q = fit_map(TEMPLATE, lms[i])(grid)
        h, w = img.shape[-2:]
        g = torch.stack([(2 * q[:, 0] + 1) / w - 1, (2 * q[:, 1] + 1) / h - 1], 1).reshape(1, size, size, 2)
        a = F.grid_sample(src, g, align_corners=False, padding_mode="border")
        cov = F.grid_sample(src[:, 3:4], g, align_corners=False)
        if bool((cov > 0.999)[region > 0.5].all()):
            out.append(a[:, :3].float())
    return torch.cat(out)


def patch_critic() -> torch.nn.Module:
    """A PatchGAN critic (pix2pix): one realness score per 8×8 patch (stride 8 overall)."""
    n = torch.nn
    sn = n.utils.parametrizations.spectral_norm
    return n.Sequential(sn(n.Conv2d(3, 32, 4, 2, 1)), n.LeakyReLU(0.2), sn(n.Conv2d(32, 64, 4, 2, 1)), n.LeakyReLU(0.2),
                        sn(n.Conv2d(64, 96, 4, 2, 1)), n.LeakyReLU(0.2), sn(n.Conv2d(96, 1, 3, 1, 1)))


def wc8(w: torch.Tensor) -> torch.Tensor:
    """The region weights at the critic's resolution."""
    return F.avg_pool2d(w, 8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "faceveil" / "obfuscate" / G.MODEL_DIR)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "facegen")
    ap.add_argument("--dims", type=int, default=96)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64, help="training window side (a multiple of 8)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--adv", type=float, default=0.02, help="weight of the patch critic's term (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    faces_pt = args.work / "aligned.pt"
    region128 = region_mask(G.CANVAS, G.CANVAS, TEMPLATE, REGION_EXTENT, 0.25).float()
    core = region_mask(G.CANVAS, G.CANVAS, TEMPLATE, 1.0, 0.25).float()  # must lie inside the picture
    if faces_pt.exists():
        faces = torch.load(faces_pt, weights_only=True)
    else:
        with open(args.data / "utkface_128" / "meta.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        lms = detect_all(args.data, rows, min_age=16, min_score=0.8, max_yaw=0.2, max_roll=15.0, iod=(30.0, 85.0))
        faces = aligned_faces(args.data, rows, lms, core)
        torch.save(faces, faces_pt)
    n = faces.shape[0]
    order = list(range(n))
    random.Random(args.seed).shuffle(order)
    held, train_idx = sorted(order[:300]), sorted(order[300:])
    print(f"{n} aligned faces ({len(train_idx)} train, {len(held)} held out), {time.time() - t0:.0f} s")

    # -- the linear latent model ----------------------------------------------------------------
    region = F.interpolate(region128, size=(G.LATENT_SIDE, G.LATENT_SIDE), mode="area")
    small = F.interpolate(faces, size=(G.LATENT_SIDE, G.LATENT_SIDE), mode="area")
    tr = small[train_idx]
    mean = tr.mean(0, keepdim=True)
    d = ((tr - mean) * region).reshape(len(train_idx), -1).double()
    _, s, vt = torch.linalg.svd(d, full_matrices=False)
    k = args.dims
    basis = vt[:k].reshape(k, 3, G.LATENT_SIDE, G.LATENT_SIDE).float()
    sigma = (s[:k] / math.sqrt(len(train_idx) - 1)).float()
    explained = float((s[:k] ** 2).sum() / (s ** 2).sum())
    print(f"PCA: {k} components explain {100 * explained:.1f} % of the region's variance")
    tensors = {"mean": mean.contiguous(), "basis": basis.contiguous(), "sigma": sigma.contiguous(),
               "region": region.contiguous(), "template": torch.tensor(TEMPLATE, dtype=torch.float64)}
    meta = {"enhancer_width": args.width}

    def lowres(batch: torch.Tensor, model: G.FaceModel) -> torch.Tensor:
        z = model.project(F.interpolate(batch, size=(G.LATENT_SIDE, G.LATENT_SIDE), mode="area"))
        return F.interpolate(model.decode(z).clamp(0, 1), size=(G.CANVAS, G.CANVAS), mode="bilinear",
                             align_corners=False)

    enh = G.Enhancer(args.width)
    model = G.FaceModel({**tensors, **{f"enhancer.{k}": v for k, v in enh.state_dict().items()}}, meta)
    enh = G.Enhancer(args.width).train()
    opt = torch.optim.Adam(enh.parameters(), lr=5e-4, betas=(0.5, 0.999))
    disc = patch_critic()
    dopt = torch.optim.Adam(disc.parameters(), lr=5e-4, betas=(0.5, 0.999))
    ck = args.work / "enhancer.pt"
    step = 0
    if ck.exists():
        st = torch.load(ck, weights_only=False)
        enh.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        disc.load_state_dict(st["critic"])
        dopt.load_state_dict(st["critic_optim"])
        step = st["step"]
        print(f"resumed the enhancer at step {step}")
    w = region128

    def psnr_region(a: torch.Tensor, b: torch.Tensor) -> float:
        mse = (((a - b) ** 2) * w).sum((1, 2, 3)) / (3 * w.sum())
        return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())

    hv = faces[held]
    with torch.no_grad():
        hv_low = lowres(hv, model)
    before = psnr_region(hv_low, hv)
    gen = torch.Generator().manual_seed(args.seed + 1)
    while step < args.steps:
        idx = torch.randint(0, len(train_idx), (args.batch,), generator=gen)
        x = faces[[train_idx[int(i)] for i in idx]]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = (x * (1 + 0.16 * (torch.rand(args.batch, 1, 1, 1, generator=gen) - 0.5))).clamp(0, 1)
        with torch.no_grad():
            low = lowres(x, model)
        lr = 5e-5 + 0.5 * (5e-4 - 5e-5) * (1 + math.cos(math.pi * step / args.steps))
        for g_ in opt.param_groups:
            g_["lr"] = lr
        # a random 64-px window (the U-Net is fully convolutional): a quarter of the cost
        oy, ox = (8 * int(v) for v in torch.randint(0, (G.CANVAS - args.patch) // 8 + 1, (2,), generator=gen))
        win = (..., slice(oy, oy + args.patch), slice(ox, ox + args.patch))
        wc = w[win]
        if float(wc.mean()) < 0.05:
            continue
        out = enh(low[win])
        loss = ((out - x[win]).abs() * wc).mean() / wc.mean() + msgrad_distance(out * wc, x[win] * wc).mean()
        if args.adv > 0:  # pix2pix: a patch critic makes the detail look real, not just average
            for g_ in dopt.param_groups:
                g_["lr"] = lr
            d_loss = (F.relu(1 - disc(x[win])) * wc8(wc)).mean() + (F.relu(1 + disc(out.detach())) * wc8(wc)).mean()
            dopt.zero_grad()
            d_loss.backward()
            dopt.step()
            loss = loss - args.adv * (disc(out) * wc8(wc)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0 or step == args.steps:
            torch.save({"model": enh.state_dict(), "optim": opt.state_dict(), "critic": disc.state_dict(),
                        "critic_optim": dopt.state_dict(), "step": step}, ck)
            with torch.no_grad():
                after = psnr_region(enh.eval()(hv_low), hv)
            enh.train()
            print(f"step {step} loss {float(loss.detach()):.4f} held-out region PSNR {before:.2f} -> {after:.2f} dB "
                  f"({time.time() - t0:.0f} s)", flush=True)
    with torch.no_grad():
        after = psnr_region(enh.eval()(hv_low), hv)
    from safetensors.torch import save

    for k_, v in enh.state_dict().items():
        tensors[f"enhancer.{k_}"] = v.contiguous()
    data = save(tensors)
    file = "facegen-v1.safetensors"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / file).write_bytes(data)
    manifest = {
        "format": G.FORMAT, "format_version": G.FORMAT_VERSION, "file": file,
        "sha256": hashlib.sha256(data).hexdigest(), "made_by": "tools/make_facegen.py",
        "dims": k, "explained_variance": round(explained, 4), "enhancer_width": args.width,
        "enhancer_steps": step, "faces": {"train": len(train_idx), "held_out": len(held)},
        "held_out_region_psnr": {"decoder": round(before, 2), "enhanced": round(after, 2)},
        "template": TEMPLATE.tolist(), "region_extent": REGION_EXTENT, "seed": args.seed,
        "dataset": {**DATASET, "license": DATASET["license"].replace("The donors are averages", "The generator is")},
    }
    (args.out / G.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"{file}: {len(data) / 1e6:.1f} MB, held-out region PSNR {before:.2f} -> {after:.2f} dB, "
          f"{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
