"""How much a scrambling network has to hide: the RMS (of 255) of the payload it carries, per veil,
on LFW dev crops at 112 px — the whole face centred on 0.5 (file format 2, ``x − 0.5``) against the
residual the veil removed (format 3, ``x − y``). The keyed scramble is orthonormal, so it keeps
these energies; the network embeds the payload as a perturbation of the veil that must survive
8-bit rounding, so the smaller the payload, the more exactly it comes back (``nn/inn.py``).

    python tools/payload_energy.py            # 64 crops (make data)
    python tools/payload_energy.py -n 200
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from faceveil.eval.harness import list_faces  # noqa: E402
from faceveil.obfuscate import VEILS, apply_veil, get_veil  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", default=str(ROOT / ".cache" / "data" / "lfw_dev_128"))
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--size", type=int, default=112)
    args = ap.parse_args(argv)
    from PIL import Image

    x = torch.cat([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
                   for p in list_faces(args.faces, args.n, 0)])
    x = F.interpolate(x, size=args.size, mode="area")
    rms = lambda t: float(t.pow(2).mean().sqrt()) * 255  # noqa: E731
    print(f"{len(x)} crops at {args.size} px; payload RMS of 255")
    print(f"  whole face (format 2, x - 0.5): {rms(x - 0.5):.1f}")
    rng = random.Random(0)
    for name in sorted(VEILS):
        veil = get_veil(name)
        ys = [apply_veil(x[i:i + 1], name, veil.identity(rng) if veil.identity else None)[0] for i in range(len(x))]
        print(f"  residual, {name:9s} (format 3, x - y): {rms(x - torch.cat(ys)):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
