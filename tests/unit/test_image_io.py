"""faceveil.io.image: modes, EXIF orientation, 16-bit, exact round trips, atomic writes, refusals."""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import faceveil.io.image as image_mod
from faceveil.errors import ImageError, ShapeError, UsageError
from faceveil.io import (
    is_lossless,
    output_format_for,
    read_image,
    read_image_bytes,
    same_file,
    set_pillow_pixel_limit,
    write_image,
)


# ------------------------------------------------------------------------------------ helpers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand (for what Pillow will not write: 16-bit RGB, lying headers).
    ``rows`` is the unfiltered pixel data without filter bytes; None writes no IDAT."""
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth,
                                                             color_type, 0, 0, 0))
    if rows is not None:
        stride = len(rows) // height
        filtered = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(height))
        out += _chunk(b"IDAT", zlib.compress(filtered))
    return out + _chunk(b"IEND", b"")


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(tmp_path: Path, im: Image.Image, name: str, **kw) -> Path:
    p = tmp_path / name
    im.save(p, **kw)
    return p


def check_layout(loaded, h: int, w: int, has_alpha: bool) -> None:
    assert loaded.rgb.shape == (h, w, 3) and loaded.rgb.dtype == np.uint8
    assert loaded.rgb.flags.c_contiguous
    if has_alpha:
        assert loaded.alpha is not None and loaded.alpha.shape == (h, w)
        assert loaded.alpha.dtype == np.uint8 and loaded.alpha.flags.c_contiguous
    else:
        assert loaded.alpha is None


# ------------------------------------------------------------------------------------ modes


def test_rgb_png_exact(tmp_path):
    rgb = random_rgb(7, 9)
    p = save(tmp_path, Image.fromarray(rgb), "a.png")
    loaded = read_image(p)
    check_layout(loaded, 7, 9, False)
    assert np.array_equal(loaded.rgb, rgb)
    assert loaded.format == "PNG" and loaded.path == p
    assert loaded.info["mode"] == "RGB" and loaded.info["bit_depth"] == 8
    assert loaded.width == 9 and loaded.height == 7


def test_rgba_png_exact(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    loaded = read_image(save(tmp_path, Image.fromarray(rgba), "a.png"))
    check_layout(loaded, 5, 6, True)
    assert np.array_equal(loaded.rgb, rgba[..., :3]) and np.array_equal(loaded.alpha, rgba[..., 3])


def test_grey_replicated(tmp_path):
    g = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    loaded = read_image(save(tmp_path, Image.fromarray(g), "g.png"))
    check_layout(loaded, 4, 5, False)
    assert all(np.array_equal(loaded.rgb[..., c], g) for c in range(3))


def test_grey_alpha(tmp_path):
    la = Image.merge("LA", [Image.new("L", (3, 2), 100), Image.new("L", (3, 2), 7)])
    loaded = read_image(save(tmp_path, la, "la.png"))
    check_layout(loaded, 2, 3, True)
    assert (loaded.rgb == 100).all() and (loaded.alpha == 7).all()


def test_palette_without_and_with_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    pal = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    im = Image.fromarray(idx, mode="L").convert("P")
    im.putpalette(pal)
    im.frombytes(idx.tobytes())
    plain = read_image(save(tmp_path, im, "p.png"))
    check_layout(plain, 2, 2, False)
    assert plain.rgb[0, 0].tolist() == [255, 0, 0] and plain.rgb[1, 0].tolist() == [0, 0, 255]
    transparent = read_image(save(tmp_path, im, "pt.png", transparency=1))
    check_layout(transparent, 2, 2, True)
    assert transparent.alpha.tolist() == [[255, 0], [255, 0]]


def test_bilevel(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    loaded = read_image(save(tmp_path, Image.fromarray(bits), "b.png"))
    check_layout(loaded, 2, 3, False)
    assert loaded.rgb[..., 0].tolist() == [[0, 255, 255], [255, 0, 0]]


def test_16bit_grey_png_rounds_and_warns(tmp_path, caplog):
    v = np.array([[0, 257, 65535], [128, 32896, 65534]], dtype=np.uint16)
    p = save(tmp_path, Image.fromarray(v), "g16.png")
    with caplog.at_level(logging.WARNING, logger="faceveil.io.image"):
        loaded = read_image(p)
    check_layout(loaded, 2, 3, False)
    assert loaded.rgb[..., 1].tolist() == [[0, 1, 255], [0, 128, 255]]
    assert loaded.info["bit_depth"] == 16
    assert "16-bit" in caplog.text


def test_16bit_rgb_png_noted(tmp_path, caplog):
    px = np.array([[[0xFFFF, 0x8000, 0x0000], [0x1234, 0xABCD, 0x00FF]]], dtype=">u2")
    p = tmp_path / "rgb16.png"
    p.write_bytes(raw_png(2, 1, 16, 2, px.tobytes()))
    with caplog.at_level(logging.WARNING, logger="faceveil.io.image"):
        loaded = read_image(p)
    check_layout(loaded, 1, 2, False)
    assert loaded.info["bit_depth"] == 16 and "16-bit" in caplog.text
    assert loaded.rgb[0, 0].tolist()[0] == 255 and loaded.rgb[0, 0].tolist()[2] == 0


def test_32bit_int_tiff(tmp_path):
    v = np.array([[0, 65535], [-5, 70000]], dtype=np.int32)
    loaded = read_image(save(tmp_path, Image.fromarray(v), "i.tif"))
    assert loaded.rgb[..., 0].tolist() == [[0, 255], [0, 255]]


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("TIFF", "tif")])
def test_cmyk_converted(tmp_path, fmt, suffix, caplog):
    im = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red ink-wise
    with caplog.at_level(logging.WARNING, logger="faceveil.io.image"):
        loaded = read_image(save(tmp_path, im, f"c.{suffix}", format=fmt))
    check_layout(loaded, 3, 4, False)
    r, g, b = loaded.rgb[1, 1].tolist()
    assert r > 200 and g < 60 and b < 60
    assert "CMYK" in caplog.text  # no profile: naive conversion is reported


def test_ycbcr_tiff(tmp_path):
    im = Image.new("RGB", (4, 4), (10, 200, 30)).convert("YCbCr")
    loaded = read_image(save(tmp_path, im, "y.tif"))
    check_layout(loaded, 4, 4, False)
    assert np.abs(loaded.rgb[0, 0].astype(int) - [10, 200, 30]).max() <= 3


def test_float_refused(tmp_path):
    p = save(tmp_path, Image.new("F", (3, 3)), "f.tif")
    with pytest.raises(ImageError, match="f.tif.*float"):
        read_image(p)


# ------------------------------------------------------------------------------------ EXIF


@pytest.mark.parametrize("orientation,expect_top", [(1, None), (6, "red"), (8, "blue"), (3, None)])
def test_exif_orientation_applied(tmp_path, orientation, expect_top):
    rgb = np.zeros((16, 32, 3), dtype=np.uint8)
    rgb[:, :16] = (255, 0, 0)  # left half red
    rgb[:, 16:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = save(tmp_path, Image.fromarray(rgb), "o.jpg", exif=exif.tobytes(), quality=95)
    loaded = read_image(p)
    assert loaded.info["exif_orientation"] == orientation
    assert loaded.info["exif_transposed"] is (orientation != 1)
    if orientation in (6, 8):  # 90° rotations swap the sides
        check_layout(loaded, 32, 16, False)
        top, bottom = loaded.rgb[4, 8], loaded.rgb[-4, 8]
        red, blue = (top, bottom) if expect_top == "red" else (bottom, top)
        assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60
    else:
        check_layout(loaded, 16, 32, False)
        left = loaded.rgb[8, 4]
        assert bool(left[0] > 200) is (orientation == 1)  # 180° puts blue on the left


# ------------------------------------------------------------------------------------ refusals


def test_missing_folder_and_garbage(tmp_path):
    with pytest.raises(ImageError, match="nope.png.*no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="junk.png.*not an image"):
        read_image(junk)
    with pytest.raises(ImageError, match="empty"):
        read_image_bytes(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buf, fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=f"cut.{fmt.lower()}.*(truncated|damaged)"):
        read_image(p)


def test_decompression_bomb_header(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(raw_png(30000, 30000, 8, 2, None))  # 900 MP claimed, no data
    with pytest.raises(ImageError, match="bomb.png"):
        read_image(p)
    with pytest.raises(ImageError, match="bomb.png"):  # above Pillow's hard limit too
        read_image(p, max_pixels=None)


def test_pixel_limit(tmp_path):
    p = save(tmp_path, Image.new("RGB", (10, 10)), "s.png")
    with pytest.raises(ImageError, match="s.png.*limit"):
        read_image(p, max_pixels=99)
    assert read_image(p, max_pixels=100).rgb.shape == (10, 10, 3)
    with pytest.raises(UsageError):
        read_image(p, max_pixels=0)


def test_set_pillow_pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    set_pillow_pixel_limit(10**9)
    assert Image.MAX_IMAGE_PIXELS == 10**9
    with pytest.raises(UsageError):
        set_pillow_pixel_limit(0)


def test_animation_refused(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with pytest.raises(ImageError, match="anim.gif.*animated"):
        read_image(p)
    single = save(tmp_path, frames[0], "one.gif")
    check_layout(read_image(single), 8, 8, False)


def test_file_objects_and_bytes(tmp_path):
    rgb = random_rgb(4, 4, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    assert np.array_equal(read_image_bytes(buf.getvalue(), name="up.png").rgb, rgb)
    buf.seek(0)
    loaded = read_image(buf)
    assert loaded.path is None and np.array_equal(loaded.rgb, rgb)
    with pytest.raises(ImageError, match="upload.bin"):
        read_image_bytes(b"\x89PNG garbage", name="upload.bin")


# ------------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_lossless_round_trip_with_alpha(tmp_path, suffix):
    rgb = random_rgb(11, 13, 4)
    alpha = np.random.default_rng(5).integers(0, 256, (11, 13), dtype=np.uint8)
    rgb_before, alpha_before = rgb.copy(), alpha.copy()
    p = write_image(tmp_path / f"out.{suffix}", rgb, alpha)
    loaded = read_image(p)
    assert np.array_equal(loaded.rgb, rgb) and np.array_equal(loaded.alpha, alpha)
    assert np.array_equal(rgb, rgb_before) and np.array_equal(alpha, alpha_before)
    assert is_lossless(loaded.format)


def test_png_text_icc_and_no_exif(tmp_path):
    icc = read_icc_srgb()
    text = {"faceveil": '{"a": "ünïcode ✓"}' * 50, "Comment": "hello"}
    p = write_image(tmp_path / "t.png", random_rgb(6, 6), text=text, icc_profile=icc)
    loaded = read_image(p)
    assert loaded.text == text
    assert loaded.icc_profile == icc
    with Image.open(p) as im:
        assert isinstance(im.text["faceveil"], PngImagePlugin.iTXt)
        assert not im.getexif()


def read_icc_srgb() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_non_rgb_icc_dropped(tmp_path):
    icc = bytearray(read_icc_srgb())
    icc[16:20] = b"GRAY"
    p = save(tmp_path, Image.new("L", (4, 4), 9), "g.png", icc_profile=bytes(icc))
    loaded = read_image(p)
    assert loaded.icc_profile is None and any("ICC" in n for n in loaded.info["notes"])


def test_bmp_exact_rgb_drops_alpha(tmp_path, caplog):
    rgb = random_rgb(5, 7, 6)
    with caplog.at_level(logging.WARNING, logger="faceveil.io.image"):
        loaded = read_image(write_image(tmp_path / "b.bmp", rgb, np.zeros((5, 7), np.uint8)))
    assert np.array_equal(loaded.rgb, rgb) and loaded.alpha is None and "alpha" in caplog.text


def test_lossy_recovered_formats(tmp_path, caplog):
    rgb = random_rgb(16, 16)
    alpha = np.full((16, 16), 200, np.uint8)
    with caplog.at_level(logging.WARNING, logger="faceveil.io.image"):
        jpg = read_image(write_image(tmp_path / "r.jpg", rgb, alpha))
    assert jpg.format == "JPEG" and jpg.alpha is None and "alpha" in caplog.text
    webp = read_image(write_image(tmp_path / "r.webp", rgb, alpha))
    assert webp.format == "WEBP" and webp.alpha is not None


def test_overwrite_refused_then_allowed(tmp_path):
    p = write_image(tmp_path / "x.png", random_rgb(4, 4, 1))
    before = p.read_bytes()
    with pytest.raises(UsageError, match="exists; use a different name"):
        write_image(p, random_rgb(4, 4, 2))
    assert p.read_bytes() == before
    write_image(p, random_rgb(4, 4, 2), overwrite=True)
    assert np.array_equal(read_image(p).rgb, random_rgb(4, 4, 2))
    assert sorted(os.listdir(tmp_path)) == ["x.png"]


def test_no_hard_links_fallback(tmp_path, monkeypatch):
    def no_link(*a, **k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(image_mod.os, "link", no_link)
    p = write_image(tmp_path / "x.png", random_rgb(4, 4))
    with pytest.raises(UsageError, match="exists"):
        write_image(p, random_rgb(4, 4))
    assert sorted(os.listdir(tmp_path)) == ["x.png"]


def test_new_file_mode_follows_umask(tmp_path):
    p = write_image(tmp_path / "m.png", random_rgb(2, 2))
    assert p.stat().st_mode & 0o777 == 0o666 & ~image_mod._umask()


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, exc):
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # partial output is on disk ...
        raise exc  # ... when the failure hits

    monkeypatch.setattr(Image.Image, "save", failing_save)
    target = tmp_path / "out.png"
    with pytest.raises(ImageError if isinstance(exc, OSError) else KeyboardInterrupt) as info:
        write_image(target, random_rgb(8, 8))
    if isinstance(exc, OSError):
        assert "out.png" in str(info.value) and "No space" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_failed_fsync_leaves_nothing(tmp_path, monkeypatch):
    def bad_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(image_mod.os, "fsync", bad_fsync)
    with pytest.raises(ImageError, match="Input/output"):
        write_image(tmp_path / "o.png", random_rgb(4, 4))
    assert os.listdir(tmp_path) == []


def test_write_refusals(tmp_path):
    with pytest.raises(ShapeError):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ShapeError):
        write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ShapeError):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(UsageError, match="PNG"):
        write_image(tmp_path / "a.jpg", random_rgb(4, 4), text={"faceveil": "{}"})
    with pytest.raises(UsageError, match="keyword"):
        write_image(tmp_path / "a.png", random_rgb(4, 4), text={"": "x"})
    with pytest.raises(UsageError, match="folder"):
        write_image(tmp_path, random_rgb(4, 4), format="PNG", overwrite=True)
    with pytest.raises(ImageError, match="does not exist"):
        write_image(tmp_path / "no" / "a.png", random_rgb(4, 4))
    with pytest.raises(UsageError):
        write_image(tmp_path / "a.xyz", random_rgb(4, 4))
    assert os.listdir(tmp_path) == []


def test_non_contiguous_input(tmp_path):
    big = random_rgb(8, 8)
    view = big[::2, ::2]
    p = write_image(tmp_path / "v.png", view)
    assert np.array_equal(read_image(p).rgb, view)


# ------------------------------------------------------------------------------------ policy


@pytest.mark.parametrize("name", ["a.jpg", "a.JPEG", "a.webp", "a.avif", "a.heic", "a.gif", "a.jxl"])
def test_protected_output_refuses_lossy(name):
    with pytest.raises(UsageError, match="lossy.*hidden face.*use .png"):
        output_format_for(name, lossless_only=True)


@pytest.mark.parametrize("name", ["a.tif", "a.bmp", "a", "a.xyz"])
def test_protected_output_must_be_png(name):
    with pytest.raises(UsageError, match="use .png"):
        output_format_for(name, lossless_only=True)


def test_output_policy():
    assert output_format_for("x/a.PNG", lossless_only=True) == "PNG"
    expected = {"a.png": "PNG", "a.tiff": "TIFF", "a.bmp": "BMP", "a.jpg": "JPEG", "a.webp": "WEBP"}
    for name, fmt in expected.items():
        assert output_format_for(name, lossless_only=False) == fmt
    for name in ("a.gif", "a.heic", "a"):
        with pytest.raises(UsageError):
            output_format_for(name, lossless_only=False)


def test_same_file(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    link = tmp_path / "link.png"
    link.symlink_to(a)
    assert same_file(a, link)
    assert same_file(a, tmp_path / "sub" / ".." / "a.png")
    assert not same_file(a, tmp_path / "b.png")
    assert same_file(tmp_path / "new.png", tmp_path / "." / "new.png")


# ------------------------------------------------------------------------------------ fuzz


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF plugin warns on damaged tags
def test_damaged_files_only_raise_image_error():
    """Random byte damage to files of several formats: a decoded image or an ImageError, nothing else."""
    import random

    rng = random.Random(0)
    rgb = random_rgb(16, 16, 9)
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = []
    for fmt, kw in (("PNG", {"exif": exif.tobytes()}), ("JPEG", {"exif": exif.tobytes()}), ("GIF", {}),
                    ("TIFF", {}), ("BMP", {}), ("WEBP", {})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, **kw)
        seeds.append(buf.getvalue())
    for data in seeds:
        for _ in range(40):
            d = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                pos = rng.randrange(len(d))
                if rng.random() < 0.7:
                    d[pos] = rng.randrange(256)
                else:
                    del d[pos:pos + rng.randint(1, 40)]
            try:
                loaded = read_image_bytes(bytes(d) or b"x", name="damaged")
            except ImageError as e:
                assert "damaged" in str(e) and "\n" not in str(e)
            else:
                assert loaded.rgb.dtype == np.uint8 and loaded.rgb.ndim == 3


# ------------------------------------------------------------------------------------ in-memory


def test_from_array():
    from faceveil.io import LoadedImage

    rgba = np.random.default_rng(2).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    before = rgba.copy()
    li = LoadedImage.from_array(rgba)
    check_layout(li, 3, 4, True)
    assert np.array_equal(li.rgb, rgba[..., :3]) and np.array_equal(li.alpha, rgba[..., 3])
    li.rgb[:] = 0
    assert np.array_equal(rgba, before)  # a copy
    grey = LoadedImage.from_array(np.full((2, 5), 7, np.uint8))
    check_layout(grey, 2, 5, False)
    assert (grey.rgb == 7).all()
    with pytest.raises(ShapeError):
        LoadedImage.from_array(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ShapeError):
        LoadedImage.from_array(np.zeros((2, 2, 2), np.uint8))


def test_from_pil_matches_file(tmp_path):
    from faceveil.io import LoadedImage

    rgb = np.zeros((8, 16, 3), np.uint8)
    rgb[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    p = save(tmp_path, Image.fromarray(rgb), "o.png", exif=exif.tobytes())
    with Image.open(p) as im:
        from_pil = LoadedImage.from_pil(im)
    from_file = read_image(p)
    assert np.array_equal(from_pil.rgb, from_file.rgb) and from_pil.rgb.shape == (16, 8, 3)
    assert from_pil.info["exif_transposed"]
    p16 = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert (LoadedImage.from_pil(p16).rgb == 255).all()
    with pytest.raises(ImageError, match="limit"):
        LoadedImage.from_pil(Image.new("RGB", (10, 10)), max_pixels=50)
