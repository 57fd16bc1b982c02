"""Crop and paste-back geometry as property tests (hypothesis): every crop lies inside the image,
is even-sized and at least MIN_CROP, holds the visible face centre, is the unclipped square when
that fits; extract/paste is the identity; protect-in-order / recover-in-reverse is exact for
overlapping crops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faceveil.detect import (
    DEFAULT_MARGIN,
    MIN_CROP,
    CropBox,
    Face,
    crops_overlap,
    extract,
    face_crop,
    face_square,
    order_faces,
    paste,
)
from faceveil.errors import FaceveilError, ImageError, ShapeError, UsageError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.integers(min_value=1, max_value=3000)
coords = st.floats(min_value=-500, max_value=3500, allow_nan=False, allow_infinity=False)
extents = st.floats(min_value=0.5, max_value=2500, allow_nan=False, allow_infinity=False)
margins = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def boxes(draw):
    x0, y0 = draw(coords), draw(coords)
    return (x0, y0, x0 + draw(extents), y0 + draw(extents))


@SETTINGS
@given(box=boxes(), W=sizes, H=sizes, margin=margins)
def test_face_crop_invariants(box, W, H, margin):
    c = face_crop(box, W, H, margin=margin)
    x0, y0, x1, y1 = box
    vis = (max(x0, 0.0), max(y0, 0.0), min(x1, W), min(y1, H))
    if W < MIN_CROP or H < MIN_CROP or vis[2] <= vis[0] or vis[3] <= vis[1]:
        assert c is None
        return
    assert isinstance(c, CropBox)
    assert c.inside(W, H)
    assert c.width % 2 == 0 and c.height % 2 == 0
    assert c.width >= MIN_CROP and c.height >= MIN_CROP
    # the pixel holding the centre of the visible face is in the crop
    cx, cy = (vis[0] + vis[2]) / 2, (vis[1] + vis[3]) / 2
    assert c.x0 <= min(int(np.floor(cx)), W - 1) < c.x1
    assert c.y0 <= min(int(np.floor(cy)), H - 1) < c.y1
    # when the square fits the image it is taken unchanged
    sq = face_square(box, margin=margin)
    if sq[0] >= 0 and sq[1] >= 0 and sq[2] <= W and sq[3] <= H:
        assert c.as_list() == list(sq)
    else:  # clipped: never larger than the square along either axis, never shifted outwards
        assert c.width <= max(sq[2] - sq[0], MIN_CROP) and c.height <= max(sq[3] - sq[1], MIN_CROP)


@SETTINGS
@given(box=boxes(), margin=margins)
def test_face_square_is_an_even_square_around_the_centre(box, margin):
    sx0, sy0, sx1, sy1 = face_square(box, margin=margin)
    side = sx1 - sx0
    assert side == sy1 - sy0 and side % 2 == 0 and side >= MIN_CROP
    want = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)
    assert abs(side - max(want, MIN_CROP)) <= 1.0 + 1e-9
    assert abs((sx0 + sx1) / 2 - (box[0] + box[2]) / 2) <= 0.5 + 1e-9
    assert abs((sy0 + sy1) / 2 - (box[1] + box[3]) / 2) <= 0.5 + 1e-9


def test_default_margin_gives_1_3_times_the_longer_side():
    assert DEFAULT_MARGIN == 0.15
    c = face_crop((100.0, 100.0, 176.0, 200.0), 1000, 1000)
    assert c.width == c.height == 130
    assert c.as_list() == [73, 85, 203, 215]


def test_face_cut_by_the_border_is_clipped_not_shifted():
    box = (-40.0, 50.0, 60.0, 150.0)
    assert face_square(box) == (-55, 35, 75, 165)
    # x clipped to [0, 75): odd, so the column farther from the visible face centre (x=30) goes
    assert face_crop(box, 300, 300).as_list() == [0, 35, 74, 165]


def test_tiny_image_or_face_outside_gives_none():
    assert face_crop((0, 0, 5, 5), 7, 100) is None
    assert face_crop((200, 200, 300, 300), 100, 100) is None


@SETTINGS
@given(data=st.data(), W=st.integers(8, 80), H=st.integers(8, 80), C=st.sampled_from([None, 1, 3, 4]))
def test_extract_then_paste_is_the_identity(data, W, H, C):
    shape = (H, W) if C is None else (H, W, C)
    img = np.random.default_rng(data.draw(st.integers(0, 2**31))).integers(0, 256, shape, dtype=np.uint8)
    x0 = data.draw(st.integers(0, W - 1))
    y0 = data.draw(st.integers(0, H - 1))
    c = CropBox(x0, y0, data.draw(st.integers(x0 + 1, W)), data.draw(st.integers(y0 + 1, H)))
    before = img.copy()
    patch = extract(img, c)
    assert patch.shape == (c.height, c.width) + shape[2:] and patch.flags["C_CONTIGUOUS"]
    patch[...] = 7  # a copy: the image must not change
    assert np.array_equal(img, before)
    out = paste(img, c, extract(img, c))
    assert np.array_equal(out, img) and out is not img
    # paste writes exactly the crop and nothing else
    out2 = paste(img, c, np.zeros_like(patch))
    mask = np.zeros((H, W), dtype=bool)
    mask[c.y0:c.y1, c.x0:c.x1] = True
    assert np.array_equal(out2[~mask], img[~mask]) and not out2[mask].any()
    assert np.array_equal(img, before)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, 6))
def test_overlapping_crops_undo_exactly_in_reverse_order(seed, n):
    """The pipeline's rule: protect in order, recover in reverse. Model each 'protection' as an
    invertible pixel map of its crop (a keyed add mod 256); reversing the order restores the image."""
    rng = np.random.default_rng(seed)
    W, H = 120, 90
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    faces = []
    for _ in range(n):
        x0, y0 = rng.uniform(-20, W - 10), rng.uniform(-20, H - 10)
        s = rng.uniform(10, 70)
        faces.append(Face(box=(x0, y0, x0 + s * 0.8, y0 + s), score=float(rng.uniform(0.5, 1))))
    crops = [c for c in (face_crop(f, W, H) for f in order_faces(faces)) if c is not None]
    keys = [rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in crops]
    out = img
    for c, k in zip(crops, keys):
        out = paste(out, c, extract(out, c) + k)  # uint8 wraps: invertible
    for c, k in reversed(list(zip(crops, keys))):
        out = paste(out, c, extract(out, c) - k)
    assert np.array_equal(out, img)


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_order_faces_is_raster_order_and_independent_of_input_order(seed):
    rng = np.random.default_rng(seed)
    faces = [Face(box=(float(x), float(y), float(x) + 20, float(y) + 25), score=float(s))
             for x, y, s in zip(rng.integers(0, 50, 8), rng.integers(0, 50, 8), rng.uniform(0, 1, 8))]
    a = order_faces(faces)
    b = order_faces(list(reversed(faces)))
    assert [f.box for f in a] == [f.box for f in b]
    keys = [(f.box[1], f.box[0]) for f in a]
    assert keys == sorted(keys)


def test_crops_overlap():
    a = CropBox(0, 0, 10, 10)
    assert crops_overlap(a, CropBox(9, 9, 20, 20))
    assert not crops_overlap(a, CropBox(10, 0, 20, 10))  # touching edges
    assert crops_overlap(a, a)


@pytest.mark.parametrize("bad", [(0, 0, 0, 5), (0, 0, 5, 0), (3, 0, 2, 5), (0.5, 0, 2, 2), (True, 0, 2, 2)])
def test_cropbox_rejects_bad_coordinates(bad):
    with pytest.raises(UsageError):
        CropBox(*bad)


@pytest.mark.parametrize("bad", [[1, 2, 3], "0,0,8,8", [0, 0, 8.0, 8], None])
def test_cropbox_from_list_rejects_bad_records(bad):
    with pytest.raises(UsageError):
        CropBox.from_list(bad)


def test_cropbox_list_round_trip():
    c = CropBox(1, 2, 11, 22)
    assert CropBox.from_list(c.as_list()) == c


@pytest.mark.parametrize("box", [(0, 0, 0, 1), (float("nan"), 0, 1, 1), (0, 0, float("inf"), 1), "abcd", (1, 2, 3)])
def test_bad_face_boxes(box):
    with pytest.raises(UsageError):
        face_crop(box, 100, 100)


@pytest.mark.parametrize("margin", [-0.1, float("nan"), 11])
def test_bad_margin(margin):
    with pytest.raises(UsageError):
        face_crop((10, 10, 50, 50), 100, 100, margin=margin)


@pytest.mark.parametrize("w,h", [(0, 10), (10, -1), (10.5, 10), (True, 10)])
def test_bad_image_size(w, h):
    with pytest.raises(UsageError):
        face_crop((1, 1, 5, 5), w, h)


def test_extract_paste_errors():
    img = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ShapeError):
        extract(img, CropBox(25, 0, 31, 10))
    with pytest.raises(ShapeError):
        paste(img, CropBox(0, 0, 10, 10), np.zeros((10, 9, 3), np.uint8))
    with pytest.raises(ImageError):
        paste(img, CropBox(0, 0, 10, 10), np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ImageError):
        extract([[1]], CropBox(0, 0, 1, 1))
    with pytest.raises(UsageError):
        extract(img, (0, 0, 1, 1))
    # every error is a FaceveilError (the CLI turns them into one line)
    assert issubclass(ShapeError, FaceveilError) and issubclass(ImageError, FaceveilError)


def test_face_validation():
    with pytest.raises(UsageError):
        Face(box=(0, 0, 1), score=0.5)
    with pytest.raises(UsageError):
        Face(box=(0, 0, 1, 1), score=1.5)
    with pytest.raises(ShapeError):
        Face(box=(0, 0, 1, 1), score=0.5, landmarks=np.zeros((4, 2)))
    lm = np.arange(10.0).reshape(5, 2)
    f = Face(box=(0, 0, 4, 2), score=0.5, landmarks=lm)
    lm[0, 0] = 99  # the face keeps a private, read-only copy
    assert f.landmarks[0, 0] == 0 and not f.landmarks.flags.writeable
    assert (f.width, f.height, f.center) == (4.0, 2.0, (2.0, 1.0))
