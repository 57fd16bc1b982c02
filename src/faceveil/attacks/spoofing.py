"""Spoofing: recovery fed something that is not the protected face it expects.

PRO-Face S §V-D-1 feeds recovery the pre-obfuscated image (the veil alone) instead of the protected
one. We do that per veil with the **right** password (the strongest case), and add the photo-level
forgeries that a file format invites, all through the public API (:mod:`faceveil.api`):

* **veil as protected** — a face veiled but never hidden, recovered with the right key;
* **pasted into a protected photo** — photo B protected with password P_B; face A's protected crop
  (password P_A) pasted over B's face; recovered with P_B (B's record, B's password);
* **pasted into a plain photo, no record** — recovery must refuse (nothing says how);
* **pasted with A's record copied** — B's pixels with A's protected crop and A's record: with P_A
  the owner of A's password gets A's face back (as designed) and the edit is reported
  (``Recovered.modified``); with another password recovery refuses, and forced gives noise;
* **veiled photo with a copied record** — B's face only veiled (never hidden), B's record attached,
  recovered with P_B.

Each output face is compared with the face the attacker hopes to see (PSNR, SSIM, MobileFaceNet).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .. import api, pipeline
from ..detect.geometry import CropBox, extract, paste
from ..errors import ContainerError, WrongPasswordError
from ..io import container as ct
from ..io.image import encode_image
from ..keys import derive_master_key, new_salt
from ..obfuscate import VEILS, apply_veil
from .common import (Context, LogCapture, id_cells, identity_of_images, load_photos, merge_lists, num,
                     provenance, quality, quality_summary, simple_identity_summary, t, table, u8)
from .wrong_keys import _plan

log = logging.getLogger(__name__)

NAME = "spoofing"
TITLE = "Spoofing"
SECOND_PASSWORD = "another password, B's"


def veil_as_protected(ctx: Context, n: int) -> dict:
    """Per veil: the veil of each probe (8-bit) recovered with the right key, vs the original."""
    judge = ctx.judge()
    probes = ctx.probes(n)
    master = derive_master_key(ctx.password, new_salt(), ctx.kdf)
    out = {}
    for veil in sorted(VEILS):
        xs, ys, rs = [], [], []
        for j, p in enumerate(probes):
            x = t(p.rgb)
            with torch.inference_mode():
                y, _ = apply_veil(x, veil)
            y8 = u8(y)
            r = pipeline.recover_face(y8, j, master, ctx.model)
            xs.append(x), ys.append(t(y8)), rs.append(t(r))
        x, y, r = torch.cat(xs), torch.cat(ys), torch.cat(rs)
        row = {"vs_original": quality_summary(quality(r, x)), "vs_veil": quality_summary(quality(r, y)),
               "veil_vs_original": quality_summary(quality(y, x))}
        if judge is not None:
            idx = list(range(len(probes)))
            row["identity"] = judge.summary(judge.verdicts(idx, r))
            row["veil_identity"] = judge.summary(judge.verdicts(idx, y))
        out[veil] = row
    return out


def _file(rgb: np.ndarray, record: ct.Record | None) -> bytes:
    return encode_image(rgb, None, format="PNG", text=ct.embed({}, record) if record else None)


def _try_recover(data: bytes, password: str, ctx: Context, force: bool = False):
    """(Recovered or None, outcome text)."""
    try:
        rec = api.recover(data, password, model=ctx.model, force=force)
    except WrongPasswordError:
        return None, "refused: wrong password"
    except ContainerError as e:
        return None, f"refused: {str(e).split(':')[0]}"
    return rec, "recovered" + (" (edit reported)" if rec.modified else "") + (" (forced)" if force else "")


def paste_attacks(ctx: Context, n_pairs: int) -> tuple[dict, str]:
    """The photo-level forgeries on ``n_pairs`` pairs of photos (A, B)."""
    judge = ctx.judge()
    photos, box, data = load_photos(ctx, 2 * n_pairs)
    pairs = [(photos[2 * i], photos[2 * i + 1]) for i in range(len(photos) // 2)]
    cases: dict[str, dict] = {}

    def add(case: str, outcome: str, out_crop: np.ndarray | None, target: np.ndarray, what: str) -> None:
        c = cases.setdefault(case, {"outcomes": {}, "compared_with": what, "q": {}, "origs": [], "outs": []})
        c["outcomes"][outcome] = c["outcomes"].get(outcome, 0) + 1
        if out_crop is not None:
            merge_lists(c["q"], quality(t(out_crop), t(target)))
            c["origs"].append(target)
            c["outs"].append(out_crop)

    with LogCapture(logging.WARNING) as logs:
        for a, b in pairs:
            pa = api.protect(a, ctx.password, boxes=[box], model=ctx.model, kdf=ctx.kdf)
            pb = api.protect(b, SECOND_PASSWORD, boxes=[box], model=ctx.model, kdf=ctx.kdf)
            crop = CropBox.from_list(pa.record.faces[0].crop)
            a_face, b_face = extract(a, crop), extract(b, crop)
            a_prot = extract(pa.image, crop)
            # 1. A's protected face pasted into protected B; B's record and password
            forged = _file(paste(pb.image, crop, a_prot), pb.record)
            rec, how = _try_recover(forged, SECOND_PASSWORD, ctx)
            add("pasted_into_protected_photo", how, extract(rec.image, crop) if rec else None, a_face, "A's face")
            # 2. pasted into plain B, no record
            plain = _file(paste(b, crop, a_prot), None)
            rec, how = _try_recover(plain, ctx.password, ctx)
            add("pasted_into_plain_photo_no_record", how, extract(rec.image, crop) if rec else None, a_face,
                "A's face")
            # 3. pasted into plain B with A's record copied: A's password, then B's (plain and forced)
            copied = _file(paste(b, crop, a_prot), pa.record)
            rec, how = _try_recover(copied, ctx.password, ctx)
            add("copied_record_with_As_password", how, extract(rec.image, crop) if rec else None, a_face,
                "A's face")
            rec, how = _try_recover(copied, SECOND_PASSWORD, ctx)
            add("copied_record_other_password", how, extract(rec.image, crop) if rec else None, a_face, "A's face")
            rec, how = _try_recover(copied, SECOND_PASSWORD, ctx, force=True)
            add("copied_record_other_password_forced", how, extract(rec.image, crop) if rec else None, a_face,
                "A's face")
            # 4. B veiled only (never hidden), B's record, B's password
            veil = pb.record.faces[0].veil
            with torch.inference_mode():
                y, _ = apply_veil(t(b_face), veil.name, dict(veil.params))
            veiled_b = _file(paste(b, crop, u8(y)), pb.record)
            rec, how = _try_recover(veiled_b, SECOND_PASSWORD, ctx)
            add("veiled_photo_with_copied_record", how, extract(rec.image, crop) if rec else None, b_face,
                "B's face")
    out = {}
    for case, c in cases.items():
        row = {"outcomes": c["outcomes"], "compared_with": c["compared_with"], "n": len(pairs)}
        if c["outs"]:
            row["vs_target"] = quality_summary(c["q"])
            row["identity"] = simple_identity_summary(identity_of_images(
                judge, torch.cat([t(o) for o in c["origs"]]), torch.cat([t(o) for o in c["outs"]]), c["origs"]))
        out[case] = row
    out["_warnings_logged"] = len(logs.records)
    return out, data


def run(ctx: Context) -> dict:
    t0 = time.time()
    n = ctx.n(30, 2)
    ctx.say(f"spoofing: veils fed to recovery ({n} faces × {len(VEILS)} veils)")
    crops = veil_as_protected(ctx, n)
    pairs = ctx.n(8, 1)
    ctx.say(f"spoofing: pasted faces ({pairs} photo pairs)")
    photo, photo_data = paste_attacks(ctx, pairs)
    notes, status = [], "ok"
    for veil, row in crops.items():
        s, v = row.get("identity"), row.get("veil_identity")
        if s and v and (s["matches"] > v["matches"] or s["rank1_hits"] > v["rank1_hits"] + max(2, 0.05 * s["n"])):
            status = "finding"
            notes.append(f"{veil}: the veil fed to recovery is identified more often than the veil itself")
    leaks = {k: v for k, v in photo.items() if not k.startswith("_") and k != "copied_record_with_As_password"
             and (v.get("identity") or {}).get("matches")}
    if leaks:
        status = "finding"
        notes.append("a forged file gave back a recognisable face: " + ", ".join(leaks))
    if status == "ok":
        psnr = np.mean([r["vs_original"]["psnr"] for r in crops.values()])
        notes.append(f"veils fed to recovery give {psnr:.2f} dB vs the original and no more identity than the "
                     "veil; forged files give nothing of the face without its password")
    res = {"name": NAME, "title": TITLE, "veil_as_protected": crops, "photos": photo, "faces": n,
           "verdict": {"status": status, "summary": "; ".join(notes)}}
    res["meta"] = ctx.meta(f"{ctx.faces_dir} ({n} faces, {ctx.size} px) and {photo_data}", t0, kdf=ctx.kdf)
    return res


CASE_LABELS = {
    "pasted_into_protected_photo": "A's protected face pasted into protected photo B; B's record, B's password",
    "pasted_into_plain_photo_no_record": "A's protected face pasted into plain photo B, no record",
    "copied_record_with_As_password": "… into plain B with A's record copied; A's password (the owner)",
    "copied_record_other_password": "… same forged file; B's password",
    "copied_record_other_password_forced": "… same forged file; B's password, forced (`--force`)",
    "veiled_photo_with_copied_record": "photo B only veiled (never hidden) with B's record; B's password",
}


def markdown(r: dict) -> str:
    out = [provenance(r["meta"]), "\n", "**The veil fed to recovery with the right password** "
           f"({r['faces']} faces per veil):\n\n"]
    rows = []
    for veil, row in r["veil_as_protected"].items():
        rows.append([veil, num(row["vs_original"]["psnr"]), num(row["vs_original"]["ssim"], 4),
                     num(row["vs_veil"]["psnr"]), *id_cells(row.get("identity")),
                     num(row["veil_vs_original"]["psnr"]), *id_cells(row.get("veil_identity"))])
    out.append(table(["veil", "PSNR vs original", "SSIM", "PSNR vs veil", "identity match", "rank-1",
                      "mean cosine", "*veil itself:* PSNR", "match", "rank-1", "cosine"], rows))
    out.append("\n**Forged files** (through `faceveil.api`; per photo pair; what comes out of the face crop "
               "vs the face the forger wants):\n\n")
    rows = []
    for case, label in CASE_LABELS.items():
        row = r["photos"].get(case)
        if not row:
            continue
        outcome = ", ".join(f"{k} ×{v}" for k, v in row["outcomes"].items())
        q = row.get("vs_target") or {}
        rows.append([label, outcome, row["compared_with"], num(q.get("psnr")), num(q.get("ssim"), 4),
                     *id_cells(row.get("identity"))[::2]])
    out.append(table(["forgery", "outcome", "vs", "PSNR", "SSIM", "identity match", "mean cosine"], rows))
    out.append("\nThe owner of A's password getting A's face back from a file with A's record is the scheme "
               "working as designed (the edit is reported); every other row should show nothing of the face.\n")
    return "".join(out)
