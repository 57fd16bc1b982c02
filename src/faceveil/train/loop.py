"""The training loop: resumable, seeded, logged; CPU (2 cores) or CUDA.

A run lives in ``<out_dir>/<name>/``: ``config.yaml`` (the resolved config), ``last.pt`` (model,
optimiser, step, random states — resume picks it up), ``metrics.jsonl`` (one JSON line per log and
validation), ``best.safetensors`` / ``last.safetensors`` (exportable weights with their config).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import torch

from ..errors import UsageError
from ..models.registry import ARCHITECTURES, build
from ..models.zoo import save_weights
from ..nn.inn import HidingNet
from .config import TrainConfig
from .data import VeiledSampler, fixed_validation_set, load_pools
from .losses import IMNLoss, ProFaceSLoss, decorr_reference, detail_corr2, quantize_ste

log = logging.getLogger(__name__)


def random_key_maps(n: int, h: int, w: int, generator: torch.Generator, device,
                    channels: int = 1) -> torch.Tensor:
    """Fresh ±1 secret maps (eq. (5)) for training — with ``channels`` 4, also the scramble signs
    of a scrambling network; the shipped key path is :mod:`faceveil.keys`."""
    bits = torch.randint(0, 2, (n, max(1, channels), h, w), generator=generator)
    return (bits.float() * 2 - 1).to(device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for [0, 1] images."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    t = min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))
    return o.lr_min + 0.5 * (o.lr - o.lr_min) * (1 + math.cos(math.pi * t))


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(cfg.device)


def _init_weights(net: HidingNet, path: str) -> None:
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)["model"]
    net.load_state_dict(state)


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.model not in ARCHITECTURES:
            raise UsageError(f"unknown model {cfg.model!r}; known: {', '.join(ARCHITECTURES)}")
        self.cfg = cfg
        self.dir = Path(cfg.out_dir) / cfg.name
        self.dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = _device(cfg)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.net = build(cfg.model).to(self.device)
        if cfg.init:
            _init_weights(self.net, cfg.init)
        self.keyed = self.net.config.keyed
        self.loss = ProFaceSLoss(cfg.loss) if self.keyed else IMNLoss(cfg.loss)
        o = cfg.optim
        self.opt = torch.optim.Adam(self.net.parameters(), lr=o.lr, betas=tuple(o.betas),
                                    weight_decay=o.weight_decay)
        self.pools = load_pools(cfg.data)
        self.sampler = VeiledSampler(self.pools, cfg.data, seed=cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.val = fixed_validation_set(self.pools, cfg.data)
        # Large faces (a big face in a photo is a smooth, upscaled-looking crop): the wrong-key
        # output can leak coarse structure there that the 112-px set does not show.
        self.val_large = (fixed_validation_set(self.pools, cfg.data, n=12, size=cfg.data.val_large, seed=4321)
                          if cfg.data.val_large > 0 else None)
        self.step = 0
        self.best = -math.inf
        self._resume()
        (self.dir / "config.yaml").write_text(cfg.to_yaml())

    # -- checkpoints ------------------------------------------------------------------------------
    def _resume(self) -> None:
        ck = self.dir / "last.pt"
        if not ck.exists():
            return
        state = torch.load(ck, map_location=self.device, weights_only=False)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        self.step = state["step"]
        self.best = state.get("best", -math.inf)
        self.sampler.set_state(state["sampler"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch"])
        log.info("resumed %s at step %d", self.dir, self.step)

    def save(self) -> None:
        state = {"model": self.net.state_dict(), "optim": self.opt.state_dict(), "step": self.step,
                 "best": self.best, "sampler": self.sampler.state(), "gen": self.gen.get_state(),
                 "torch": torch.get_rng_state(), "config": self.cfg.to_dict()}
        tmp = self.dir / "last.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.dir / "last.pt")
        self.export(self.dir / "last.safetensors")

    def export(self, path: Path) -> str:
        extra = {"wr_mode": self.cfg.loss.wr_mode, "train_step": str(self.step),
                 "train_config": self.cfg.to_dict()}
        return save_weights(self.net, path, name=self.cfg.name, extra=extra)

    def _log(self, rec: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # -- one step ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor, quantize: bool,
                wrong: bool = True) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        k = random_key_maps(n, h, w, self.gen, self.device, self.net.key_channels) if self.keyed else None
        y_hat, byproduct = self.net.protect(x, y, k)
        y_q = quantize_ste(y_hat) if quantize else y_hat
        if self.keyed:
            x_rec, _ = self.net.recover(y_q, k)
            x_wrong = None
            if wrong and self.cfg.loss.wr_mode != "none":
                kw = random_key_maps(n, h, w, self.gen, self.device, self.net.key_channels)
                x_wrong, _ = self.net.recover(y_q, kw)
            aux = self.net.auxiliary(y_q, self.net.secret_map(k, y_q))
        else:
            noise = torch.randn((n, 12, h // 2, w // 2), generator=self.gen).to(self.device)
            x_rec, _ = self.net.recover(y_q, aux=noise)
            x_wrong, aux = None, None
        out = dict(y_hat=y_hat, y_q=y_q, x_rec=x_rec, x_wrong=x_wrong, byproduct=byproduct, aux=aux)
        return out

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        self.net.train()
        x, y, _ = self.sampler.batch(cfg.optim.batch)
        x, y = x.to(self.device), y.to(self.device)
        every = max(1, cfg.loss.wr_every)
        out = self.forward(x, y, cfg.quantize, wrong=self.step % every == 0)
        terms = self.loss(x, y, out["y_q"], out["x_rec"], out["x_wrong"], out["byproduct"], out["aux"])
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, cfg)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
        if torch.isfinite(gn):
            self.opt.step()
        rec = {k: float(v.detach()) for k, v in terms.items()}
        rec["grad_norm"] = float(gn)
        with torch.no_grad():
            rec["psnr_protect"] = float(psnr(out["y_q"], y).mean())
            rec["psnr_recover"] = float(psnr(out["x_rec"].clamp(0, 1), x).mean())
            if out["x_wrong"] is not None:
                rec["psnr_wrong"] = float(psnr(out["x_wrong"].clamp(0, 1), x).mean())
        self.step += 1
        return rec

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.net.eval()
        x, y, _ = self.val
        x, y = x.to(self.device), y.to(self.device)
        scales = self.cfg.loss.decorr_scales
        res: dict[str, list[float]] = {}
        for i in range(0, x.shape[0], 16):
            xb, yb = x[i:i + 16], y[i:i + 16]
            out = self.forward(xb, yb, quantize=True)
            vals = {"val_protect": psnr(out["y_q"], yb), "val_recover": psnr(out["x_rec"].clamp(0, 1), xb)}
            if out["x_wrong"] is not None:
                vals["val_wrong_vs_x"] = psnr(out["x_wrong"].clamp(0, 1), xb)
                vals["val_wrong_vs_y"] = psnr(out["x_wrong"].clamp(0, 1), yb)
                vals.update(self._leak("val_", out["x_wrong"], xb, yb, scales))
            for k, v in vals.items():
                res.setdefault(k, []).extend(v.tolist())
        if self.val_large is not None and self.cfg.loss.wr_mode != "none":
            x, y, _ = self.val_large
            for i in range(0, x.shape[0], 4):
                xb, yb = x[i:i + 4].to(self.device), y[i:i + 4].to(self.device)
                out = self.forward(xb, yb, quantize=True)
                for k, v in self._leak("val_large_", out["x_wrong"], xb, yb, scales + 1).items():
                    res.setdefault(k, []).extend(v.tolist())
        return {k: sum(v) / len(v) for k, v in res.items()}

    def _leak(self, prefix: str, x_wrong: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              scales: int) -> dict[str, torch.Tensor]:
        """Structure the wrong-key output, and for comparison the veil, share with the
        decorrelation reference (x or x − y), per image."""
        ref = decorr_reference(x, y, self.cfg.loss.decorr_target)
        return {f"{prefix}wrong_detail": detail_corr2(x_wrong.clamp(0, 1), ref, scales),
                f"{prefix}veil_detail": detail_corr2(y, ref, scales)}

    def score(self, v: dict[str, float]) -> float:
        """Model selection: the weaker of recovery and protection (+4 dB, the bar's gap), with a
        penalty when the wrong-key output stops being wrong: by PSNR (RandWR: > 15 dB from x;
        ObfsWR: < 25 dB from the veil) and, when training penalises it, by structure shared with the
        decorrelation reference beyond what the veil itself shares (10 dB per 0.1 of
        :func:`detail_corr2`), on the 112-px set and on the large-face set."""
        s = min(v["val_recover"], v["val_protect"] + 4.0)
        if "val_wrong_vs_x" in v and self.cfg.loss.wr_mode == "randwr":
            s -= max(0.0, v["val_wrong_vs_x"] - 15.0)
        if "val_wrong_vs_y" in v and self.cfg.loss.wr_mode == "obfswr":
            s -= max(0.0, 25.0 - v["val_wrong_vs_y"])
        if self.cfg.loss.lambda_decorr > 0:
            for p in ("val_", "val_large_"):
                if f"{p}wrong_detail" in v:
                    s -= 100.0 * max(0.0, v[f"{p}wrong_detail"] - v[f"{p}veil_detail"])
        return s

    def run(self, max_steps: int | None = None, max_seconds: float | None = None,
            progress=None) -> None:
        cfg = self.cfg
        end = cfg.optim.steps if max_steps is None else min(cfg.optim.steps, self.step + max_steps)
        t0 = time.time()
        acc: dict[str, float] = {}
        cnt: dict[str, int] = {}
        n = 0
        last = time.time()
        while self.step < end:
            rec = self.train_step()
            for k, v in rec.items():
                acc[k] = acc.get(k, 0.0) + v
                cnt[k] = cnt.get(k, 0) + 1
            n += 1
            if self.step % cfg.log_every == 0 or self.step == end:
                now = time.time()
                avg = {k: v / cnt[k] for k, v in acc.items()}
                avg.update(step=self.step, lr=lr_at(self.step - 1, cfg), sec_per_step=(now - last) / n)
                self._log(avg)
                log.info("step %d loss %.4f protect %.2f dB recover %.2f dB wrong %.2f dB (%.2f s/step)",
                         self.step, avg["loss"], avg["psnr_protect"], avg["psnr_recover"],
                         avg.get("psnr_wrong", float("nan")), avg["sec_per_step"])
                if progress:
                    progress(self.step, end, avg)
                acc, cnt, n, last = {}, {}, 0, now
            if self.step % cfg.val_every == 0 or self.step == end:
                v = self.validate()
                v["step"] = self.step
                v["score"] = self.score(v)
                self._log(v)
                log.info("validation at %d: %s", self.step, {k: round(x, 2) for k, x in v.items()})
                if v["score"] > self.best:
                    self.best = v["score"]
                    self.export(self.dir / "best.safetensors")
            if self.step % cfg.ckpt_every == 0 or self.step == end:
                self.save()
            if max_seconds is not None and time.time() - t0 > max_seconds:
                self.save()
                break


def train(cfg: TrainConfig, **kw) -> Trainer:
    t = Trainer(cfg)
    t.run(**kw)
    return t
