"""Wrong keys: what recovery gives with a password that is not the right one.

``M`` held-out faces are protected through the pipeline (:func:`faceveil.pipeline.protect_face`),
each with the right password and **its own fresh salt**, as real files are. The attacker then runs
recovery (:func:`faceveil.pipeline.recover_face`, what ``faceveil recover --force`` does) with

* 1,000 random passwords (12 printable ASCII characters, seeded), and
* every one-bit variant of the right password: each bit of its UTF-8 bytes flipped in turn
  (8 × bytes variants; some are not valid UTF-8, which the attacker may still feed to scrypt),

each key derived with the real KDF from the target file's salt; password ``i`` goes to face
``i mod M``. Every output is compared with the original (PSNR, SSIM) and judged by MobileFaceNet
(match at FMR 0.1 %, rank-1 identification), against chance (different-person pairs; 1/G) and
against the veil itself. The verifier's answer to every wrong password is recorded too: a false
accept would be a bug.
"""

from __future__ import annotations

import logging
import random
import string
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..detect.geometry import CropBox
from ..keys import derive_master_key, new_salt, normalize_password
from ..obfuscate import VEILS, apply_veil
from .. import pipeline
from .common import (Context, above_chance, id_cells, merge_lists, more_than, pct, provenance, quality,
                     quality_summary, num, t, table, u8)

log = logging.getLogger(__name__)

NAME = "wrong_keys"
TITLE = "Wrong keys"
#: Characters of the random passwords: printable ASCII without space (94).
RANDOM_ALPHABET = string.ascii_letters + string.digits + string.punctuation


def one_bit_variants(password: str | bytes) -> list[bytes]:
    """Every password one bit away from ``password``: each bit of its (NFC, UTF-8) bytes flipped
    in turn, ``8 × len(bytes)`` variants, in byte then bit order."""
    raw = normalize_password(password)
    return [raw[:i] + bytes([raw[i] ^ (1 << b)]) + raw[i + 1:] for i in range(len(raw)) for b in range(8)]


def random_passwords(n: int, seed: int, length: int = 12, exclude: tuple = ()) -> list[str]:
    """``n`` distinct random passwords (seeded), none equal to one in ``exclude``."""
    rng = random.Random(seed)
    bad = {normalize_password(e) for e in exclude}
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        p = "".join(rng.choice(RANDOM_ALPHABET) for _ in range(length))
        if p not in seen and p.encode() not in bad:
            seen.add(p)
            out.append(p)
    return out


def _plan(size: int, veil: str) -> pipeline.FacePlan:
    return pipeline.FacePlan(0, (0.0, 0.0, float(size), float(size)), CropBox(0, 0, size, size), veil=veil)


def protect_targets(ctx: Context, probes, password: str) -> list[dict]:
    """Each probe protected like a one-face file: its own salt, face index 0."""
    veils = sorted(VEILS)
    out = []
    for j, p in enumerate(probes):
        veil = veils[j % len(veils)]
        salt = new_salt()
        master = derive_master_key(password, salt, ctx.kdf)
        prot, params = pipeline.protect_face(p.rgb, _plan(p.rgb.shape[0], veil), master, ctx.model)
        with torch.inference_mode():
            y, _ = apply_veil(t(p.rgb), veil, params)
        out.append({"idx": j, "veil": veil, "salt": salt, "verifier": master.verifier, "protected": prot,
                    "veil_rgb": u8(y), "recovered": pipeline.recover_face(prot, 0, master, ctx.model)})
    return out


