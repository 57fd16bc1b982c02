"""The attack suite computes what it claims, on tiny inputs (each test a few seconds; the measured
run is `faceveil attack`, whose results are docs/SECURITY.md)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from faceveil.attacks import ATTACKS, suite
from faceveil.attacks import byproduct as B
from faceveil.attacks import common as C
from faceveil.attacks import kdf as KD
from faceveil.attacks import known_plaintext as KP
from faceveil.attacks import wrong_keys as W
from faceveil.errors import UsageError
from faceveil.keys import derive_master_key, new_salt
from faceveil.models import build

CHEAP_KDF = {"name": "scrypt", "n": 2 ** 8, "r": 8, "p": 1}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine two threads spin-wait on each
    other (the suite runs with one thread too: `faceveil attack --threads`)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# -- passwords and keys -------------------------------------------------------------------------

def test_one_bit_variants_flip_every_bit_of_the_utf8_bytes():
    pw = "ab✓"  # 2 ASCII bytes + 3 UTF-8 bytes
    raw = pw.encode()
    v = W.one_bit_variants(pw)
    assert len(v) == 8 * len(raw) == 40
    assert len(set(v)) == len(v) and raw not in v
    for i, var in enumerate(v):
        diff = [a ^ b for a, b in zip(var, raw)]
        assert len(var) == len(raw)
        assert sum(bin(d).count("1") for d in diff) == 1
        assert diff[i // 8] == 1 << (i % 8)


def test_random_passwords_are_seeded_distinct_and_exclude_the_right_one():
    a = W.random_passwords(50, seed=3, exclude=("x",))
    assert a == W.random_passwords(50, seed=3) and a != W.random_passwords(50, seed=4)
    assert len(set(a)) == 50 and all(len(p) == 12 for p in a)


def test_salt_per_image_gives_unrelated_maps_and_the_same_salt_identical_ones():
    pw = "same password"
    s1, s2 = new_salt(), new_salt()
    m1 = derive_master_key(pw, s1, CHEAP_KDF).secret_map(0, 112, 112)
    m2 = derive_master_key(pw, s2, CHEAP_KDF).secret_map(0, 112, 112)
    again = derive_master_key(pw, s1, CHEAP_KDF).secret_map(0, 112, 112)
    assert abs(C.map_correlation(m1, m2)) < 0.05  # independent: sd 1/112
    assert C.map_correlation(m1, again) == pytest.approx(1.0)


def test_salt_check_through_the_api():
    r = KD.salt_check("same password", pairs=1, kdf=CHEAP_KDF, model=None)
    assert r["distinct_salts"] == 2 and r["salt_bytes"] == 16
    assert abs(r["same_password_two_photos"]["corr_mean"]) < 0.05
    assert r["same_salt_counterfactual"]["corr_mean"] == pytest.approx(1.0)
    assert abs(r["same_photo_other_face_index"]["corr_mean"]) < 0.05


def test_guess_timing_and_projections():
    g = KD.time_guess(CHEAP_KDF, repeats=2)
    assert g["median_s"] > 0 and g["memory_bytes"] == 128 * 256 * 8
    rows = KD.projections(0.25)
    assert {r["password"] for r in rows} >= {"8 lowercase letters (26)", "12 printable ASCII (95)"}
    eight = next(r for r in rows if r["password"] == "8 lowercase letters (26)")
    assert eight["log2_space"] == pytest.approx(8 * math.log2(26), abs=0.1)
    assert KD.human_time(90) == "1.5 minutes" and "years" in KD.human_time(1e12)


# -- statistics ---------------------------------------------------------------------------------

def test_binomial_helpers():
    assert C.binom_sf(0, 10, 0.1) == 1.0
    assert C.binom_sf(1, 1000, 0.001) == pytest.approx(1 - 0.999 ** 1000, rel=1e-6)
    assert C.upper95(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-3)  # the rule of three
    assert not C.above_chance(1, 1000, 0.001) and C.above_chance(8, 1000, 0.001)
    assert C.more_than(30, 100, 5, 100) and not C.more_than(6, 100, 5, 100) and not C.more_than(0, 10, 0, 10)


# -- the by-product detector --------------------------------------------------------------------

@dataclasses.dataclass
class _Box:
    payload: object
    note: str = "nothing here"


def _secret(seed=0, h=16, w=16):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_byproduct_detector_is_quiet_on_clean_artifacts():
    secret = _secret()
    clean = {"obj": _Box(np.random.default_rng(9).random((16, 16, 3))), "text": "protected 1 face",
             "bytes": np.random.default_rng(8).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
             "numbers": " ".join(f"{v:.4f}" for v in np.random.default_rng(7).random(200))}
    assert B.find_leaks({"x̂": secret}, clean) == []


@pytest.mark.parametrize("plant", ["raw uint8", "base64 float32", "logged tensor", "array CHW", "png chunk",
                                   "hex"])
def test_byproduct_detector_finds_a_planted_leak(plant):
    secret = _secret()
    q = (secret * 255).round().astype(np.uint8)
    if plant == "raw uint8":
        art = {"file": b"header" + q.tobytes() + b"trailer"}
    elif plant == "base64 float32":
        art = {"record": json.dumps({"extra": base64.b64encode(secret.tobytes()).decode()})}
    elif plant == "logged tensor":
        torch.set_printoptions(profile="full")
        try:
            art = {"log": f"DEBUG:faceveil.pipeline:by-product {torch.from_numpy(secret).permute(2, 0, 1)}"}
        finally:
            torch.set_printoptions(profile="default")
    elif plant == "array CHW":
        art = {"obj": _Box(torch.from_numpy(secret).permute(2, 0, 1).clone())}
    elif plant == "hex":
        art = {"text": q.tobytes().hex()}
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", base64.b64encode(q.tobytes()).decode(), zip=True)
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG", pnginfo=info)
        art = {"png": buf.getvalue()}
    found = B.find_leaks({"x̂": secret}, art)
    assert found and found[0]["secret"] == "x̂"


def test_png_chunks_lists_the_chunks():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    kinds = [k for k, _ in B.png_chunks(buf.getvalue())]
    assert kinds[0] == "IHDR" and "IDAT" in kinds and kinds[-1] == "IEND"
    assert B.png_chunks(b"not a png") == []


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    """Six 40×40 'faces', one folder per person, two photos each."""
    d = tmp_path_factory.mktemp("people")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    for person in range(3):
        for k in range(2):
            img = np.asarray(Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)).resize((40, 40)))
            img = img.copy()
            img[((xx - 20) / 13) ** 2 + ((yy - 21) / 17) ** 2 < 1] = (190, 150 + 20 * person, 130 + k * 10)
            img[15:18, 12:15] = img[15:18, 25:28] = 30
            (d / f"p{person}").mkdir(exist_ok=True)
            Image.fromarray(img).save(d / f"p{person}" / f"p{person}_{k}.png")
    return d


def _ctx(faces_dir, **kw):
    from faceveil.models.zoo import load_model

    return C.Context(faces_dir=Path(faces_dir), model=load_model(), quick=True, kdf=CHEAP_KDF, identity=False,
                     size=32, **kw)


def test_probes_take_people_with_two_photos(faces_dir):
    probes = C.load_probes(faces_dir, 3, seed=0, size=32)
    assert len(probes) == 3 and all(p.other is not None and p.other != p.path for p in probes)
    assert probes[0].rgb.shape == (32, 32, 3) and probes[0].native == (40, 40)


def test_the_real_pipeline_leaks_no_byproduct(faces_dir):
    res, _ = B.leak_check(_ctx(faces_dir), 1)
    assert res["findings"] == []
    assert res["reproduction_max_abs_diff"] <= 1  # we searched for the by-product the pipeline computed
    assert "iTXt" in res["png_chunk_types"] and res["record_bytes_max"] < res["byproduct_bytes_8bit"] * 10


# -- known plaintext ----------------------------------------------------------------------------

def _random_net(seed=0):
    torch.manual_seed(seed)
    net = build("proface-s")
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.01)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def test_fit_secret_map_reproduces_the_known_pair():
    net = _random_net()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    k = torch.randint(0, 2, (1, 1, 16, 16), generator=g).float() * 2 - 1
    with torch.no_grad():
        y_hat, _ = net.protect(x, y, k)
    relaxed, losses = KP.fit_secret_map(net, y_hat, x, steps=15)
    assert relaxed.shape == (1, 1, 16, 16) and relaxed.abs().max() < 1
    assert losses[-1] < losses[0]


# -- the suite ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (["--limit", "0"], "--limit"),
    (["--only", "bogus"], "invalid choice"),
    (["--faces", "/no/such/folder"], "is not a folder"),
    (["--keyless-seconds", "-3"], "--keyless-seconds"),
    (["--threads", "0"], "--threads"),
    (["--limit", "many"], "invalid int"),
])
def test_the_suite_refuses_bad_arguments_with_one_line(argv, fragment, capsys, faces_dir):
    if "--faces" not in argv:
        argv = [*argv, "--faces", str(faces_dir)]
    code = suite.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("faceveil attack: error: ") and fragment in err[0]


def test_check_args_raises_usage_errors(faces_dir):
    p = suite._Parser()
    suite.add_attack_arguments(p)
    with pytest.raises(UsageError, match="--json-out"):
        suite.check_args(p.parse_args(["--faces", str(faces_dir), "--json-out", str(faces_dir)]))
    suite.check_args(p.parse_args(["--faces", str(faces_dir)]))  # fine


def test_quick_suite_runs_writes_json_and_renders(faces_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a quick run must not touch docs/
    out = tmp_path / "sec.json"
    code = suite.main(["--quick", "--no-identity", "-q", "--faces", str(faces_dir), "--json-out", str(out),
                       "--only", "kdf", "wrong_keys"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert list(doc["attacks"]) == ["kdf", "wrong_keys"]
    assert doc["runs"][-1]["complete"] and doc["runs"][-1]["attacks"] == ["kdf", "wrong_keys"]
    for r in doc["attacks"].values():
        assert r["verdict"]["status"] == "ok", r["verdict"]
        assert r["meta"]["quick"] and r["meta"]["command"].startswith("faceveil attack ")
        assert "--quick" in r["meta"]["command"].split()
    wk = doc["attacks"]["wrong_keys"]
    assert wk["random"]["n"] == 8 and wk["one_bit"]["n"] == 8 and wk["random"]["verifier_false_accepts"] == 0
    assert wk["right_key"]["vs_original"]["psnr"] > wk["random"]["vs_original"]["psnr"] + 5
    assert not (tmp_path / "docs").exists()
    md = suite.render(doc, out)
    assert "## 2. Wrong keys" in md and "quick run" in md and "FINDING" not in md
    assert "| attack | verdict | result |" in capsys.readouterr().out


def test_every_attack_is_registered_with_run_and_markdown():
    assert list(ATTACKS) == ["kdf", "wrong_keys", "spoofing", "byproduct", "keyless", "known_plaintext", "reident"]
    for m in ATTACKS.values():
        assert callable(m.run) and callable(m.markdown) and m.TITLE


@pytest.mark.slow
def test_quick_suite_all_attacks(faces_dir, tmp_path):
    out = tmp_path / "sec.json"
    assert suite.main(["--quick", "--no-identity", "-q", "--faces", str(faces_dir), "--json-out", str(out),
                       "--only", "spoofing", "byproduct", "known_plaintext", "reident"]) == 0
    doc = json.loads(out.read_text())
    assert all(r["verdict"]["status"] == "ok" for r in doc["attacks"].values())
    suite.render(doc, out)
