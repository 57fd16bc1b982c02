"""The evaluation harness end to end on tiny generated faces with a randomly initialised model,
the report writers, and the MobileFaceNet identity model (when its weights can be found)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceveil.errors import ShapeError, UsageError
from faceveil.eval import harness as H
from faceveil.eval import metrics as M
from faceveil.eval import report as R
from faceveil.models import build, save_weights

ROOT = Path(__file__).resolve().parents[2]
CHEAP_KDF = {"name": "scrypt", "n": 2 ** 8, "r": 8, "p": 1}
SIZE = 32
FAST = dict(size=SIZE, identity=False, kdf=CHEAP_KDF, timing=True, timing_size=SIZE, timing_repeats=1)


def _random_net(arch: str = "proface-s", seed: int = 0):
    """Random weights everywhere (zero-initialised last convs would make the net trivial)."""
    torch.manual_seed(seed)
    net = build(arch)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.01)
    return net.eval()


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    """Four 40×40 'faces' (skin-toned ellipse with eyes and mouth on a textured background) in
    two sub-folders, as JPEG and PNG."""
    d = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    for i in range(4):
        bg = rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(bg).resize((40, 40), Image.BILINEAR)).copy()
        face = ((xx - 20) / 13) ** 2 + ((yy - 21) / 17) ** 2 < 1
        img[face] = (200 - 10 * i, 160, 130 + 20 * i)
        for ex in (14, 26):
            img[15:18, ex - 1:ex + 2] = 30
        img[28:30, 15:26] = (150, 40, 40)
        sub = d / ("a" if i < 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(img).save(sub / f"face{i}.{'png' if i % 2 else 'jpg'}")
    return d


TABLE_KEYS = [
    "protection.vs_veil.psnr", "protection.vs_veil.ssim", "protection.vs_veil.msssim",
    "protection.vs_original.psnr",
    "recovery.vs_original.psnr", "recovery.vs_original.ssim", "recovery.vs_original.msssim",
    "recovery.vs_original.rmse", "recovery.vs_original.mae", "recovery.vs_original.rmse_y",
    "recovery.vs_original.mae_y", "recovery.vs_original.psnr_y", "recovery.vs_original.ssim_y",
    "wrong_random.vs_original.psnr", "wrong_random.vs_veil.ssim",
    "wrong_onebit.vs_original.psnr", "wrong_onebit.vs_veil.psnr",
    "spoof.vs_original.psnr", "spoof.vs_veil.psnr",
    "byproduct.vs_original.psnr", "byproduct.vs_original.ssim",
    "veil.vs_original.psnr",
]


@pytest.mark.parametrize("mode", ["float", "png", "jpeg:90"])
def test_evaluate_structure(faces_dir, mode):
    res = H.evaluate(faces_dir, _random_net(), veils=["blur", "pixelate"], mode=mode, **FAST)
    json.loads(json.dumps(R._json_safe(res)))  # serialisable
    assert res["meta"]["mode"] == mode and res["meta"]["n_faces"] == 4
    assert res["meta"]["model"]["params"] == 1_073_040
    for v in ("blur", "pixelate"):
        pv = res["per_veil"][v]
        for k in TABLE_KEYS:
            val = R._get(pv, k)
            assert isinstance(val, float) and np.isfinite(val), (v, k, val)
        assert pv["params"] and pv["n_faces"] == 4
    for k in TABLE_KEYS:
        assert isinstance(R._get(res["average"], k), float)
    sp = res["speed"]
    assert sp["params"] == 1_073_040 and sp["cpu"]["protect_s_per_batch"] > 0
    assert sp["cpu"]["recover_s_per_batch"] > 0
    md = R.markdown(res)
    for title in ("Protection", "Correct recovery", "Wrong key", "Spoofing", "Cost"):
        assert title in md


def test_modes_differ_and_are_deterministic(faces_dir):
    net = _random_net()
    kw = dict(FAST, timing=False)
    a = H.evaluate(faces_dir, net, veils=["blur"], mode="float", **kw)
    b = H.evaluate(faces_dir, net, veils=["blur"], mode="float", **kw)
    assert a["per_veil"] == b["per_veil"]
    # a fresh network (zero-initialised last convs) protects as the identity on the veil: float
    # delivers ŷ = y exactly, JPEG at q50 does not
    fresh = build("proface-s").eval()
    fa = H.evaluate(faces_dir, fresh, veils=["blur"], mode="float", **kw)
    fj = H.evaluate(faces_dir, fresh, veils=["blur"], mode="jpeg:50", **kw)
    pa = R._get(fa["per_veil"]["blur"], "protection.vs_veil.psnr")
    pj = R._get(fj["per_veil"]["blur"], "protection.vs_veil.psnr")
    assert pa >= 60 and pj < 45  # JPEG at q50 costs protection fidelity
    other = H.evaluate(faces_dir, net, veils=["blur"], mode="float", seed=1, **kw)
    assert R._get(other["per_veil"]["blur"], "wrong_random.vs_original.psnr") != \
        R._get(a["per_veil"]["blur"], "wrong_random.vs_original.psnr")


def test_saved_pngs_reproduce_the_numbers(faces_dir, tmp_path):
    out = tmp_path / "imgs"
    res = H.evaluate(faces_dir, _random_net(), veils=["median"], mode="png", save_images=out,
                     **dict(FAST, timing=False))
    faces = sorted(p.name for p in (out / "median").iterdir())
    assert faces == ["a__face0", "a__face1", "b__face2", "b__face3"]
    d = out / "median" / "a__face0"
    names = {p.name for p in d.iterdir()}
    assert {"original.png", "veil.png", "protected.png", "recovered.png", "wrong_random.png",
            "wrong_onebit.png", "spoof.png", "byproduct.png"} <= names
    assert "by-product" in (out / "README.txt").read_text().lower()

    def load(name):
        return torch.from_numpy(np.array(Image.open(d / name))).permute(2, 0, 1)[None].double() / 255

    rows = list(csv.DictReader(open(out / "per_image.csv")))
    row = next(r for r in rows if r["face"].endswith("face0.jpg"))
    for a, b, key in (("protected.png", "veil.png", "protection.vs_veil"),
                      ("recovered.png", "original.png", "recovery.vs_original"),
                      ("byproduct.png", "original.png", "byproduct.vs_original")):
        got = M.psnr(load(a), load(b)).item()
        want = float(row[f"{key}.psnr"])
        assert got == pytest.approx(want, abs=1e-6) or (np.isinf(got) and np.isinf(want))
        assert M.ssim(load(a), load(b)).item() == pytest.approx(float(row[f"{key}.ssim"]), abs=1e-7)
    assert res["meta"]["n_faces"] == 4


def test_nothing_written_without_save_images(faces_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    H.evaluate(faces_dir, _random_net(), veils=["blur"], mode="png", **dict(FAST, timing=False))
    assert not list(tmp_path.rglob("*.png")) and not list(faces_dir.rglob("byproduct*"))


def test_unkeyed_imn_has_no_wrong_key_rows(faces_dir):
    res = H.evaluate(faces_dir, _random_net("imn"), veils=["blur"], mode="png", limit=2,
                     **dict(FAST, timing=False))
    pv = res["per_veil"]["blur"]
    assert "wrong_random" not in pv and "wrong_onebit" not in pv
    assert isinstance(R._get(pv, "recovery.vs_original.psnr"), float)
    assert res["meta"]["model"]["keyed"] is False and res["meta"]["n_faces"] == 2


def test_bad_requests(faces_dir, tmp_path):
    net = _random_net()
    with pytest.raises(UsageError, match="mode"):
        H.evaluate(faces_dir, net, mode="jpeg:101", **FAST)
    with pytest.raises(UsageError, match="mode"):
        H.parse_mode("webp")
    with pytest.raises(UsageError, match="veil"):
        H.evaluate(faces_dir, net, veils=["nope"], **FAST)
    with pytest.raises(UsageError, match="size"):
        H.evaluate(faces_dir, net, **dict(FAST, size=33))
    with pytest.raises(UsageError, match="no images"):
        H.evaluate(tmp_path, net, **FAST)


def test_one_bit_password():
    assert H.one_bit_away("abc") == b"abb"
    assert H.one_bit_away("pässword") != "pässword".encode()
    k = H.KeySource("pw", 0, CHEAP_KDF)
    r, o, x = k.maps([0, 1], 8, 8)
    assert r.shape == o.shape == x.shape == (2, 1, 8, 8)
    assert not torch.equal(r, o) and not torch.equal(r[0], r[1])
    assert set(r.unique().tolist()) == {-1.0, 1.0}


def test_cli_run_eval(faces_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(H, "time_model", lambda net, **kw: {"protect_s_per_batch": 1.0, "recover_s_per_batch": 1.0,
                                                             "device_name": "test", "threads": 1})
    monkeypatch.setattr(H, "KeySource", lambda pw, seed, kdf=None: _CheapKeys(pw, seed))
    weights = tmp_path / "rand.safetensors"
    save_weights(_random_net(), weights, name="rand-test")
    p = argparse.ArgumentParser()
    H.add_eval_arguments(p)
    out = tmp_path / "r.json"
    monkeypatch.setenv("EVAL_PW", "hunter2")
    args = p.parse_args(["--faces", str(faces_dir), "--model", str(weights), "--veil", "blur", "--mode", "png",
                         "--limit", "3", "--json-out", str(out), "--size", str(SIZE), "--no-identity", "-q",
                         "--password-env", "EVAL_PW", "--seed", "3"])
    assert H.run_eval(args) == 0
    res = json.loads(out.read_text())
    assert res["meta"]["model"]["name"] == "rand-test"
    assert res["meta"]["model"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert res["meta"]["n_faces"] == 3 and res["meta"]["password_source"] == "env:EVAL_PW"
    assert "hunter2" not in out.read_text()
    assert res["meta"]["command"].startswith("faceveil eval --faces")
    assert "| blur |" in capsys.readouterr().out
    args.password_env = "EVAL_PW_UNSET"
    with pytest.raises(UsageError, match="EVAL_PW_UNSET"):
        H.run_eval(args)


class _CheapKeys(H.KeySource):
    def __init__(self, password, seed):
        super().__init__(password, seed, CHEAP_KDF)


# -- reports -------------------------------------------------------------------------------------

def test_results_md_keeps_the_bench_section(faces_dir, tmp_path):
    res = H.evaluate(faces_dir, _random_net(), veils=["blur", "median"], mode="png", **FAST)
    j = R.write_json(res, tmp_path / "res.json")
    md = tmp_path / "docs" / "RESULTS.md"
    R.write_results_md([j], md)
    text = md.read_text()
    assert "<!-- BEGIN bench_speed -->" in text and "<!-- END bench_speed -->" in text
    assert "44.92" in text and "46.87" in text and "10.45" in text  # the papers beside ours
    assert "49.1" in text and "1.437" in text  # IMN
    assert res["meta"]["model"]["sha256"][:16] in text and res["meta"]["command"] in text
    R.update_section(md, R.BENCH_SECTION, "| size | ms |\n|---|---|\n| 112 | 5 |")
    R.update_section(md, "photo_quality", "| photo | dB |\n|---|---|\n| group.jpg | 41.4 |")
    R.write_results_md([j, j], md)
    text = md.read_text()
    assert "| 112 | 5 |" in text and "[2]" in text
    assert R.read_section(text, R.BENCH_SECTION).count("| 112 | 5 |") == 1
    assert R.read_section(text, "photo_quality").count("| group.jpg | 41.4 |") == 1


# -- identity (MobileFaceNet) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mfn_weights(tmp_path_factory):
    from faceveil.eval.identity import MOBILEFACENET_FILE

    local = ROOT / ".cache" / "data" / "weights" / MOBILEFACENET_FILE
    if local.is_file():
        return local
    tar = ROOT.parent / "shared" / "data" / "weights_face.tar.gz"
    if not tar.is_file():
        pytest.skip(f"MobileFaceNet weights absent: neither {local} nor {tar}")
    d = tmp_path_factory.mktemp("mfn")
    with tarfile.open(tar) as t:
        member = t.getmember(f"weights/{MOBILEFACENET_FILE}")
        f = t.extractfile(member)
        (d / MOBILEFACENET_FILE).write_bytes(f.read())
    return d / MOBILEFACENET_FILE


def test_identity_model_loads_and_embeds(mfn_weights):
    from faceveil.eval import identity as I

    m = I.IdentityModel(mfn_weights)
    assert m.sha256 == I.MOBILEFACENET_SHA256
    assert sum(p.numel() for p in m.net.parameters()) == 999_552
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    lms = np.stack([I.fallback_landmarks(64, 64)] * 2)
    e = m.embed(x, lms)
    assert e.shape == (2, 256)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    # the same face, slightly perturbed, stays close; a different image does not
    e2 = m.embed((x + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1), lms)
    assert I.cosine(e, e2).min() > I.cosine(e[:1], e[1:]).item()


def test_identity_weights_sha_is_checked(tmp_path):
    from faceveil.errors import ModelError
    from faceveil.eval import identity as I

    bad = tmp_path / "mobilefacenet_068.ckpt"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ModelError, match="sha256"):
        I.load_mobilefacenet(bad)
    with pytest.raises(ModelError, match="not found"):
        I.load_mobilefacenet(tmp_path / "missing.ckpt")


def test_alignment_maps_landmarks_onto_the_template():
    from faceveil.eval import identity as I

    # an image whose only bright pixels sit at the five landmarks lands them on the template
    lm = np.array([[20.0, 25.0], [44.0, 24.0], [32.0, 38.0], [22.0, 50.0], [42.0, 50.0]])
    m = I.similarity_transform(lm, I.TEMPLATE_96x112)
    mapped = (m[:, :2] @ lm.T).T + m[:, 2]
    assert np.abs(mapped - I.TEMPLATE_96x112).max() < 4  # 5 points, 4 dof: least squares
    # exact for points that are a similarity image of the template
    ang, s, t = 0.2, 0.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    src = (s * rot @ I.TEMPLATE_96x112.T).T + t
    m = I.similarity_transform(src, I.TEMPLATE_96x112)
    assert np.allclose((m[:, :2] @ src.T).T + m[:, 2], I.TEMPLATE_96x112, atol=1e-9)
    x = torch.zeros(1, 3, 128, 128)
    src = (0.9 * I.TEMPLATE_96x112 + np.array([15.0, 10.0]))
    for px, py in np.round(src).astype(int):
        x[0, :, py, px] = 1.0
    a = I.align(x, src[None])
    assert a.shape == (1, 3, 112, 96)
    for tx, ty in I.TEMPLATE_96x112:
        win = a[0, 0, int(ty) - 2:int(ty) + 3, int(tx) - 2:int(tx) + 3]
        assert win.max() > 0.3
    with pytest.raises(ShapeError):
        I.align(x, src[None, :4])


def test_verification_statistics():
    from faceveil.eval import identity as I

    rng = np.random.default_rng(0)
    same = rng.normal(0.6, 0.1, 1500)
    diff = rng.normal(0.0, 0.1, 1500)
    st = I.verification_stats(np.concatenate([same, diff]), np.r_[np.ones(1500), np.zeros(1500)])
    assert st["accuracy_10fold"] > 0.99
    assert st["fmr_at_threshold"] <= 0.001
    assert (diff >= st["threshold"]).sum() == 1  # floor(0.1 % of 1500) = 1 may pass
    assert st["threshold"] < np.sort(diff)[-1]


def test_harness_identity_rows(faces_dir, mfn_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEVEIL_EVAL_CACHE", str(tmp_path / "cache"))
    res = H.evaluate(faces_dir, _random_net(), veils=["blur"], mode="png", identity_weights=mfn_weights,
                     identity_threshold=0.39, limit=2, **dict(FAST, identity=True, timing=False))
    ident = res["per_veil"]["blur"]["identity"]
    for out in H.IDENTITY_OUTPUTS:
        assert 0.0 <= ident[out]["match_rate"] <= 1.0
        assert -1.0 <= ident[out]["cosine"] <= 1.0
    assert res["identity_calibration"]["threshold"] == 0.39
    assert (tmp_path / "cache").is_dir()
