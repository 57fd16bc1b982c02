"""What every attack shares: the run's context, the held-out faces, the identity judge, statistics.

The judge answers "does this image still show the person?" the way ``faceveil eval`` does
(:mod:`faceveil.eval.identity`): MobileFaceNet on the face aligned with the *original's* landmarks
(oracle alignment, so every match rate is an upper bound on leakage), cosine against the original,
a match when the cosine reaches the threshold at which 0.1 % of different-person LFW pairs match
(the harness's calibration, reused). On top of that it asks a second, threshold-free question:
**rank-1 identification** — among a gallery of *other* photos of ``G`` people (the person's own
entry is a different photo of them, so background and pixels do not help), is the nearest one the
right person? Chance is ``1/G``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import UsageError
from ..eval import metrics as M
from ..eval.harness import IMAGE_SUFFIXES, PSNR_CAP, machine_info
from ..keys import DEFAULT_KDF
from ..models.zoo import LoadedModel
from .. import pipeline

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]  # the repository root (an editable install)
DEFAULT_FACES = Path(".cache/data/lfw_dev_128")
#: The "right" password of the attack runs. Public on purpose: the attacks never use it as the
#: attacker's knowledge, only to make the protected faces the attacker is given.
ATTACK_PASSWORD = "Tr0ub4dor&3✓"
#: A cheap scrypt for --quick runs and tests (the full run always uses the shipped DEFAULT_KDF).
QUICK_KDF = {"name": "scrypt", "n": 2 ** 10, "r": 8, "p": 1}
ALPHA = 0.01  # significance level of "better than chance"


# -- the run ------------------------------------------------------------------------------------

@dataclass
class Probe:
    """One held-out face: ``rgb`` at ``size``×``size``; ``other``: another photo of the same
    person (the gallery entry), or None when the folder has only this one."""

    path: Path
    person: str
    rgb: np.ndarray
    native: tuple[int, int]
    other: Path | None = None


@dataclass
class Context:
    """Everything an attack needs; built once by :mod:`.suite`."""

    faces_dir: Path
    model: LoadedModel
    quick: bool = False
    limit: int | None = None
    seed: int = 0
    size: int = 112
    kdf: dict = field(default_factory=lambda: dict(DEFAULT_KDF))
    identity: bool = True
    keyless_seconds: float = 60.0
    password: str = ATTACK_PASSWORD
    command: str = "faceveil attack"
    say: Callable[[str], None] = lambda s: None
    _probes: list[Probe] | None = None
    _judge: object = None  # Judge | None | False (False: unavailable)

    def n(self, full: int, quick: int) -> int:
        """A size of this run: ``full`` or ``quick``, capped by ``--limit``."""
        v = quick if self.quick else full
        return max(1, min(v, self.limit)) if self.limit else v

    def probes(self, n: int) -> list[Probe]:
        """The first ``n`` held-out faces (the same ones for every attack: a seeded sample)."""
        if self._judge:
            n = min(n, len(self._judge.probes))  # the judge knows these; a folder may hold fewer
        if self._probes is None or len(self._probes) < n:
            self._probes = load_probes(self.faces_dir, n, self.seed, self.size)
        if len(self._probes) < n:
            log.warning("only %d faces in %s (asked for %d)", len(self._probes), self.faces_dir, n)
        return self._probes[:n]

    def judge(self) -> "Judge | None":
        """The identity judge over the probes loaded so far, or None (``--no-identity``, or the
        MobileFaceNet weights / LFW pairs are missing: then the identity columns are left out)."""
        if not self.identity:
            return None
        if self._judge is None:
            try:
                # over as many probes as any attack uses (whatever --limit says), so indices agree
                n = MAX_PROBES_QUICK if self.quick else MAX_PROBES_FULL
                self._judge = Judge(self.probes(n), self.faces_dir, self.size, gallery=20 if self.quick else 200,
                                    seed=self.seed)
            except Exception as e:  # weights missing, no pairs file, unreadable data: say so, go on
                log.warning("identity judge unavailable (identity columns omitted): %s", e)
                self._judge = False
        return self._judge or None

    def meta(self, data: str, t0: float, **extra) -> dict:
        """The facts every result carries: command, data, machine, date, duration."""
        m = machine_info()
        try:
            m["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
        return {"command": self.command, "data": data, "machine": m, "quick": self.quick,
                "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "seconds": round(time.time() - t0, 1), "seed": self.seed,
                "model": {"name": self.model.name, "sha256": self.model.sha256}, **extra}


#: The most held-out faces any attack uses (the judge's probes are this many).
MAX_PROBES_FULL = 200
MAX_PROBES_QUICK = 8


def load_probes(faces_dir: str | Path, n: int, seed: int, size: int) -> list[Probe]:
    """``n`` held-out faces, a seeded sample. In a folder of per-person sub-folders (LFW), people
    with two or more photos come first: the first photo is the probe, the second its gallery entry.
    A flat folder gives probes without other photos."""
    from ..eval.harness import list_faces

    root = Path(faces_dir)
    files = list_faces(root)
    by_person: dict[str, list[Path]] = {}
    for p in files:
        person = str(p.parent.relative_to(root)) if p.parent != root else p.stem
        by_person.setdefault(person, []).append(p)
    people = sorted(by_person)
    rng = random.Random(seed)
    multi = [q for q in people if len(by_person[q]) >= 2]
    single = [q for q in people if len(by_person[q]) < 2]
    rng.shuffle(multi)
    rng.shuffle(single)
    out = []
    for person in (multi + single)[:n]:
        ps = by_person[person]
        rgb, native = load_square(ps[0], size)
        out.append(Probe(ps[0], person, rgb, native, ps[1] if len(ps) > 1 else None))
    return out


def load_square(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 ``size``×``size`` (bicubic, as the eval harness loads faces) and the native (h, w)."""
    from ..eval.harness import load_face

    return load_face(path, size)