def attack(ctx: Context, targets: list[dict], probes, passwords: list, label: str) -> dict:
    """Recover with every password; returns per-image lists (quality vs original and vs the veil,
    identity verdicts) and the derivation times."""
    judge = ctx.judge()
    outs: dict[int, list[np.ndarray]] = {}
    accepted, kdf_s, net_s = 0, 0.0, 0.0

    def derive(i: int):
        tg = targets[i % len(targets)]
        t0 = time.perf_counter()
        m = derive_master_key(passwords[i], tg["salt"], ctx.kdf)
        return m, m.matches(tg["verifier"]), time.perf_counter() - t0

    # scrypt releases the GIL: the next keys are derived on a second core while the network runs
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = [pool.submit(derive, i) for i in range(min(4, len(passwords)))]
        for i in range(len(passwords)):
            m, ok, dt = ahead[i].result()
            ahead[i] = None
            if i + 4 < len(passwords):
                ahead.append(pool.submit(derive, i + 4))
            accepted += ok
            kdf_s += dt
            tg = targets[i % len(targets)]
            t1 = time.perf_counter()
            outs.setdefault(tg["idx"], []).append(pipeline.recover_face(tg["protected"], 0, m, ctx.model))
            net_s += time.perf_counter() - t1
            if (i + 1) % 100 == 0:
                ctx.say(f"wrong_keys: {label} {i + 1}/{len(passwords)}")
    q: dict[str, list] = {}
    qv: dict[str, list] = {}
    ident: dict[str, list] = {}
    for j, imgs in outs.items():
        x = t(probes[j].rgb)
        batch = torch.cat([t(a) for a in imgs])
        merge_lists(q, quality(batch, x.expand_as(batch)))
        merge_lists(qv, quality(batch, t(targets[j]["veil_rgb"]).expand_as(batch)))
        if judge is not None:
            for s in range(0, len(imgs), 64):
                merge_lists(ident, judge.verdicts([j] * len(imgs[s:s + 64]), batch[s:s + 64]))
    return {"n": len(passwords), "verifier_false_accepts": int(accepted), "kdf_seconds": round(kdf_s, 1),
            "network_seconds": round(net_s, 1), "vs_original": quality_summary(q), "vs_veil": quality_summary(qv),
            "identity": judge.summary(ident) if judge is not None else None}


def baseline(ctx: Context, targets: list[dict], probes, key: str) -> dict:
    judge = ctx.judge()
    x = torch.cat([t(probes[tg["idx"]].rgb) for tg in targets])
    b = torch.cat([t(tg[key]) for tg in targets])
    out = {"vs_original": quality_summary(quality(b, x))}
    if judge is not None:
        out["identity"] = judge.summary(judge.verdicts([tg["idx"] for tg in targets], b))
    return out


def verdict(res: dict) -> dict:
    """Finding when a wrong-key output matches its original (or is identified) more often than
    chance, or when the verifier accepted a wrong password."""
    notes, status = [], "ok"
    chance = res.get("chance")
    for kind in ("random", "one_bit"):
        r = res[kind]
        if r["verifier_false_accepts"]:
            status = "finding"
            notes.append(f"{kind}: the verifier accepted {r['verifier_false_accepts']} wrong passwords")
        s = r.get("identity")
        if s and chance:
            hi_match = above_chance(s["matches"], s["n"], chance["target_fmr"])
            hi_rank = above_chance(s["rank1_hits"], s["n"], chance["rank1_chance"])
            veil = res["veil_alone"].get("identity") or {}
            over_veil = veil and (more_than(s["matches"], s["n"], veil["matches"], veil["n"])
                                  or more_than(s["rank1_hits"], s["n"], veil["rank1_hits"], veil["n"]))
            if hi_match or hi_rank:
                status = "finding"
                notes.append(f"{kind}: identity above chance (match {pct(s['match_rate'])}, rank-1 "
                             f"{pct(s['rank1_rate'])})" + (", and above the veil alone" if over_veil else
                                                           ", but not above the veil alone"))
    if status == "ok":
        r, o = res["random"], res["one_bit"]
        ids = ""
        if r.get("identity"):
            ids = (f"; identity match {pct(r['identity']['match_rate'])} / {pct(o['identity']['match_rate'])}, "
                   f"rank-1 {pct(r['identity']['rank1_rate'])} / {pct(o['identity']['rank1_rate'])} "
                   f"(chance {pct(chance['target_fmr'])} / {pct(chance['rank1_chance'])})")
        notes.append(f"{r['n']} random and {o['n']} one-bit passwords: PSNR vs original "
                     f"{num(r['vs_original']['psnr'])} / {num(o['vs_original']['psnr'])} dB{ids}; no wrong "
                     "password passed the verifier")
    return {"status": status, "summary": "; ".join(notes)}


