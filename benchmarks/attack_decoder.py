"""Attack: an adversary with the public weights but no password trains a decoder to recover faces.

    python benchmarks/attack_decoder.py [--model NAME] [--seconds 420] [--eval 100] [--no-write]

The network is public; only the key is secret. The strongest cheap attack is therefore learned: make
(protected, original) pairs with the public weights and random keys (as many as you like), and train
a CNN to map a protected face — together with what the public network recovers from it under a
random key — back to the original. The question is whether that beats the same CNN trained on the
veil alone (a learned de-blurring / de-pixelation attack, which no hiding scheme can prevent): if the
protected image lets the decoder get closer to the original than the veil does, the hidden payload
leaks without the key.

Both decoders get the same architecture (8 conv layers, 64 channels, residual output), data
(``.cache/data`` training faces, 64-px patches of 64-144 px crops, random veil and strength), steps
budget (``--seconds`` each, on this machine) and optimiser. They are scored on held-out LFW crops at
112 px (protected faces rounded to 8 bits, every veil at its test setting) by PSNR / SSIM against the
original. Results go to the ``attack_decoder`` section of ``docs/RESULTS.md`` and
``docs/results/attack_decoder.json`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from faceveil.eval.harness import list_faces, load_face, machine_info, quantize, to_tensor  # noqa: E402
from faceveil.eval.metrics import psnr, ssim  # noqa: E402
from faceveil.eval.report import RESULTS_MD, update_section  # noqa: E402
from faceveil.models.zoo import load_model  # noqa: E402
from faceveil.obfuscate import apply_veil  # noqa: E402
from faceveil.train.config import DataConfig  # noqa: E402
from faceveil.train.data import VeiledSampler, load_pools  # noqa: E402
from faceveil.train.loop import random_key_maps  # noqa: E402

SECTION = "attack_decoder"
LFW = ROOT / ".cache" / "data" / "lfw_dev_128"


class Decoder(nn.Module):
    def __init__(self, cin: int, width: int = 64, depth: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return (t[:, :3] + self.body(t)).clamp(0, 1)


def attacker_input(kind: str, net, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What the attacker sees: the veil alone, or the protected face (8-bit) plus the public
    network's recovery of it under a random key."""
    if kind == "veil":
        return y
    n, _, h, w = x.shape
    with torch.no_grad():
        y_hat, _ = net.protect(x, y, random_key_maps(n, h, w, gen, "cpu", net.key_channels))
        y_q = quantize(y_hat)
        guess, _ = net.recover(y_q, random_key_maps(n, h, w, gen, "cpu", net.key_channels))
    return torch.cat([y_q, guess.clamp(0, 1)], 1)


def train(kind: str, net, sampler: VeiledSampler, seconds: float, seed: int) -> tuple[Decoder, int]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dec = Decoder(3 if kind == "veil" else 6)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    t0, steps = time.time(), 0
    while time.time() - t0 < seconds:
        x, y, _ = sampler.batch(16)
        inp = attacker_input(kind, net, x, y, gen)
        loss = (dec(inp) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return dec.eval(), steps


def evaluate(kind: str, dec: Decoder, net, faces: list[torch.Tensor], seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed + 1)
    out: dict[str, dict] = {}
    for veil in ("blur", "pixelate", "median"):
        ps, ss, base = [], [], []
        for i in range(0, len(faces), 16):
            x = torch.stack(faces[i:i + 16])
            y, _ = apply_veil(x, veil)
            y = quantize(y)
            with torch.no_grad():
                guess = dec(attacker_input(kind, net, x, y, gen))
            ps += psnr(guess, x).tolist()
            ss += ssim(guess, x).tolist()
            base += psnr(y, x).tolist()
        out[veil] = {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "veil_psnr": sum(base) / len(base)}
    out["avg"] = {k: sum(out[v][k] for v in ("blur", "pixelate", "median")) / 3 for k in ("psnr", "ssim", "veil_psnr")}
    return out


def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [f"`{m['command']}` — model {m['model']} `{m['model_sha256'][:16]}…`, {m['n_faces']} LFW faces "
             f"(112 px), {m['seconds']:.0f} s of training per decoder on {m['machine']['cpu']} "
             f"({m['machine']['cpu_count']} cores), {m['date']}. PSNR / SSIM of the decoder's output against "
             "the original; higher means more of the face was recovered without the password.\n",
             "| attacker sees | steps | blur | pixelate | median | Avg. PSNR | Avg. SSIM |",
             "|---|---|---|---|---|---|---|"]
    for kind, label in (("veil", "the veil only (learned de-veiling)"),
                        ("protected", "the protected face + public network's random-key recovery")):
        r = res[kind]
        lines.append(f"| {label} | {r['steps']} | " + " | ".join(f"{r['scores'][v]['psnr']:.2f}"
                                                                  for v in ("blur", "pixelate", "median"))
                     + f" | {r['scores']['avg']['psnr']:.2f} | {r['scores']['avg']['ssim']:.4f} |")
    lines.append(f"| (the veil itself, no decoder) | | | | | {res['veil']['scores']['avg']['veil_psnr']:.2f} | |")
    gap = res["protected"]["scores"]["avg"]["psnr"] - res["veil"]["scores"]["avg"]["psnr"]
    lines.append(f"\nThe protected face gives the decoder {gap:+.2f} dB over the veil alone.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model name or .safetensors (default: the shipped default)")
    ap.add_argument("--seconds", type=float, default=420, help="training time per decoder")
    ap.add_argument("--eval", type=int, default=100, help="held-out LFW faces to score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    a = ap.parse_args(argv)
    if not LFW.is_dir():
        print(f"attack_decoder: no {LFW.relative_to(ROOT)}: run `make data` first", file=sys.stderr)
        return 1
    lm = load_model(a.model)
    net = lm.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    faces = [to_tensor(load_face(p, 112)[0]) for p in list_faces(LFW, a.eval, seed=a.seed)]
    sampler_cfg = DataConfig()
    pools = load_pools(sampler_cfg)
    res: dict = {}
    for kind in ("veil", "protected"):
        dec, steps = train(kind, net, VeiledSampler(pools, sampler_cfg, seed=a.seed), a.seconds, a.seed)
        res[kind] = {"steps": steps, "scores": evaluate(kind, dec, net, faces, a.seed)}
        print(f"{kind}: {steps} steps, PSNR {res[kind]['scores']['avg']['psnr']:.2f} dB", file=sys.stderr)
    cmd = "python benchmarks/attack_decoder.py" + ("" if a.model is None else f" --model {a.model}")
    cmd += f" --seconds {a.seconds:g} --eval {a.eval}"
    res["meta"] = {"command": cmd, "model": lm.name, "model_sha256": lm.sha256, "n_faces": len(faces),
                   "seconds": a.seconds, "seed": a.seed, "machine": machine_info(),
                   "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    md = markdown(res)
    print(md)
    if not a.no_write:
        out = ROOT / "docs" / "results" / "attack_decoder.json"
        out.write_text(json.dumps(res, indent=1) + "\n")
        update_section(ROOT / RESULTS_MD, SECTION, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
