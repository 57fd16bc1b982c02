"""``faceveil eval-veils``: the metric functions on cases with known answers, the paper baselines'
parameters, RetinaFace loading, a 4-face run (skipped without the LFW data or weights) and the
report. CPU only; the data tests take a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from faceveil.detect.base import Face
from faceveil.detect.geometry import CropBox
from faceveil.errors import ModelError, ShapeError, UsageError
from faceveil.eval import report as R
from faceveil.eval import veils as V
from faceveil.obfuscate import VEILS, Veil

ROOT = Path(__file__).resolve().parents[2]
FACES = ROOT / V.DEFAULT_FACES
PHOTOS = ROOT / V.DEFAULT_PHOTOS
WEIGHTS = ROOT / ".cache/data/weights"
needs_lfw = pytest.mark.skipif(not FACES.is_dir() or not PHOTOS.is_dir(),
                               reason="LFW evaluation data not extracted (make data)")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these small networks gain nothing from two, and on a busy 2-core machine
    contended threads make them ten times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- pure metric functions ------------------------------------------------------------------------

def test_frechet_distance_known_answers():
    g = np.random.default_rng(0)
    x = g.normal(size=(300, 6)) @ g.normal(size=(6, 6)) + 1.5
    assert V.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # a shift moves only the mean term: |shift|²
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert V.frechet_distance(x, x + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-9)
    # y = 2x: Σy = 4Σx, so the trace term is tr(Σ + 4Σ - 2·2Σ) = tr(Σ), the mean term |μ|²
    expect = float((x.mean(0) ** 2).sum() + np.trace(np.cov(x, rowvar=False)))
    assert V.frechet_distance(x, 2 * x) == pytest.approx(expect, rel=1e-8)
    # symmetric; rank-deficient covariances (fewer samples than dimensions) still work
    y = g.normal(size=(300, 6))
    assert V.frechet_distance(x, y) == pytest.approx(V.frechet_distance(y, x), rel=1e-8)
    few = g.normal(size=(5, 20))
    assert V.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)
    assert V.frechet_distance(torch.from_numpy(x), torch.from_numpy(x + shift)) == pytest.approx(
        float((shift ** 2).sum()), rel=1e-9)
    with pytest.raises(ShapeError):
        V.frechet_distance(x, x[:, :3])


def test_landmark_nme():
    lm = np.array([[40.0, 50], [80, 50], [60, 70], [45, 90], [75, 90]])
    assert V.landmark_nme(lm, lm) == 0.0
    assert V.landmark_nme(lm, lm + [4.0, 0.0]) == pytest.approx(0.1)  # 4 px at an inter-ocular 40 px
    with pytest.raises(ShapeError):
        V.landmark_nme(lm, lm[:3])
    with pytest.raises(ShapeError):
        V.landmark_nme(np.zeros((5, 2)), lm)


def test_masked_ssim_and_face_region():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=g)
    keep = np.ones((64, 64), bool)
    assert torch.allclose(V.masked_ssim(a, a, keep), torch.ones(2, dtype=torch.float64))
    # the whole-map mean equals metrics.ssim
    from faceveil.eval.metrics import ssim

    b = (a + 0.1 * torch.rand(2, 3, 64, 64, generator=g)).clamp(0, 1)
    assert torch.allclose(V.ssim_map(b, a).mean(dim=(-2, -1)), ssim(b, a), atol=1e-12)
    # change only the central ellipse of a crop: outside it (and beyond the 11x11 windows) SSIM is 1
    crop = CropBox(16, 16, 48, 48)
    region = V.face_region(64, 64, [crop])
    assert region[32, 32] and not region[16, 16] and not region[0, 0]
    c = a.clone()
    c[..., torch.from_numpy(region)] = 0.0
    far = ~np.pad(np.ones((42, 42), bool), 11)  # window centres at least 11 px from the crop
    assert torch.allclose(V.masked_ssim(c, a, far), torch.ones(2, dtype=torch.float64))
    assert (V.masked_ssim(c, a, ~region) < 1).all()
    assert torch.isnan(V.masked_ssim(c, a, np.zeros((64, 64), bool))).all()
    with pytest.raises(ShapeError):
        V.masked_ssim(a, a, np.ones((8, 8), bool))


def test_detection_matching_and_rate():
    ref = Face((10, 10, 50, 60), 0.9)
    assert V.matched_face(ref, [Face((12, 11, 52, 58), 0.8)]) is not None
    assert V.matched_face(ref, [Face((60, 60, 90, 90), 0.99)]) is None
    assert V.matched_face(ref, []) is None
    r = V.rate([True, False, None, True])
    assert r == {"rate": pytest.approx(2 / 3), "detected": 2, "n": 3, "left_out": 1}
    assert V.rate([None])["rate"] is None
    faces = [Face((0, 0, 20, 20), 0.99), Face((40, 40, 80, 80), 0.7)]
    assert V.central_face(faces, 120, 120) is faces[1]
    assert V.central_face([], 10, 10) is None


# -- the paper's baselines as parameterised variants ------------------------------------------------

def test_paper_baselines_scale_with_the_crop():
    assert V.opencv_sigma(15) == pytest.approx(2.6)
    assert V.opencv_sigma(25) == pytest.approx(4.1)
    by = {v.label: v for v in V.variants()}
    assert by["pixelate-15"].params_for(256)["block"] == 15
    assert by["pixelate-25"].params_for(256)["block"] == 25
    assert by["pixelate-15"].params_for(128)["block"] == 8
    assert by["pixelate-25"].params_for(128)["block"] == 13
    assert by["blur-25"].params_for(256) == {"kernel": 25, "sigma": 4.1, "region": "ellipse"}
    b = by["blur-15"].params_for(128)
    assert b["kernel"] % 2 == 1 and b["sigma"] == pytest.approx(1.3)
    # variants of registered veils, not new veils; every registered veil is measured
    assert {by[k].veil for k in ("pixelate-15", "pixelate-25")} == {"pixelate"}
    assert {by[k].veil for k in ("blur-15", "blur-25")} == {"blur"}
    assert set(VEILS) <= set(by) and by["original"].veil is None
    assert by["blur"].params_for(128) is None
    assert [v.label for v in V.variants(["blur-25", "original"])] == ["blur-25", "original"]
    with pytest.raises(UsageError):
        V.variants(["no-such-veil"])


def test_veil_crops_applies_variants():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    import random

    y, params = V.veil_crops(x, V.VeilVariant("original", None), None, random.Random(0))
    assert torch.equal(y, x) and params == [{}, {}]
    pix = next(v for v in V.variants() if v.label == "pixelate-25")
    y, params = V.veil_crops(x, pix, None, random.Random(0))
    assert params[0]["block"] == pix.params_for(64)["block"] and not torch.equal(y, x)
    lms = np.tile(np.array([[22.0, 28], [42, 28], [32, 38], [25, 48], [40, 48]]), (2, 1, 1))
    y, params = V.veil_crops(x, V.VeilVariant("cartoon", "cartoon"), lms, random.Random(0))
    assert y.shape == x.shape and {"sticker", "cx", "cy", "scale", "angle"} <= set(params[0])


# -- RetinaFace -------------------------------------------------------------------------------------

def test_retinaface_missing_weights_say_what_to_do(tmp_path):
    from faceveil.eval import retinaface as RF

    with pytest.raises(ModelError, match="--no-retinaface"):
        RF.find_weights(tmp_path / "nothing.pth")


def test_retinaface_priors_match_the_heads():
    from faceveil.eval import retinaface as RF

    net = RF.RetinaFace().eval()
    for h, w in ((128, 128), (250, 250), (100, 77)):
        loc, score, lmk = net(torch.zeros(1, 3, h, w))
        pri = RF.prior_boxes(h, w)
        assert loc.shape == (1, len(pri), 4) and score.shape == (1, len(pri)) and lmk.shape == (1, len(pri), 10)
    boxes, pts = RF.decode(torch.zeros(len(pri), 4), torch.zeros(len(pri), 10), pri)
    assert torch.allclose((boxes[:, :2] + boxes[:, 2:]) / 2, pri[:, :2])
    assert torch.allclose(pts, pri[:, None, :2].expand(-1, 5, -1))
    assert RF.nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30.0]]), np.array([0.9, 0.8, 0.7])) == [0, 2]


@pytest.mark.skipif(not (WEIGHTS / "retinaface_mobilenet0.25_Final.pth").is_file(), reason="no RetinaFace weights")
@needs_lfw
def test_retinaface_loads_and_agrees_with_yunet():
    from faceveil.detect import get_detector
    from faceveil.eval.retinaface import RetinaFaceDetector, load_retinaface

    net, sha = load_retinaface(WEIGHTS / "retinaface_mobilenet0.25_Final.pth")
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(426_608, rel=0.05)
    det = RetinaFaceDetector(WEIGHTS / "retinaface_mobilenet0.25_Final.pth")
    files = sorted(PHOTOS.rglob("*.jpg"))[:3]
    for f in files:
        rgb = V._read_rgb(f)
        rf = V.central_face(det.detect(rgb), 250, 250)
        yu = V.central_face(get_detector("yunet").detect(rgb), 250, 250)
        assert rf is not None and rf.score > 0.9
        assert V.matched_face(yu, [rf], 0.5) is not None
        assert V.landmark_nme(yu.landmarks, rf.landmarks) < 0.2  # same order, same points
    assert det.detect(np.zeros((128, 128, 3), np.uint8)) == []


# -- a 4-face run on LFW ----------------------------------------------------------------------------

def _black(x: torch.Tensor, p: dict) -> torch.Tensor:
    from faceveil.obfuscate.registry import composite

    return composite(x, torch.zeros_like(x), p["region"])


@pytest.fixture
def black_veil(monkeypatch):
    """A test-only veil: a black square over the whole crop (no face left to detect), or a black
    ellipse inscribed in it with ``region="ellipse"``."""
    monkeypatch.setitem(VEILS, "black", Veil("black", _black, lambda size: {"region": "square"},
                                             lambda rng, size: {"region": "square"}, "test"))
    return V.VeilVariant("black", "black")


@needs_lfw
def test_four_faces_known_answers(black_veil):
    files = V.list_faces(FACES, 4, seed=0)
    have_rf = (WEIGHTS / "retinaface_mobilenet0.25_Final.pth").is_file()
    dets = V.Detectors.load(retinaface=have_rf, retinaface_weights=WEIGHTS / "retinaface_mobilenet0.25_Final.pth")
    ident = None
    if (WEIGHTS / "mobilefacenet_068.ckpt").is_file():
        from faceveil.eval.identity import IdentityModel

        ident = IdentityModel(WEIGHTS / "mobilefacenet_068.ckpt")
    res, facts = V.evaluate_crops(files, [V.ORIGINAL, black_veil], dets, ident=ident, threshold=0.4,
                                  reference_files=V.list_faces(FACES, 4, seed=1) if ident else ())
    orig, black = res["original"], res["black"]
    for d in dets.names():
        assert facts["reference_found"][d] == 4
        assert orig["detection"][d]["rate"] == 1.0
        assert orig["landmarks"][d]["nme_mean"] == pytest.approx(0.0, abs=1e-9)
        assert black["detection"][d]["rate"] == 0.0
    assert orig["ssim"] == pytest.approx(1.0) and orig["ssim_outside"] == pytest.approx(1.0)
    assert black["ssim"] < 0.2
    if ident is not None:
        assert orig["id_match"] == 1.0 and orig["id_distance"] == pytest.approx(0.0, abs=1e-6)
        assert orig["fd_mfn"] == pytest.approx(0.0, abs=1e-9)
        assert black["fd_mfn"] > 0 and facts["fd_real_vs_real"] > 0  # (4 faces: far too few to compare the two)
        assert black["id_match"] == 0.0


@needs_lfw
def test_photos_through_anonymize(black_veil):
    files = V.list_faces(PHOTOS, 2, seed=0)
    dets = V.Detectors.load(retinaface=False)
    black_ellipse = V.VeilVariant("black", "black", {"region": "ellipse"})
    res, facts = V.evaluate_photos(files, [V.ORIGINAL, black_ellipse], dets)
    assert res["original"]["detection"]["yunet"]["rate"] == 1.0
    assert res["original"]["ssim"] == pytest.approx(1.0) and res["original"]["faces_veiled"] == 0
    b = res["black"]
    assert b["detection"]["yunet"]["rate"] == 0.0 and b["faces_veiled"] >= 2
    assert 0.9 < b["ssim_background"] < 1.0  # only window centres near the ellipse's rim see the veil
    assert b["ssim"] < b["ssim_background"]


# -- CLI and report ---------------------------------------------------------------------------------

@needs_lfw
def test_cli_writes_json_and_tables(tmp_path, capsys):
    from faceveil.cli import main

    out = tmp_path / "veils.json"
    rc = main(["eval-veils", "--limit", "2", "--veil", "original", "pixelate-25", "--no-identity",
               "--no-retinaface", "--threads", "1", "--json-out", str(out), "-q"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["schema"] == V.SCHEMA and set(res["variants"]) == {"original", "pixelate-25"}
    assert res["variants"]["pixelate-25"]["crops"]["params"][0]["block"] == 13
    text = capsys.readouterr().out
    assert "Pixelization(25x25) = **pixelate-25**" in text and "0.13" in text

    md = tmp_path / "RESULTS.md"
    R.write_results_md([out], md)
    body = md.read_text()
    assert "Veils measured like the pose-consistency paper" in body and "210.82" in body
    assert "BEGIN bench_speed" in body


def test_unknown_variant_is_a_usage_error(capsys):
    from faceveil.cli import main

    assert main(["eval-veils", "--veil", "nope", "--no-photos", "--limit", "1", "-q"]) == 2
    assert "unknown veil variant" in capsys.readouterr().err


def test_report_renders_without_data():
    res = {"schema": V.SCHEMA, "meta": {"command": "x", "match_iou": 0.3, "detectors": {"yunet": {"threshold": 0.6}},
                                        "crops": {"n": 1, "sizes": ["128x128"]}},
           "variants": {"original": {"veil": None, "paper_row": "Original",
                                     "crops": {"detection": {"yunet": {"rate": 1.0}}, "ssim": 1.0, "params": []}}}}
    text = R.veils_markdown(res)
    assert "| Original = **original** | 100 | 100 | 100.0 % |" in text
    assert "DeepPrivacy" in text and "0.8741" in text
