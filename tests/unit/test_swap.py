"""The ``swap`` veil: shipped synthetic donors (verified, no single face dominating), exact
reproduction from the stored parameters, landmark placement, a face changed inside and untouched
outside, any crop size, and (with the evaluation data) no identity match to the original.

The generic veil contract (shape, dtype, range, batch independence, no input mutation, strict
parameters, strength) is tested for every registered veil, this one included, in test_veils.py."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from faceveil.errors import VeilError
from faceveil.obfuscate import apply_veil, get_veil
from faceveil.obfuscate import swap as S

ROOT = Path(__file__).resolve().parents[2]
DONORS = ROOT / "src" / "faceveil" / "obfuscate" / "donors"
GROUP_JPG = ROOT / "examples" / "group.jpg"
FACE_CROP = (190, 134, 340, 284)  # the astronaut's face, as in test_veils.py
LFW = ROOT / ".cache" / "data" / "lfw_dev_128"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div(255.0)


@pytest.fixture(scope="module")
def face() -> tuple[torch.Tensor, np.ndarray]:
    """The astronaut's 150×150 face crop and its YuNet landmarks (crop pixels)."""
    from PIL import Image

    from faceveil.detect import get_detector

    with Image.open(GROUP_JPG) as im:
        rgb = np.asarray(im.convert("RGB").crop(FACE_CROP), dtype=np.uint8)
    faces = get_detector("yunet", threshold=0.5).detect(rgb)
    f = max(faces, key=lambda f: f.width)
    return to_tensor(rgb), np.asarray(f.landmarks, np.float64)


def placed(x: torch.Tensor, lm: np.ndarray, donor: int = 0) -> dict:
    h, w = x.shape[-2:]
    return {"donor": donor, **S.placement(lm, w, h)}


# -- the donors -------------------------------------------------------------------------------------

def test_donors_load_and_match_their_manifest():
    donors = S.load_donors()
    manifest = json.loads((DONORS / "donors.json").read_text())
    assert manifest["format"] == S.DONOR_FORMAT and manifest["format_version"] == S.DONOR_FORMAT_VERSION
    assert 16 <= len(donors) == len(manifest["donors"]) <= 24
    size = manifest["size"]
    total = 0
    for d, e in zip(donors, manifest["donors"]):
        data = (DONORS / e["file"]).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == e["sha256"]
        assert d.image.shape == (size, size, 3) and d.image.dtype == np.float32
        assert np.array_equal(d.landmarks, np.asarray(e["landmarks"]))
        # no single source face dominates: ≥ 40 faces, equal weights, ≥ 40 at every mask pixel
        assert e["faces"] >= S.MIN_DONOR_FACES and e["min_faces_per_pixel"] >= S.MIN_DONOR_FACES
        assert e["weight_per_face"] == pytest.approx(1 / e["faces"], abs=1e-6)
        lm = d.landmarks
        assert (lm > 0).all() and (lm < size).all()
        assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # right eye image-left
        assert lm[[0, 1], 1].max() < lm[2, 1] < lm[[3, 4], 1].min()  # eyes, nose, mouth downwards
    assert "UTKFace" in manifest["dataset"]["name"] and "non-commercial" in manifest["dataset"]["license"]
    assert total + (DONORS / "donors.json").stat().st_size < 1_000_000
    # the donors differ from each other (not one average face twenty times)
    imgs = np.stack([d.image for d in donors])
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(len(imgs)) for j in range(i)]
    assert min(diffs) > 0.02


def test_a_damaged_donor_is_refused(tmp_path, monkeypatch):
    for p in DONORS.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    png = tmp_path / "donor-03.png"
    data = bytearray(png.read_bytes())
    data[-20] ^= 1
    png.write_bytes(bytes(data))
    monkeypatch.setattr(S, "_donor_files", lambda: tmp_path)
    S.load_donors.cache_clear()
    try:
        with pytest.raises(VeilError, match="donor-03.png fails its sha256 check"):
            S.load_donors()
        (tmp_path / "donors.json").write_text("{")
        with pytest.raises(VeilError, match="manifest"):
            S.load_donors()
    finally:
        monkeypatch.undo()
        S.load_donors.cache_clear()
    assert len(S.load_donors()) >= 16


# -- reproduction and per-face draws ----------------------------------------------------------------

def test_the_stored_parameters_reproduce_the_veil_exactly(face):
    x, lm = face
    y, full = apply_veil(x, "swap", placed(x, lm, donor=5))
    assert full["donor"] == 5 and set(full) == set(get_veil("swap").defaults(150))
    stored = json.loads(json.dumps(full))  # what the protected file keeps
    y2, full2 = apply_veil(x.clone(), "swap", stored)
    assert full2 == full and torch.equal(y, y2)
    # in a batch, each face is the same as alone
    yb, _ = apply_veil(torch.cat([x, x.flip(-1)]), "swap", stored)
    assert torch.equal(yb[:1], y)


def test_the_donor_is_drawn_per_face_and_seeded():
    v = get_veil("swap")
    n = len(S.load_donors())
    assert [v.identity(random.Random(7)) for _ in range(3)] == [v.identity(random.Random(7))] * 3
    drawn = {v.identity(random.Random(s))["donor"] for s in range(40)}
    assert len(drawn) > n // 2 and drawn <= set(range(n))
    rng = random.Random(0)
    assert len({v.identity(rng)["donor"] for _ in range(20)}) > 1  # fresh per face