# -- images and metrics -------------------------------------------------------------------------

def t(a: np.ndarray) -> Tensor:
    """uint8 H×W×3 -> float 1×3×H×W in [0, 1]."""
    return pipeline.to_tensor(a)


def u8(x: Tensor) -> np.ndarray:
    """float 1×3×H×W -> uint8 H×W×3 (the 8-bit step)."""
    return pipeline.to_uint8(x.detach())


def quality(a: Tensor, b: Tensor) -> dict[str, list[float]]:
    """Per-image PSNR (capped at 100 dB) and SSIM of two ``B×3×H×W`` batches."""
    p = M.psnr(a, b).clamp(max=PSNR_CAP).tolist()
    s = M.ssim(a, b).tolist() if min(a.shape[-2:]) >= M.SSIM_WINDOW else [float("nan")] * a.shape[0]
    return {"psnr": p, "ssim": s}


def mean(vals: Sequence[float]) -> float | None:
    v = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return round(float(np.mean(v)), 4) if v else None


def quality_summary(q: dict[str, list[float]]) -> dict:
    return {"psnr": mean(q["psnr"]), "ssim": mean(q["ssim"]), "n": len(q["psnr"])}


def merge_lists(dst: dict[str, list], src: dict[str, list]) -> dict[str, list]:
    for k, v in src.items():
        dst.setdefault(k, []).extend(v)
    return dst


def map_correlation(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Pearson correlation of two secret maps (±1 or real), flattened."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size}")
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den else 0.0


# -- statistics ---------------------------------------------------------------------------------

