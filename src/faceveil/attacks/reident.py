"""Re-identification: does a face recogniser still recognise the protected face?

Per built-in veil (``faceveil veils``), held-out faces are protected through the pipeline (8-bit,
each face its own secret map) and MobileFaceNet judges the protected face three ways: against its
own original (match at FMR 0.1 %), against *another photo* of the same person (the realistic
attacker: a gallery of known faces), and by rank-1 identification among ``G`` gallery photos.
The veil alone is judged the same way: anything the veil lets through is the veil's (a choice of
veil and strength), not the hiding's; the protected face should not be recognised more often.
"""

from __future__ import annotations

import logging
import time

import torch

from ..keys import derive_master_key, new_salt
from ..obfuscate import VEILS, apply_veil
from .. import pipeline
from .common import (Context, more_than, num, pct, provenance, quality, quality_summary, t, table, u8)
from .wrong_keys import _plan

log = logging.getLogger(__name__)

NAME = "reident"
TITLE = "Re-identification of protected faces"


def run(ctx: Context) -> dict:
    t0 = time.time()
    n = ctx.n(100, 4)
    probes = ctx.probes(n)
    judge = ctx.judge()
    idx = list(range(len(probes)))
    x = torch.cat([t(p.rgb) for p in probes])
    per_veil = {}
    for veil in sorted(VEILS):
        ctx.say(f"reident: {veil} ({len(probes)} faces)")
        master = derive_master_key(ctx.password, new_salt(), ctx.kdf)
        prot, veiled = [], []
        for j, p in enumerate(probes):
            plan = _plan(p.rgb.shape[0], veil)
            plan.index = j
            pr, params = pipeline.protect_face(p.rgb, plan, master, ctx.model)
            with torch.inference_mode():
                y, _ = apply_veil(t(p.rgb), veil, params)
            prot.append(t(pr))
            veiled.append(t(u8(y)))
        pr, vv = torch.cat(prot), torch.cat(veiled)
        row = {"protected_vs_veil": quality_summary(quality(pr, vv)), "protected_vs_original": quality_summary(quality(pr, x))}
        if judge is not None:
            row["protected"] = judge.summary(judge.verdicts(idx, pr))
            row["veil"] = judge.summary(judge.verdicts(idx, vv))
        per_veil[veil] = row
    res = {"name": NAME, "title": TITLE, "faces": len(probes), "size": ctx.size, "per_veil": per_veil}
    if judge is not None:
        res["chance"] = judge.chance(len(probes))
        res["original"] = judge.summary(judge.verdicts(idx, x))
        res["identity_protocol"] = judge.describe()
    res["verdict"] = verdict(res)
    res["meta"] = ctx.meta(f"{ctx.faces_dir} ({len(probes)} faces, {ctx.size} px, seed {ctx.seed})", t0, kdf=ctx.kdf)
    return res


def verdict(res: dict) -> dict:
    notes, status = [], "ok"
    worst = []
    for veil, row in res["per_veil"].items():
        p, v = row.get("protected"), row.get("veil")
        if not p:
            continue
        if more_than(p["matches"], p["n"], v["matches"], v["n"]) or \
                more_than(p["rank1_hits"], p["n"], v["rank1_hits"], v["n"]) or \
                more_than(p["match_other_photo"], p["n"], v["match_other_photo"], v["n"]):
            status = "finding"
            notes.append(f"{veil}: the protected face is recognised more often than the veil alone")
        worst.append((p["rank1_rate"], veil, p))
    if worst:
        r, veil, p = max(worst)
        c = res.get("chance", {})
        rates = ", ".join(f"{pct(row['protected']['match_rate'])} ({v})" for v, row in res["per_veil"].items()
                          if row.get("protected"))
        notes.append(f"protected faces match their originals {rates}; highest rank-1: {pct(r)} ({veil}; chance "
                     f"{pct(c.get('rank1_chance'))})")
    return {"status": status, "summary": "; ".join(notes) or "identity not measured"}


def markdown(r: dict) -> str:
    out = [provenance(r["meta"]), "\n"]
    out.append(f"{r['faces']} held-out faces per veil ({r['size']} px), each protected with its own secret map and "
               f"rounded to 8 bits; identity: {r.get('identity_protocol') or 'not measured'}. *own*: vs the face's own "
               "original; *other photo*: vs another photo of the same person; *rank-1*: the right person is the "
               "nearest of the gallery.\n\n")
    rows = []
    for veil, row in r["per_veil"].items():
        for kind in ("veil", "protected"):
            s = row.get(kind)
            q = row["protected_vs_veil"] if kind == "protected" else None
            rows.append([veil, "protected" if kind == "protected" else "*veil alone*",
                         f"{num(q['psnr'])} dB" if q else "",
                         *((f"{pct(s['match_rate'])} ({s['matches']}/{s['n']})", pct(s["match_other_photo_rate"]),
                            pct(s["rank1_rate"]), num(s["cosine_mean"], 3)) if s else ("–",) * 4)])
    o = r.get("original")
    c = r.get("chance")
    if o:
        rows.append(["–", "*original (clear face)*", "", f"{pct(o['match_rate'])}", pct(o["match_other_photo_rate"]),
                     pct(o["rank1_rate"]), num(o["cosine_mean"], 3)])
    if c:
        rows.append(["–", "*chance (different people)*", "", f"{pct(c['impostor_match_rate'], 2)}",
                     f"{pct(c['impostor_match_rate'], 2)}", pct(c["rank1_chance"]), num(c["impostor_cosine_mean"], 3)])
    out.append(table(["veil", "image", "PSNR vs veil", "match own original", "match other photo", "rank-1",
                      "mean cosine (own)"], rows))
    return "".join(out)