def test_different_donors_give_different_faces(face):
    x, lm = face
    outs = [apply_veil(x, "swap", placed(x, lm, donor=d))[0] for d in (0, 7, 12)]
    for i in range(3):
        for j in range(i):
            assert psnr(outs[i], outs[j]) < 30


# -- what changes and what does not ---------------------------------------------------------------

def test_changes_the_inner_face_and_keeps_everything_far_outside(face):
    x, lm = face
    y, _ = apply_veil(x, "swap", placed(x, lm, donor=3))
    eyes, mouth = lm[:2].mean(0), lm[3:].mean(0)
    iod = float(np.hypot(*(lm[1] - lm[0])))
    centre = (eyes + mouth) / 2
    yy, xx = np.mgrid[0:150, 0:150]
    r = np.hypot(xx - centre[0], yy - centre[1]) / iod
    inner, outer = torch.from_numpy(r < 0.6), torch.from_numpy(r > 1.6)
    assert psnr(y[..., inner], x[..., inner]) < 20  # eyes, nose and mouth are the donor's
    assert torch.equal(y[..., outer], x[..., outer])  # hair, background: the target's, bit for bit
    assert torch.equal(y[..., :10, :10], x[..., :10, :10])


def test_follows_the_landmarks(face):
    x, lm = face
    base, _ = apply_veil(x, "swap", placed(x, lm))
    moved, _ = apply_veil(x, "swap", placed(x, lm + [12, 8]))
    changed = lambda y: (y - x).abs().sum(1)[0] > 0.02  # noqa: E731
    cb, cm = (torch.nonzero(changed(y)).float().mean(0) for y in (base, moved))
    assert abs(float(cm[1] - cb[1]) - 12) < 3 and abs(float(cm[0] - cb[0]) - 8) < 3  # (row, col) means
    # a wider mouth on the target gives a wider mouth on the donor (the thin-plate warp follows)
    donor = S.load_donors()[0]
    wide = lm.copy()
    wide[3, 0] -= 6
    wide[4, 0] += 6
    pmap = S.fit_map(wide, donor.landmarks)
    assert np.allclose(pmap(wide).numpy(), donor.landmarks, atol=0.05)
    sim = S.fit_map(wide, donor.landmarks, follow=0.0)
    assert not np.allclose(sim(wide).numpy(), donor.landmarks, atol=1.0)


def test_placement_round_trips_the_landmarks():
    lm = np.array([[70, 80], [130, 80], [100, 105], [78, 130], [122, 130]], float)
    p = S.placement(lm, 200, 180)
    back = np.array([[p[f"x{i}"], p[f"y{i}"]] for i in range(5)]) * [200, 180] - 0.5
    assert np.allclose(back, lm, atol=1e-3)


@pytest.mark.parametrize("shape", [(64, 64), (112, 112), (300, 300), (90, 126), (126, 90), (111, 77)])
def test_any_crop_size_without_landmarks(shape, face):
    x, _ = face
    h, w = shape
    xs = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    y, params = apply_veil(xs, "swap", {"donor": 2})
    assert y.shape == xs.shape and torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    assert params == {**get_veil("swap").defaults(min(h, w)), "donor": 2}
    c = (slice(int(0.4 * h), int(0.7 * h)), slice(int(0.35 * w), int(0.65 * w)))
    assert psnr(y[..., c[0], c[1]], xs[..., c[0], c[1]]) < 25
    assert torch.equal(y[..., :3, :3], xs[..., :3, :3])


@pytest.mark.parametrize("params", [
    {"donor": -1}, {"donor": 10_000}, {"donor": 1.5}, {"donor": "a"}, {"donor": True},
    {"x0": float("nan")}, {"y3": 5.0}, {"x1": 0.333}, {"follow": 2.0}, {"extent": 0.1},
    {"feather": 0.0}, {"region": "square"},
])
def test_rejects_bad_parameters(params, face):
    x, _ = face
    with pytest.raises(VeilError):
        apply_veil(x, "swap", params)


# -- identity ---------------------------------------------------------------------------------------

def test_a_recogniser_no_longer_matches_the_swapped_face():
    """MobileFaceNet (evaluation weights) on 40 LFW dev crops: swapped faces are far from their
    originals (FMR 0.1 % threshold 0.39 on these crops, docs/RESULTS.md). Measured on 200 crops
    (``python tools/swap_identity.py``): 1.5 % matched at the default extent 1.2, mean cosine 0.12;
    the extent-1 mask let 8 % match (mean 0.21), which this test would catch."""
    from faceveil.eval import identity as I

    if not LFW.is_dir():
        pytest.skip("the LFW dev crops are not extracted (make data)")
    try:
        model = I.IdentityModel()
    except Exception as e:  # noqa: BLE001 - weights missing or damaged: nothing to measure with
        pytest.skip(f"MobileFaceNet weights unavailable: {e}")
    from PIL import Image

    from faceveil.eval.harness import list_faces

    xs, ys, lms = [], [], []
    rng = random.Random(0)
    for p in list_faces(LFW, 40, 3):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        lm = I.detect_landmarks(rgb)
        if lm is None:
            continue
        x = to_tensor(rgb)
        y, _ = apply_veil(x, "swap", {**get_veil("swap").identity(rng), **S.placement(lm, 128, 128)})
        xs.append(x)
        ys.append(y)
        lms.append(lm)
    assert len(xs) >= 35
    cos = I.cosine(model.embed(torch.cat(xs), np.stack(lms)), model.embed(torch.cat(ys), np.stack(lms)))
    assert float(cos.mean()) < 0.2 and int((cos >= 0.39).sum()) <= 1, cos
