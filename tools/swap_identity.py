"""How much identity the ``swap`` veil leaves, for a choice of its parameters: MobileFaceNet
cosine between each LFW dev crop and its swapped version, and the share at or above the FMR 0.1 %
threshold of genuine LFW pairs (the number behind ``swap.DEFAULT_EXTENT``).

    python tools/swap_identity.py                       # the defaults, 200 crops
    python tools/swap_identity.py --extent 1.0 --extent 1.2 --extent 1.4 -n 200

Needs ``make data`` (the LFW dev crops and the evaluation-only MobileFaceNet weights). The donor of
each face is drawn from a generator seeded with ``--seed``, the crops are the seeded sample of
``faceveil eval`` (``list_faces(..., n, 0)``), landmarks from YuNet on each crop (faces it misses are
left out), and MobileFaceNet aligns both images with the original's landmarks.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from faceveil.eval import identity as I  # noqa: E402
from faceveil.eval.harness import list_faces  # noqa: E402
from faceveil.obfuscate import apply_veil, get_veil  # noqa: E402
from faceveil.obfuscate import swap as S  # noqa: E402
from faceveil.pipeline import to_tensor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", default=str(ROOT / ".cache" / "data" / "lfw_dev_128"))
    ap.add_argument("-n", type=int, default=200, help="how many crops (seeded sample)")
    ap.add_argument("--extent", type=float, action="append", help="swap extent(s); default: the veil's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from PIL import Image

    model = I.IdentityModel()
    threshold = I.calibrate(model, Path(args.faces) / "pairs_seed0.csv")["threshold"]
    crops, lms = [], []
    for p in list_faces(args.faces, args.n, 0):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        lm = I.detect_landmarks(rgb)
        if lm is not None:
            crops.append(to_tensor(rgb))
            lms.append(lm)
    x = torch.cat(crops)
    lm = np.stack(lms)
    e_orig = model.embed(x, lm)
    for extent in args.extent or [S.DEFAULT_EXTENT]:
        rng = random.Random(args.seed)
        ys = [apply_veil(x[i:i + 1], "swap", {**get_veil("swap").identity(rng),
                                             **S.placement(lm[i], x.shape[-1], x.shape[-2]),
                                             "extent": extent})[0] for i in range(len(x))]
        cos = I.cosine(e_orig, model.embed(torch.cat(ys), lm))
        print(f"extent {extent:.2f}: {len(x)} faces, mean cosine {float(cos.mean()):.3f}, "
              f"max {float(cos.max()):.3f}, matched {100 * float((cos >= threshold).float().mean()):.1f} % "
              f"(threshold {threshold:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