def run(ctx: Context) -> dict:
    t0 = time.time()
    m = ctx.n(30, 2)
    probes = ctx.probes(m)
    n_random = 8 if ctx.quick else 1000
    ctx.say(f"wrong_keys: protecting {len(probes)} faces (one salt each)")
    targets = protect_targets(ctx, probes, ctx.password)
    variants = one_bit_variants(ctx.password)
    if ctx.quick:
        variants = variants[:: max(1, len(variants) // 8)][:8]
    res: dict = {"name": NAME, "title": TITLE, "password_bytes": len(normalize_password(ctx.password)),
                 "one_bit_variants_total": 8 * len(normalize_password(ctx.password)), "faces": len(targets),
                 "veils": sorted({tg["veil"] for tg in targets})}
    res["random"] = attack(ctx, targets, probes, random_passwords(n_random, ctx.seed + 1, exclude=(ctx.password,)),
                           "random")
    res["one_bit"] = attack(ctx, targets, probes, variants, "one-bit")
    res["right_key"] = baseline(ctx, targets, probes, "recovered")
    res["veil_alone"] = baseline(ctx, targets, probes, "veil_rgb")
    res["protected_alone"] = baseline(ctx, targets, probes, "protected")
    judge = ctx.judge()
    res["chance"] = judge.chance() if judge is not None else None
    res["identity_protocol"] = judge.describe() if judge is not None else None
    res["verdict"] = verdict(res)
    res["meta"] = ctx.meta(f"{ctx.faces_dir} ({len(targets)} faces, {ctx.size} px, seed {ctx.seed})", t0,
                           kdf=ctx.kdf)
    return res


def markdown(r: dict) -> str:
    out = [provenance(r["meta"]), "\n"]
    out.append(f"{r['faces']} held-out faces ({', '.join(r['veils'])}), each protected with the right password "
               f"and its own salt. {r['random']['n']} random 12-character passwords and {r['one_bit']['n']} "
               f"one-bit variants of the right password (of {r['one_bit_variants_total']}: every bit of its "
               f"{r['password_bytes']} UTF-8 bytes), each key derived from the target file's salt with scrypt "
               f"{r['meta']['kdf']['n']}/{r['meta']['kdf']['r']}/{r['meta']['kdf']['p']}. Identity: "
               f"{r.get('identity_protocol') or 'not measured'}.\n\n")
    rows = []
    for key, label in (("random", "random passwords"), ("one_bit", "one-bit variants"),
                       ("veil_alone", "*the veil itself*"), ("protected_alone", "*the protected face itself*"),
                       ("right_key", "*right password (sanity)*")):
        d = r[key]
        vo = d["vs_original"]
        rows.append([label, str(vo["n"]), num(vo["psnr"]), num(vo["ssim"], 4),
                     num(d.get("vs_veil", {}).get("psnr")) if "vs_veil" in d else "",
                     *id_cells(d.get("identity")),
                     str(d["verifier_false_accepts"]) if "verifier_false_accepts" in d else ""])
    c = r.get("chance")
    if c:
        rows.append(["*chance (different people)*", str(c["impostor_pairs"]), "", "", "",
                     f"{pct(c['impostor_match_rate'], 2)} (target {pct(c['target_fmr'])})",
                     pct(c["rank1_chance"]), num(c["impostor_cosine_mean"], 3), ""])
    out.append(table(["recovery with", "n", "PSNR vs original", "SSIM", "PSNR vs veil", "identity match",
                      "rank-1", "mean cosine", "verifier accepts"], rows))
    if c:
        out.append(f"\nClear faces for reference: rank-1 {pct(c['clear_faces']['rank1_rate'])}, match with "
                   f"the other photo {pct(c['clear_faces']['match_other_photo_rate'])}. ")
    out.append(f"Time for the random passwords: scrypt {r['random']['kdf_seconds']} s in all (derived on a second "
               f"thread beside the network), network {r['random']['network_seconds']} s.\n")
    return "".join(out)