def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k + 1)]
    mx = max(terms)
    return min(1.0, math.exp(mx) * sum(math.exp(x - mx) for x in terms))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k): the one-sided p-value of seeing ``k`` or more successes by chance."""
    return 1.0 if k <= 0 else max(0.0, 1.0 - binom_cdf(k - 1, n, p))


def upper95(k: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound on a rate with ``k`` successes in ``n``."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > 0.05:
            lo = mid
        else:
            hi = mid
    return hi


def above_chance(k: int, n: int, p0: float, alpha: float = ALPHA) -> bool:
    """Whether ``k`` of ``n`` is significantly more than a chance rate ``p0`` (one-sided, ``alpha``)."""
    return n > 0 and binom_sf(k, n, max(p0, 1e-12)) < alpha


def more_than(k1: int, n1: int, k0: int, n0: int, alpha: float = ALPHA) -> bool:
    """Whether rate ``k1/n1`` is significantly above rate ``k0/n0`` (one-sided two-proportion
    z-test with a pooled rate; with no successes in either it is not)."""
    if n1 <= 0 or n0 <= 0 or k1 / n1 <= k0 / n0:
        return False
    p = (k1 + k0) / (n1 + n0)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n0))
    if se == 0:
        return False
    z = (k1 / n1 - k0 / n0) / se
    return 0.5 * math.erfc(z / math.sqrt(2)) < alpha


# -- identity -----------------------------------------------------------------------------------

class Judge:
    """MobileFaceNet verdicts on images derived from the probes (see the module docs)."""

    def __init__(self, probes: list[Probe], faces_dir: Path, size: int, gallery: int = 200, seed: int = 0) -> None:
        from ..eval import identity as I

        self.I = I
        self.size = size
        self.ident = I.IdentityModel()
        self.calibration = I.calibrate(self.ident)  # the harness's threshold at FMR 0.1 %, cached
        self.threshold = float(self.calibration["threshold"])
        self.probes = probes
        fi = I.FaceIndex()
        self.landmarks = np.stack([I.scale_landmarks(fi.landmarks(p.path), p.native, (size, size)) if size
                                   else fi.landmarks(p.path) for p in probes])
        self.fallbacks = fi.fallbacks
        fi.save()
        self.orig = I.embed_files(self.ident, [p.path for p in probes], size=size)["embeddings"]
        # gallery: each probe's other photo (or, lacking one, its own original), then distractors
        entries = [p.other or p.path for p in probes]
        self.other_photo = np.array([p.other is not None for p in probes])
        used = {p.person for p in probes}
        root = Path(faces_dir)
        rest = sorted({q.parent for q in root.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES} - {root})
        rng = random.Random(seed + 99)
        rng.shuffle(rest)
        for d in rest:
            if len(entries) >= max(gallery, len(probes)):
                break
            person = str(d.relative_to(root))
            if person in used:
                continue
            first = sorted(q for q in d.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if first:
                entries.append(first[0])
        self.gallery_paths = entries
        self.gallery = I.embed_files(self.ident, entries, size=size)["embeddings"]

    # the probes' own originals and gallery entries are embedded once; derived images per call
    def embed(self, idx: Sequence[int], images: Tensor) -> Tensor:
        return self.ident.embed(images.float(), self.landmarks[list(idx)])

    def verdicts(self, idx: Sequence[int], images: Tensor) -> dict[str, list]:
        """Per image: cosine and match vs its own original; cosine and match vs the person's other
        photo; rank-1 hit in the gallery."""
        idx = list(idx)
        e = self.embed(idx, images)
        cos_own = (self.orig[idx] * e).sum(1)
        sims = e @ self.gallery.T
        own = sims[torch.arange(len(idx)), torch.tensor(idx)]
        rank1 = sims.argmax(1) == torch.tensor(idx)
        return {"cos_own": cos_own.tolist(), "match_own": (cos_own >= self.threshold).tolist(),
                "cos_other": own.tolist(), "match_other": (own >= self.threshold).tolist(),
                "rank1": rank1.tolist()}

    def summary(self, v: dict[str, list]) -> dict:
        n = len(v.get("cos_own", []))
        if not n:
            return {"n": 0}
        k = int(sum(v["match_own"]))
        r = int(sum(v["rank1"]))
        ko = int(sum(v["match_other"]))
        return {"n": n, "matches": k, "match_rate": k / n, "match_rate_upper95": upper95(k, n),
                "cosine_mean": mean(v["cos_own"]), "match_other_photo": ko, "match_other_photo_rate": ko / n,
                "rank1_hits": r, "rank1_rate": r / n, "gallery": len(self.gallery_paths)}

    def chance(self, n: int | None = None) -> dict:
        """What chance looks like: different-person pairs (the probes' originals against other
        people's gallery entries) at the threshold, the rank-1 chance 1/G, and the clear-face
        baseline (originals against their own gallery entry)."""
        m = len(self.probes) if n is None else n
        sims = self.orig[:m] @ self.gallery.T
        mask = torch.ones_like(sims, dtype=torch.bool)
        mask[torch.arange(m), torch.arange(m)] = False
        imp = sims[mask]
        k = int((imp >= self.threshold).sum())
        gen = sims[torch.arange(m), torch.arange(m)]
        return {"impostor_pairs": int(imp.numel()), "impostor_matches": k,
                "impostor_match_rate": k / max(1, imp.numel()), "impostor_cosine_mean": mean(imp.tolist()),
                "calibration_fmr": self.calibration.get("fmr_at_threshold"), "target_fmr": self.I.TARGET_FMR,
                "threshold": self.threshold, "rank1_chance": 1 / len(self.gallery_paths),
                "gallery": len(self.gallery_paths),
                "gallery_other_photos": int(self.other_photo[:m].sum()),
                "clear_faces": {"rank1_rate": float((sims.argmax(1) == torch.arange(m)).float().mean()),
                                "match_other_photo_rate": float((gen >= self.threshold).float().mean()),
                                "cosine_other_mean": mean(gen.tolist())}}

    def describe(self) -> str:
        c = self.calibration
        return (f"MobileFaceNet, threshold cosine ≥ {self.threshold:.4f} (FMR ≤ 0.1 % on {c.get('n_pairs')} "
                f"LFW dev pairs, TMR {100 * c.get('tmr_at_threshold', float('nan')):.1f} %); rank-1 among "
                f"{len(self.gallery_paths)} gallery photos (other photos of the people)")


def identity_of_images(judge: Judge | None, origs: Tensor, images: Tensor, rgb_for_landmarks: list[np.ndarray]) -> dict | None:
    """Cosine and match of arbitrary image pairs (not probes): landmarks detected on the originals
    (template fallback). For the photo-level attacks (spoofing, by-product)."""
    if judge is None:
        return None
    I = judge.I
    lms = []
    for rgb in rgb_for_landmarks:
        lm = I.detect_landmarks(rgb)
        lms.append(lm if lm is not None else I.fallback_landmarks(*rgb.shape[:2]))
    lms = np.stack(lms)
    a = judge.ident.embed(origs.float(), lms)
    b = judge.ident.embed(images.float(), lms)
    c = (a * b).sum(1)
    return {"cos_own": c.tolist(), "match_own": (c >= judge.threshold).tolist()}


def simple_identity_summary(v: dict | None, threshold: float | None = None) -> dict | None:
    if not v:
        return None
    n = len(v["cos_own"])
    k = int(sum(v["match_own"]))
    return {"n": n, "matches": k, "match_rate": k / n if n else None, "match_rate_upper95": upper95(k, n),
            "cosine_mean": mean(v["cos_own"])}


# -- markdown -----------------------------------------------------------------------------------

def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def id_cells(s: dict | None) -> list[str]:
    """Match rate (count), rank-1 rate, mean cosine — or dashes without a judge."""
    if not s or not s.get("n"):
        return ["–", "–", "–"]
    rank = f"{pct(s['rank1_rate'])}" if "rank1_rate" in s else "–"
    return [f"{pct(s['match_rate'])} ({s['matches']}/{s['n']})", rank, num(s.get("cosine_mean"), 3)]


def provenance(meta: dict) -> str:
    """One line: command, data, machine, date, duration."""
    m = meta.get("machine", {})
    load = f", load avg {m['loadavg_1min_at_end']}" if "loadavg_1min_at_end" in m else ""
    quick = " **(quick run: reduced sizes, not the published numbers)**" if meta.get("quick") else ""
    return (f"_Command_ `{meta.get('command')}` · _data_ {meta.get('data')} · _model_ {meta['model']['name']} "
            f"`{meta['model']['sha256'][:12]}…` · _machine_ {m.get('cpu')}, {m.get('cpu_count')} cores, "
            f"torch {m.get('torch')}{load} · {meta.get('date')} · {meta.get('seconds')} s{quick}\n")


def save_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


class LogCapture(logging.Handler):
    """Collects every record of the ``faceveil`` logger (and below) at ``level`` while active:
    ``with LogCapture(logging.DEBUG) as logs: ...``; ``logs.text`` is everything, formatted with
    its arguments (what a log file would hold)."""

    def __init__(self, level: int = logging.DEBUG, logger: str = "faceveil") -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(logger)
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(self.format(r) + (f"\n{r.exc_text}" if r.exc_text else "") for r in self.records)

    def __enter__(self) -> "LogCapture":
        self._saved = (self._logger.level, self._logger.propagate, list(self._logger.handlers))
        self._logger.setLevel(self.level)
        self._logger.handlers = [self]  # nothing reaches the terminal while captured
        self._logger.propagate = False
        return self

    def __exit__(self, *exc) -> None:
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
        self._logger.handlers = self._saved[2]


def photos_dir(faces_dir: Path) -> Path | None:
    """The full-frame photos beside the face crops (LFW: ``lfw_dev_fullframe_250``), if any."""
    for cand in (Path(faces_dir).parent / "lfw_dev_fullframe_250",):
        if cand.is_dir():
            return cand
    return None


def load_photos(ctx: Context, n: int) -> tuple[list[np.ndarray], tuple[float, float, float, float], str]:
    """``n`` whole photos with one face each and the face box to protect (the same box in every
    photo, so crops line up for pasting). LFW full frames (250×250, face centred: the box whose
    pipeline crop is the central 150×150, as the dev crops are cut); without them, the held-out
    crops padded by a quarter of their size on each side."""
    d = photos_dir(ctx.faces_dir)
    if d is not None:
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        rng = random.Random(ctx.seed + 5)
        files = sorted(rng.sample(files, min(n, len(files))))
        photos = []
        for f in files:
            with Image.open(f) as im:
                photos.append(np.asarray(im.convert("RGB").resize((250, 250), Image.BICUBIC)))
        side = 150 / 1.3
        c = 125.0
        return photos, (c - side / 2, c - side / 2, c + side / 2, c + side / 2), f"{d} ({len(photos)} photos, 250×250)"
    probes = ctx.probes(n)
    pad = ctx.size // 4
    photos = [np.pad(p.rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect") for p in probes]
    side = ctx.size / 1.3
    c = pad + ctx.size / 2
    return photos, (c - side / 2, c - side / 2, c + side / 2, c + side / 2), \
        f"{ctx.faces_dir} crops padded to photos ({len(photos)})"
