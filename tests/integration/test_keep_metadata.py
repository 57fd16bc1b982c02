"""``--keep-metadata`` (``keep_metadata=True``): outputs carry the input's EXIF without the GPS IFD,
the thumbnail and the maker notes, with Orientation 1 (the pixels are turned already); without it
they carry no EXIF at all. protect -> recover still round-trips with the flag."""

from __future__ import annotations

import importlib.util
import io
import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

import faceveil
from faceveil.io.image import exif_for_output, read_image

from .conftest import PASSWORD, PW_ENV, ROOT, crop_of, digest, listing, psnr, run_cli

_spec = importlib.util.spec_from_file_location("hostile_corpus", ROOT / "tools" / "hostile_corpus.py")
hc = sys.modules.get("hostile_corpus") or importlib.util.module_from_spec(_spec)
if "hostile_corpus" not in sys.modules:
    sys.modules["hostile_corpus"] = hc
    _spec.loader.exec_module(hc)

GPS, EXIF_IFD, IFD1 = ExifTags.IFD.GPSInfo, ExifTags.IFD.Exif, ExifTags.IFD.IFD1
MAKE, MODEL, DATETIME, ORIENTATION = 0x010F, 0x0110, 0x0132, 0x0112
DATETIME_ORIGINAL, MAKER_NOTE, PIXEL_X, PIXEL_Y = 0x9003, 0x927C, 0xA002, 0xA003
H, W = 48, 64  # stored; orientation 6 shows it 48 wide and 64 high
FACE = [16, 24, 32, 40]  # in display coordinates; small, so the network runs fast
THUMBNAIL = b"\xff\xd8THUMBNAIL-OF-THE-UNVEILED-FACES" + bytes(range(200)) + b"\xff\xd9"
RECOVERY_FLOOR_DB = 20.0  # the format-2 default recovers real faces at 23.9-28.2 dB (README)


def exif_with_everything() -> bytes:
    """Camera tags, orientation 6, a GPS position, a maker note, PixelX/YDimension and an IFD1
    thumbnail (Pillow does not write IFD1: it is appended by hand to the TIFF structure)."""
    e = Image.Exif()
    e[MAKE], e[MODEL], e[DATETIME], e[ORIENTATION] = "HostileCam", "Model X", "2024:05:06 07:08:09", 6
    e[GPS] = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 36.0)}
    e[EXIF_IFD] = {DATETIME_ORIGINAL: "2024:05:06 07:08:09", MAKER_NOTE: b"SERIAL-123456 FACES-AT-...",
                   PIXEL_X: W, PIXEL_Y: H}
    raw = bytearray(e.tobytes()[6:])  # the TIFF structure, big-endian ("MM")
    assert raw[:2] == b"MM"
    ifd0 = struct.unpack(">I", raw[4:8])[0]
    n = struct.unpack(">H", raw[ifd0:ifd0 + 2])[0]
    next_at = ifd0 + 2 + 12 * n
    ifd1 = len(raw)
    raw[next_at:next_at + 4] = struct.pack(">I", ifd1)
    thumb_at = ifd1 + 2 + 2 * 12 + 4
    raw += struct.pack(">H", 2)
    raw += struct.pack(">HHII", 0x0201, 4, 1, thumb_at) + struct.pack(">HHII", 0x0202, 4, 1, len(THUMBNAIL))
    raw += struct.pack(">I", 0) + THUMBNAIL
    return b"Exif\x00\x00" + bytes(raw)


