"""`faceveil.anonymize` and `faceveil anonymize`: the irreversible veil on whole photos."""

from __future__ import annotations

import json

import numpy as np
import pytest

import faceveil
from faceveil.errors import UsageError

from .conftest import GROUP_FACES, GROUP_JPG, PW_ENV, read_rgb


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return read_rgb(GROUP_JPG)


def _outside_crops(shape, faces) -> np.ndarray:
    mask = np.ones(shape[:2], bool)
    for f in faces:
        x0, y0, x1, y1 = f.crop.as_list()
        mask[y0:y1, x0:x1] = False
    return mask


@pytest.mark.parametrize("veil", sorted(faceveil.VEILS))
def test_every_veil_hides_every_face_and_nothing_else(veil, original):
    res = faceveil.anonymize(GROUP_JPG, veil=veil, seed=0)
    assert len(res.faces) == GROUP_FACES and all(f.veil == veil for f in res.faces)
    outside = _outside_crops(original.shape, res.faces)
    assert np.array_equal(res.image[outside], original[outside])
    for f in res.faces:
        x0, y0, x1, y1 = (int(round(v)) for v in f.box)
        a, b = res.image[y0:y1, x0:x1].astype(float), original[y0:y1, x0:x1].astype(float)
        assert 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2)) < 30, (veil, f.index)


def test_seed_makes_cartoon_reproducible_and_no_seed_varies():
    a = faceveil.anonymize(GROUP_JPG, veil="cartoon", seed=11)
    b = faceveil.anonymize(GROUP_JPG, veil="cartoon", seed=11)
    assert np.array_equal(a.image, b.image) and [f.params for f in a.faces] == [f.params for f in b.faces]
    draws = {tuple(f.params["sticker"] for f in faceveil.anonymize(GROUP_JPG, veil="cartoon").faces)
             for _ in range(3)}
    assert len(draws) > 1  # 240^4 combinations: three equal draws would be a broken generator


def test_cartoon_follows_each_face():
    res = faceveil.anonymize(GROUP_JPG, veil="cartoon", seed=0)
    for f in res.faces:  # placed from the landmarks, not the crop's default centre
        assert f.params != {**f.params, **{"cx": 0.5, "cy": 0.52, "scale": 0.74, "angle": 0.0}}


def test_keep_faces_and_refusals(original):
    res = faceveil.anonymize(GROUP_JPG, veil="pixelate", keep_faces=[0])
    assert len(res.faces) == GROUP_FACES - 1 and len(res.kept) == 1
    x0, y0, x1, y1 = res.kept[0].crop.as_list()
    assert np.array_equal(res.image[y0:y1, x0:x1], original[y0:y1, x0:x1])
    prot = faceveil.protect(GROUP_JPG, "pw", boxes=[(200, 140, 330, 280)])
    with pytest.raises(UsageError, match="protected"):
        faceveil.anonymize(prot.to_bytes())
    with pytest.raises(UsageError, match="seed"):
        faceveil.anonymize(GROUP_JPG, seed="x")


def test_cli_anonymize(cli, tmp_path, original):
    out = tmp_path / "anon.jpg"
    r = cli("anonymize", GROUP_JPG, "-o", out, "--veil", "cartoon", "--seed", "5", "--json")
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["files"][0]["faces"] == GROUP_FACES and out.exists()
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (original.shape[1], original.shape[0])
        assert "faceveil" not in (getattr(im, "text", None) or {})
    # the same seed gives the same picture; the default name sits beside the input
    folder = tmp_path / "in"
    folder.mkdir()
    src = folder / "g.jpg"
    src.write_bytes(GROUP_JPG.read_bytes())
    assert cli("anonymize", src, "--seed", "5", "--veil", "cartoon").code == 0
    assert (folder / "g.anonymized.jpg").exists()
    assert cli("anonymize", src, "--seed", "5", "--veil", "cartoon").code != 0  # exists: refused
    cli("anonymize", src, "--veil", "nope").assert_one_error_line("nope")
    cli("anonymize", src, "--password-env", PW_ENV).assert_one_error_line()  # no password option here


def test_protect_warns_when_the_veil_is_new_to_the_model(caplog, original):
    import logging

    crop = np.ascontiguousarray(original[120:300, 180:360])
    with caplog.at_level(logging.WARNING, logger="faceveil"):
        faceveil.protect(crop, "pw", veil="blur", boxes=[(30, 20, 140, 150)])
    assert "was not trained with" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="faceveil"):
        faceveil.protect(crop, "pw", veil="cartoon", boxes=[(30, 20, 140, 150)], seed=2)
    assert "was not trained with" not in caplog.text  # the default was trained with cartoon
    # the format-1 model was trained with the filters only (and does not scramble: it warns so too)
    with caplog.at_level(logging.WARNING, logger="faceveil"):
        res = faceveil.protect(crop, "pw", veil="cartoon", boxes=[(30, 20, 140, 150)], seed=2,
                               model="proface-s-randwr")
    assert "was not trained with the 'cartoon' veil" in caplog.text
    assert "does not scramble" in caplog.text and res.record.format_version == 1
    back = faceveil.recover(res.to_bytes(), "pw")
    assert back.verified and res.faces[0].params["sticker"] == faceveil.protect(
        crop, "pw", veil="cartoon", boxes=[(30, 20, 140, 150)], seed=2).faces[0].params["sticker"]
