"""The YuNet detector on real pixels: the four faces of the sample photo, none on a face-free
region, small and whole-frame faces, EXIF-rotated files, tiling without duplicates, determinism,
no mutation of the input, and clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceveil.detect import LANDMARK_NAMES, Face, YuNetDetector, get_detector
from faceveil.detect.yunet import PASS_RATIO, _tile_starts
from faceveil.errors import ImageError, ShapeError, UsageError
from faceveil.io.image import read_image, read_image_bytes

GROUP = Path(__file__).resolve().parents[2] / "examples" / "group.jpg"  # 1280×640, 4 faces
# The four faces of group.jpg (x0, y0, x1, y1), checked by eye; raster order.
GROUP_BOXES = [(215, 151, 315, 267), (631, 164, 674, 217), (946, 192, 1110, 388), (655, 408, 715, 481)]


@pytest.fixture(scope="module")
def group() -> np.ndarray:
    return read_image(GROUP).rgb


@pytest.fixture(scope="module")
def det() -> YuNetDetector:
    return get_detector()


def iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match(faces: list[Face], boxes, shift=(0, 0), scale=1.0, min_iou=0.7) -> None:
    """Each expected box (mapped by ``scale`` then ``shift``) matches exactly one detected face."""
    assert len(faces) == len(boxes), [f.box for f in faces]
    for b in boxes:
        want = [v * scale + shift[i % 2] for i, v in enumerate(b)]
        hits = [f for f in faces if iou(f.box, want) >= min_iou]
        assert len(hits) == 1, (want, [f.box for f in faces])


def test_the_four_faces_of_the_sample_photo(det, group):
    faces = det.detect(group)
    match(faces, GROUP_BOXES, min_iou=0.85)
    keys = [(f.box[1], f.box[0]) for f in faces]
    assert keys == sorted(keys)  # raster order of the top-left corners
    for f in faces:
        assert 0.6 <= f.score <= 1.0
        assert f.landmarks.shape == (len(LANDMARK_NAMES), 2)
        x0, y0, x1, y1 = f.box
        assert ((f.landmarks[:, 0] > x0) & (f.landmarks[:, 0] < x1)).all()
        assert ((f.landmarks[:, 1] > y0) & (f.landmarks[:, 1] < y1)).all()
        # the subject's right eye is on the image-left side, eyes above the mouth corners
        assert f.landmarks[0, 0] < f.landmarks[1, 0]
        assert f.landmarks[:2, 1].max() < f.landmarks[3:, 1].min()


def test_deterministic_and_input_untouched(det, group):
    before = group.copy()
    a, b = det.detect(group), det.detect(group)
    assert np.array_equal(group, before)
    assert [f.box for f in a] == [f.box for f in b]
    assert all(np.array_equal(x.landmarks, y.landmarks) for x, y in zip(a, b))


def test_no_face_gives_an_empty_list(det, group):
    assert det.detect(np.ascontiguousarray(group[0:140, 0:200])) == []
    assert det.detect(np.full((480, 640, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert det.detect(noise) == []


def test_a_small_face_is_found(det, group):
    """The 100×116 face shrunk to ~28 px on a plain 400×300 background."""
    x0, y0, x1, y1 = 190, 120, 340, 300
    crop = Image.fromarray(group[y0:y1, x0:x1]).resize((36, 43), Image.LANCZOS)
    canvas = np.full((300, 400, 3), 200, np.uint8)
    canvas[130:173, 180:216] = np.asarray(crop)
    faces = det.detect(canvas)
    assert len(faces) == 1
    f = faces[0]
    assert 180 <= f.center[0] <= 216 and 130 <= f.center[1] <= 173
    assert 20 <= max(f.width, f.height) <= 40


def test_a_face_filling_the_frame_is_found(det, group):
    x0, y0, x1, y1 = 946, 192, 1110, 388
    tight = np.ascontiguousarray(group[y0 - 10:y1 + 10, x0 - 10:x1 + 10])
    big = np.asarray(Image.fromarray(tight).resize((tight.shape[1] * 4, tight.shape[0] * 4), Image.BICUBIC))
    faces = det.detect(np.ascontiguousarray(big))
    assert len(faces) == 1
    assert max(faces[0].width, faces[0].height) > 0.6 * big.shape[0]


def test_a_large_photo_is_tiled_without_duplicates(det, group):
    """group.jpg pasted into a 2200×900 canvas: the native pass runs on three overlapping windows;
    every face is found once, at the shifted place."""
    canvas = np.full((900, 2200, 3), 90, np.uint8)
    ox, oy = 430, 170  # puts the right-hand face across the first window's edge (x=960)
    canvas[oy:oy + 640, ox:ox + 1280] = group
    assert len(_tile_starts(2200, det.tile, det.overlap)) > 1
    match(det.detect(canvas), GROUP_BOXES, shift=(ox, oy), min_iou=0.8)


def test_exif_rotated_file_is_detected_upright(det, group):
    """The sample stored rotated with an EXIF orientation of 6 (display = rotate 90° clockwise):
    io turns it upright and the detector finds the same faces at the same places."""
    stored = Image.fromarray(group).transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif.tobytes())
    loaded = read_image_bytes(buf.getvalue(), name="rotated.png")
    assert loaded.rgb.shape == group.shape
    match(det.detect(loaded.rgb), GROUP_BOXES, min_iou=0.85)


def test_scales_pyramid():
    d = YuNetDetector()
    assert d.scales(640, 480) == [1.0]
    s = d.scales(6000, 4000)
    assert s[0] == 1.0 and abs(max(6000, 4000) * s[-1] - d.whole_side) < 1e-6
    assert all(a / b <= PASS_RATIO + 1e-9 for a, b in zip(s, s[1:]))
    assert YuNetDetector(min_size=12).scales(640, 480)[0] == 2.0  # upscaled fine pass


@pytest.mark.parametrize("length", [1, 500, 960, 961, 2000, 5000, 12345])
def test_tile_starts_cover_with_overlap(length):
    tile, overlap = 960, 192
    starts = _tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(tile, length) + starts[-1] >= length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_get_detector_is_cached_and_validates():
    assert get_detector() is get_detector("yunet")
    assert get_detector(threshold=0.7) is not get_detector()
    with pytest.raises(UsageError, match="unknown face detector"):
        get_detector("nope")
    with pytest.raises(UsageError):
        get_detector(threshold=[0.5])


@pytest.mark.parametrize("kw", [dict(threshold=1.5), dict(min_size=2), dict(max_upscale=8),
                                dict(nms_iou=0.0), dict(whole_side=32), dict(overlap=600)])
def test_bad_options(kw):
    with pytest.raises(UsageError):
        YuNetDetector(**kw)


@pytest.mark.parametrize("bad, err", [
    (np.zeros((50, 50, 3), np.float32), ImageError),
    (np.zeros((50, 50), np.uint8), ShapeError),
    (np.zeros((50, 50, 4), np.uint8), ShapeError),
    ([[0]], ImageError),
])
def test_bad_images(det, bad, err):
    with pytest.raises(err):
        det.detect(bad)


def test_nms_drops_overlapping_and_contained_boxes():
    from faceveil.detect.yunet import _nms

    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [10, 10, 60, 60], [200, 0, 300, 100],
                      [190, 50, 260, 150]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.75])
    # box 2 (best) is inside box 0, but NMS keeps the better score and drops the container only
    # by IoU; box 1 overlaps box 0 (IoU 0.82); box 3 overlaps box 4 by IoU 0.21 and 30 % of its area
    assert _nms(boxes, scores, 0.4) == [2, 0, 4, 3]
    assert _nms(boxes[[0, 2]], np.array([0.9, 0.6]), 0.4) == [0]  # the contained, weaker box goes