@pytest.fixture(scope="module")
def photo_jpg(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("meta") / "camera.jpg"
    Image.fromarray(hc.photo(H, W, 5)).save(p, quality=95, exif=exif_with_everything())
    with Image.open(p) as im:  # the fixture has what the tests say is dropped
        ex = im.getexif()
        assert ex.get_ifd(GPS) and ex.get_ifd(IFD1) and MAKER_NOTE in ex.get_ifd(EXIF_IFD)
    return p


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    import faceveil.api

    monkeypatch.setattr(faceveil.api, "DEFAULT_KDF", dict(hc.KDF))


def exif_of(path: Path) -> Image.Exif:
    with Image.open(path) as im:
        im.load()
        return im.getexif()


def assert_kept(path: Path, *, sub_ifd: bool = True) -> None:
    ex = exif_of(path)
    assert ex.get(MAKE) == "HostileCam" and ex.get(MODEL) == "Model X", dict(ex)
    assert ex.get(DATETIME) == "2024:05:06 07:08:09"
    assert ex.get(ORIENTATION) == 1
    assert GPS not in ex and not ex.get_ifd(GPS)
    assert not ex.get_ifd(IFD1)
    if sub_ifd:
        sub = ex.get_ifd(EXIF_IFD)
        assert sub.get(DATETIME_ORIGINAL) == "2024:05:06 07:08:09"
        assert MAKER_NOTE not in sub
        assert (sub.get(PIXEL_X), sub.get(PIXEL_Y)) == (H, W)  # the turned size
    data = path.read_bytes()
    assert THUMBNAIL[2:30] not in data and b"SERIAL-123456" not in data


def assert_no_exif(path: Path) -> None:
    ex = exif_of(path)
    assert len(ex) == 0, dict(ex)
    assert b"HostileCam" not in path.read_bytes()


def test_outputs_carry_no_exif_by_default(photo_jpg, tmp_path):
    res = run_cli("protect", photo_jpg, "-o", tmp_path / "v.png", "--password-env", PW_ENV, "--box",
                  ",".join(map(str, FACE)))
    assert res.code == 0, res
    assert_no_exif(tmp_path / "v.png")
    assert read_image(tmp_path / "v.png").rgb.shape == (W, H, 3)  # orientation baked in
    res = run_cli("anonymize", photo_jpg, "-o", tmp_path / "a.jpg", "--box", ",".join(map(str, FACE)))
    assert res.code == 0, res
    assert_no_exif(tmp_path / "a.jpg")
    res = run_cli("recover", tmp_path / "v.png", "-o", tmp_path / "r.jpg", "--password-env", PW_ENV)
    assert res.code == 0, res
    assert_no_exif(tmp_path / "r.jpg")


def test_keep_metadata_round_trip(photo_jpg, tmp_path):
    """protect --keep-metadata -> recover --keep-metadata: tags kept, GPS/thumbnail/maker note gone,
    Orientation 1, and the face still comes back."""
    before = digest(photo_jpg)
    res = run_cli("protect", photo_jpg, "-o", tmp_path / "v.png", "--password-env", PW_ENV, "--box",
                  ",".join(map(str, FACE)), "--keep-metadata", "--json")
    assert res.code == 0, res
    assert digest(photo_jpg) == before
    veiled = tmp_path / "v.png"
    assert_kept(veiled)
    record = faceveil.inspect(veiled)
    assert record["image"] == {"width": H, "height": W}
    # read back: the eXIf chunk's Orientation 1 turns nothing, so the record's size still matches
    assert read_image(veiled).rgb.shape == (W, H, 3)

    res = run_cli("recover", veiled, "-o", tmp_path / "r.png", "--password-env", PW_ENV, "--keep-metadata")
    assert res.code == 0, res
    assert_kept(tmp_path / "r.png")
    original = read_image(photo_jpg).rgb
    back = read_image(tmp_path / "r.png").rgb
    crop = record["faces"][0]["crop"]
    assert psnr(crop_of(back, crop), crop_of(original, crop)) >= RECOVERY_FLOOR_DB
    outside = np.ones(original.shape[:2], bool)
    outside[crop[1]:crop[3], crop[0]:crop[2]] = False
    assert np.array_equal(back[outside], original[outside])

    # recover without the flag drops what the protected PNG carries
    res = run_cli("recover", veiled, "-o", tmp_path / "plain.png", "--password-env", PW_ENV)
    assert res.code == 0, res
    assert_no_exif(tmp_path / "plain.png")


def test_keep_metadata_in_every_output_format(photo_jpg, tmp_path, caplog):
    veiled = faceveil.protect(photo_jpg, PASSWORD, boxes=[FACE], keep_metadata=True)
    veiled.save(tmp_path / "v.png")
    back = faceveil.recover(tmp_path / "v.png", PASSWORD, keep_metadata=True)
    for suffix in ("png", "jpg", "webp"):
        assert_kept(back.save(tmp_path / f"r.{suffix}"))
    with caplog.at_level(logging.WARNING, logger="faceveil"):
        assert_kept(back.save(tmp_path / "r.tif"), sub_ifd=False)  # libtiff writes IFD0 tags only
        assert "sub-IFD" in caplog.text
        caplog.clear()
        bmp = back.save(tmp_path / "r.bmp")
        assert "BMP" in caplog.text
    assert b"HostileCam" not in bmp.read_bytes()
    # in memory too
    anon = faceveil.anonymize(photo_jpg, boxes=[FACE], keep_metadata=True)
    buf = io.BytesIO(anon.to_bytes("JPEG"))
    p = tmp_path / "anon.jpg"
    p.write_bytes(buf.getvalue())
    assert_kept(p)
    assert faceveil.anonymize(photo_jpg, boxes=[FACE]).exif is None


def test_batch_folder_keep_metadata(photo_jpg, tmp_path):
    src = tmp_path / "album"
    (src / "trip").mkdir(parents=True)
    for name in ("a.jpg", "trip/b.jpg"):
        (src / name).write_bytes(photo_jpg.read_bytes())
    res = run_cli("anonymize", src, "--out-dir", tmp_path / "out", "--keep-metadata", "--box",
                  ",".join(map(str, FACE)))
    assert res.code == 0, res
    assert listing(tmp_path / "out") == ["a.anonymized.jpg", "trip/b.anonymized.jpg"]
    for name in listing(tmp_path / "out"):
        assert_kept(tmp_path / "out" / name)


@pytest.mark.parametrize("command", ["protect", "anonymize", "recover"])
def test_help_lists_keep_metadata(command):
    res = run_cli(command, "--help")
    assert res.code == 0 and "--keep-metadata" in res.out


# -- exif_for_output on its own -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow: "Corrupt EXIF data"
def test_exif_for_output_edge_cases(caplog):
    assert exif_for_output(None, width=4, height=4) is None
    assert exif_for_output(b"", width=4, height=4) is None
    with caplog.at_level(logging.WARNING, logger="faceveil"):
        assert exif_for_output(b"Exif\x00\x00garbage", width=4, height=4, name="x.jpg") is None
        assert "x.jpg" in caplog.text
        lying = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x40" + b"\xff" * 40  # 64 entries, 40 bytes
        kept = exif_for_output(lying, width=4, height=4, name="y.jpg")  # never raises
    if kept is not None:
        out = Image.Exif()
        out.load(kept)
        assert out.get(ORIENTATION) == 1 and GPS not in out
    # orientation is set even when the input had none; PixelX/Y only where present
    e = Image.Exif()
    e[MAKE] = "Cam"
    out = Image.Exif()
    out.load(exif_for_output(e.tobytes(), width=4, height=4))
    assert out.get(ORIENTATION) == 1 and out.get(MAKE) == "Cam" and not out.get_ifd(EXIF_IFD)


def test_tiff_structure_tags_are_not_carried(tmp_path):
    """A TIFF's EXIF is its own IFD0: strip offsets, compression, sizes must not travel."""
    p = tmp_path / "in.tif"
    e = Image.Exif()
    e[MAKE], e[ORIENTATION] = "TiffCam", 1
    Image.fromarray(hc.photo(16, 16)).save(p, exif=e.tobytes())
    img = read_image(p)
    out = Image.Exif()
    out.load(exif_for_output(img.info["exif"], width=16, height=16))
    assert out.get(MAKE) == "TiffCam"
    for structural in (0x0100, 0x0101, 0x0103, 0x0111, 0x0117):
        assert structural not in out, hex(structural)


def test_oversized_exif_is_left_out_of_a_jpeg(tmp_path, caplog):
    e = Image.Exif()
    e[0x010E] = "x" * 70_000  # ImageDescription: fine in a PNG, too big for one JPEG APP1 segment
    src = tmp_path / "big.png"
    Image.fromarray(hc.photo(16, 16)).save(src, exif=e.tobytes())
    anon = faceveil.anonymize(src, boxes=[], keep_metadata=True)
    assert anon.exif is not None and len(anon.exif) > 65_533
    with caplog.at_level(logging.WARNING, logger="faceveil"):
        out = anon.save(tmp_path / "out.jpg")
    assert "too large" in caplog.text and len(exif_of(out)) == 0
    assert exif_of(anon.save(tmp_path / "out.png")).get(0x010E) == "x" * 70_000
