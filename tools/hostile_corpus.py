"""Generate a corpus of hostile and damaged inputs for faceveil, each with the outcome it must have.

    python tools/hostile_corpus.py OUT_DIR          # writes OUT_DIR/files/... and OUT_DIR/manifest.json

Nothing binary is committed: every file is made here, from Pillow, hand-written PNG/JPEG/GIF/BMP
headers and a small synthetic photo protected with the real ``faceveil.protect`` (a given face box,
so no detector is involved; a cheap scrypt, stored in each file, so recovering is cheap too). Most
plain-image entries give protect/anonymize a small ``--box`` (the network then runs on a face, which
exercises alpha and mode handling end to end); a few (1×1, wrong extensions, Unicode name) go
through the detector. About 0.5 MB in all: the bombs are bombs only when decoded.

``manifest.json``::

    {"version": 1, "password": "...", "kdf": {...}, "entries": [
      {"id": "truncated-png", "file": "files/truncated.png",
       "commands": {"protect": "error", "anonymize": "error", "recover": "error", "inspect": "error"},
       "exit_code": {"protect": 1, ...},          # optional: the exit status an "error" must have
       "match": {"recover": "truncated"},         # optional: a regex the error line matches (any case)
       "args": {"protect": ["--box", "12,8,44,40"]},  # optional: extra arguments per command
       "output": "missing",                       # optional: --out-dir missing / readonly / a file
       "expect": {"size": [w, h], "alpha": true, "quadrants": true, "exif": "none"},  # optional checks
       "reason": "one line: why this outcome"}]}

Outcomes. ``error``: a non-zero exit status, exactly one ``faceveil: error: ...`` line on stderr
(``faceveil: WARNING: ...`` lines aside), no traceback, no output file (nor a temporary one), the
input's bytes unchanged. ``ok``: exit status 0, and the output exists and decodes (``inspect``:
valid JSON on stdout). How the commands are run (tests/integration/test_hostile.py)::

    faceveil protect   FILE --out-dir OUT --password-env VAR [ARGS]
    faceveil anonymize FILE --out-dir OUT [ARGS]
    faceveil recover   FILE --out-dir OUT --password-env VAR [ARGS]
    faceveil inspect   FILE

``expect.quadrants``: the image as displayed (EXIF orientation applied) is 48×32 with a red, green,
blue and white quadrant (top left, top right, bottom left, bottom right); a successful output must
show exactly that without any EXIF orientation (the turn is baked into the pixels).

The fuzz targets shared by the test and ``benchmarks/fuzz_long.py`` are here too
(:func:`record_target`, :func:`image_target`, :func:`mutate`, :func:`seed_images`).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

PASSWORD = "hostile corpus password ✓"
KDF = {"name": "scrypt", "n": 2 ** 10, "r": 8, "p": 1}  # cheap: the corpus is about parsing, not keys
BOX = (24, 16, 40, 32)  # the "face" of the synthetic photo (64×48)
# The boxes given to protect/anonymize of the plain-image entries: small, since the network's time
# grows with the crop (a 32 px face costs ~1.8 s on a busy 2-core machine, an 8 px one ~0.6 s).
SMALL_BOX = (26, 20, 34, 28)  # on the 64×48 photo
CARD_BOX = (20, 12, 28, 20)  # on the 48×32 orientation card: its crop misses the colour samples
ALL = ("protect", "anonymize", "recover", "inspect")
DISPLAY_W, DISPLAY_H = 48, 32
QUADRANT_RGB = {"top_left": (255, 0, 0), "top_right": (0, 255, 0), "bottom_left": (0, 0, 255),
                "bottom_right": (255, 255, 255)}
# Image.transpose that turns the displayed image into what is stored under each EXIF orientation
# (the inverse of what ImageOps.exif_transpose applies).
_STORE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
          7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


# -- small builders -----------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes | None) -> bytes:
    """A PNG written by hand (what Pillow will not write: lying headers, 16-bit RGB). ``idat`` is
    the compressed image data as stored, or None for none."""
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth,
                                                                 color_type, 0, 0, 0))
    if idat is not None:
        out += png_chunk(b"IDAT", idat)
    return out + png_chunk(b"IEND", b"")


def zero_rows_idat(width: int, height: int, bytes_per_row: int) -> bytes:
    """zlib stream of ``height`` all-zero rows (filter byte included), compressed row by row so a
    huge image never sits in memory: a few hundred KiB standing for hundreds of MB."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (bytes_per_row + 1)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return b"".join(parts)


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth synthetic 'photo' (gradients + a little noise): compresses like a photo, not noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / max(w - 1, 1) * 200 + 30, y / max(h - 1, 1) * 180 + 40,
                    (x + y) / max(w + h - 2, 1) * 150 + 60], axis=2)
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def quadrants() -> Image.Image:
    """The displayed test card of the orientation entries (see the module docs)."""
    a = np.zeros((DISPLAY_H, DISPLAY_W, 3), dtype=np.uint8)
    h2, w2 = DISPLAY_H // 2, DISPLAY_W // 2
    a[:h2, :w2], a[:h2, w2:] = QUADRANT_RGB["top_left"], QUADRANT_RGB["top_right"]
    a[h2:, :w2], a[h2:, w2:] = QUADRANT_RGB["bottom_left"], QUADRANT_RGB["bottom_right"]
    return Image.fromarray(a)


def quadrant_colours(rgb: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """The colour at the centre of each quadrant of an H×W×3 array."""
    h, w = rgb.shape[:2]
    at = {"top_left": (h // 4, w // 4), "top_right": (h // 4, 3 * w // 4),
          "bottom_left": (3 * h // 4, w // 4), "bottom_right": (3 * h // 4, 3 * w // 4)}
    return {k: tuple(int(v) for v in rgb[y, x]) for k, (y, x) in at.items()}


def exif_block(orientation: int | None = None, gps: bool = True) -> bytes:
    """EXIF with camera tags, a date, optionally an orientation and a GPS position."""
    e = Image.Exif()
    e[0x010F] = "HostileCam"  # Make
    e[0x0110] = "Model X ✓".encode("utf-8").decode("latin-1")  # Model (ASCII field, odd bytes)
    e[0x0132] = "2024:05:06 07:08:09"  # DateTime
    if orientation is not None:
        e[0x0112] = orientation
    if gps:
        e[0x8825] = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 36.0)}
    e[0x8769] = {0x9003: "2024:05:06 07:08:09", 0x927C: b"MAKERNOTE-SERIAL-123456"}
    return e.tobytes()


def with_text(png: bytes, text: dict[str, str] | None, extra_chunks: Sequence[bytes] = ()) -> bytes:
    """The PNG's pixels re-encoded (lossless) with ``text`` as its iTXt chunks (None: none) and
    ``extra_chunks`` (raw chunks) inserted after IHDR."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        info = PngImagePlugin.PngInfo()
        for k, v in (text or {}).items():
            info.add_itxt(k, v, zip=True)
        out = encode(im, "PNG", pnginfo=info)
    if extra_chunks:
        ihdr_end = 8 + 8 + 13 + 4
        out = out[:ihdr_end] + b"".join(extra_chunks) + out[ihdr_end:]
    return out


# -- the corpus -----------------------------------------------------------------------------------------

class Corpus:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict] = []

    def add(self, id: str, name: str, data: bytes | None, commands: dict[str, str], reason: str, *,
            args: Sequence[str] = (), box: Sequence[int] | None = None, **extra) -> None:
        """``args`` go to protect, anonymize and recover; ``box`` (a face box for protect and
        anonymize) stands in for the detector, which is not what these entries test and takes
        ~0.4 s a run on a busy 2-core machine; the entries without one go through it."""
        path = self.files / name
        if data is not None:
            path.write_bytes(data)
        entry = {"id": id, "file": str(path.relative_to(self.root)), "commands": commands}
        per = {}
        for cmd in commands:
            a = list(args) if cmd != "inspect" else []
            if box is not None and cmd in ("protect", "anonymize"):
                a += ["--box", ",".join(str(v) for v in box)]
            if a:
                per[cmd] = a
        if per:
            entry["args"] = per
        entry.update({k: v for k, v in extra.items() if v is not None})
        entry["reason"] = reason
        self.entries.append(entry)


def _outcomes(default: str, **per: str) -> dict[str, str]:
    out = {c: default for c in ALL}
    out.update(per)
    return out


def _plain_ok(recover_inspect: bool = False) -> dict[str, str]:
    """A readable photo that is not protected."""
    out = {"protect": "ok", "anonymize": "ok"}
    if recover_inspect:
        out.update(recover="error", inspect="error")
    return out


def build(root: Path, password: str = PASSWORD, log: Callable[[str], None] | None = None) -> dict:
    """Write the corpus under ``root`` and return the manifest (also written to ``root/manifest.json``)."""
    c = Corpus(root)
    base = photo()
    png = encode(Image.fromarray(base), "PNG")
    jpg = encode(Image.fromarray(base), "JPEG", quality=92)
    no_image = "no record; protect/anonymize read it first"

    # -- not an image / damaged --------------------------------------------------------------------
    every_error = _outcomes("error")
    c.add("empty", "empty.png", b"", every_error, "a 0-byte file is not an image", exit_code=dict.fromkeys(ALL, 1))
    c.add("truncated-png", "truncated.png", png[: len(png) // 2], every_error,
          "half a PNG: the decoder runs out of data", match=dict.fromkeys(ALL, "truncated"))
    c.add("truncated-jpeg", "truncated.jpg", jpg[: len(jpg) // 2], every_error,
          "half a JPEG: the decoder runs out of data", match=dict.fromkeys(ALL, "truncated"))
    c.add("header-only-png", "header-only.png", png[:33], every_error, "PNG signature and IHDR, nothing else")
    c.add("text-as-png", "notes.png", "just some text, not an image\n".encode() * 20, every_error,
          "a text file with an image's extension", match=dict.fromkeys(ALL, "not an image"))
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("photo.txt", "a zip archive, not an image")
    c.add("zip-as-png", "archive.png", zbuf.getvalue(), every_error, "a zip archive with an image's extension",
          match=dict.fromkeys(ALL, "not an image"))
    c.add("newline-name", "evil\nname.png", png[: len(png) // 2], {"protect": "error", "recover": "error",
                                                                   "inspect": "error"},
          "a truncated PNG whose name holds a line break: the error must still be one line")
    c.add("escape-name", "\x1b[31mred\x1b[0m.png", b"not an image", {"protect": "error", "inspect": "error"},
          "terminal escape sequences in a file name are shown escaped, on one line")

    # -- wrong extensions: the content decides --------------------------------------------------------
    c.add("jpeg-named-png", "really-a-jpeg.png", jpg, _plain_ok(True),
          "a JPEG named .png is read by its content")
    c.add("png-named-jpg", "really-a-png.jpg", png, _plain_ok(True), "a PNG named .jpg is read by its content")

    # -- size: bombs and extremes --------------------------------------------------------------------
    mp = dict.fromkeys(ALL, "megapixels|decompression bomb")
    c.add("bomb-declared", "bomb-declared.png", raw_png(50000, 50000, 8, 2, zlib.compress(b"\x00" * 100)),
          every_error, "declares 50000×50000 (2500 MP) with almost no data: refused from the header", match=mp)
    c.add("bomb-compressed", "bomb-compressed.png",
          raw_png(11000, 11000, 1, 0, zero_rows_idat(11000, 11000, (11000 + 7) // 8)), every_error,
          "a real 11000×11000 image (121 MP; 15 KB of zeros, 8000:1): above faceveil's 100 MP limit, "
          "refused before decoding, with no Pillow warning on stderr", match=dict.fromkeys(ALL, "megapixels"))
    c.add("enormous-png", "enormous.png", raw_png(2 ** 31 - 1, 2 ** 31 - 1, 8, 2, None), every_error,
          "the largest size a PNG header can declare (2^31-1 square)")
    sof = bytearray(jpg)
    i = next(k for k in range(2, len(sof) - 9) if sof[k] == 0xFF and sof[k + 1] in (0xC0, 0xC1, 0xC2))
    sof[i + 5:i + 9] = struct.pack(">HH", 65500, 65500)  # height, width
    c.add("enormous-jpeg", "enormous.jpg", bytes(sof), every_error,
          "a JPEG whose frame header declares 65500×65500 (4290 MP)", match=mp)
    gif = bytearray(encode(Image.fromarray(base).convert("P"), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    c.add("enormous-gif", "enormous.gif", bytes(gif), every_error, "a GIF whose screen is 65535×65535", match=mp)
    bmp = bytearray(encode(Image.fromarray(base), "BMP"))
    bmp[18:26] = struct.pack("<ii", 60000, 60000)
    c.add("enormous-bmp", "enormous.bmp", bytes(bmp), every_error, "a BMP declaring 60000×60000", match=mp)
    c.add("zero-width", "zero-width.png", raw_png(0, 16, 8, 2, zlib.compress(b"")), every_error,
          "a PNG 0 pixels wide")
    c.add("one-pixel", "one-pixel.png", encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), _plain_ok(True),
          "1×1 pixel: no face found, copied through", expect={"size": [1, 1]})

    # -- modes ----------------------------------------------------------------------------------------
    grey16 = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    c.add("grey16-png", "grey16.png", encode(Image.fromarray(grey16), "PNG"), _plain_ok(),
          "16-bit greyscale: reduced to 8 bits with a warning", expect={"size": [64, 48]}, box=SMALL_BOX)
    rgb16 = np.repeat(grey16[..., None], 3, axis=2).astype(">u2").tobytes()
    rows = b"".join(b"\x00" + rgb16[r * 64 * 6:(r + 1) * 64 * 6] for r in range(48))
    c.add("rgb16-png", "rgb16.png", raw_png(64, 48, 16, 2, zlib.compress(rows)), _plain_ok(),
          "16-bit RGB: Pillow keeps the high byte; noted with a warning", expect={"size": [64, 48]}, box=SMALL_BOX)
    c.add("cmyk-jpeg", "cmyk.jpg", encode(Image.fromarray(base).convert("CMYK"), "JPEG", quality=92),
          _plain_ok(), "CMYK JPEG without an ICC profile: naive conversion, with a warning",
          expect={"size": [64, 48]}, box=SMALL_BOX)
    pal = Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    c.add("palette-png", "palette.png", encode(pal, "PNG"), _plain_ok(True), "palette PNG: read as RGB",
          expect={"alpha": False}, box=SMALL_BOX)
    c.add("palette-trns-png", "palette-trns.png", encode(pal, "PNG", transparency=0), _plain_ok(),
          "palette PNG with a tRNS chunk: RGB + alpha, alpha kept", expect={"alpha": True}, box=SMALL_BOX)
    rgba = np.dstack([base, np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))])
    c.add("rgba-png", "rgba.png", encode(Image.fromarray(rgba), "PNG"), _plain_ok(), "RGBA: alpha kept",
          expect={"alpha": True}, box=SMALL_BOX)
    grey = np.asarray(Image.fromarray(base).convert("L"))
    c.add("grey-png", "grey.png", encode(Image.fromarray(grey), "PNG"), _plain_ok(),
          "greyscale: replicated to RGB", expect={"alpha": False}, box=SMALL_BOX)
    grey_alpha = Image.fromarray(np.dstack([grey, rgba[..., 3]]), "LA")
    c.add("grey-alpha-png", "grey-alpha.png", encode(grey_alpha, "PNG"), _plain_ok(),
          "greyscale + alpha: alpha kept", expect={"alpha": True}, box=SMALL_BOX)
    frames = [Image.fromarray(photo(seed=s)).convert("P") for s in range(3)]
    anim = "animated: veiling the first frame only would leave the others' faces visible"
    c.add("animated-gif", "animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                                  duration=80, loop=0),
          _outcomes("error"), anim, match=dict.fromkeys(ALL, "animated"), box=SMALL_BOX)
    apng = [Image.fromarray(photo(seed=s)) for s in range(3)]
    c.add("apng", "animated.png", encode(apng[0], "PNG", save_all=True, append_images=apng[1:], duration=80),
          _outcomes("error"), anim, match=dict.fromkeys(ALL, "animated"), box=SMALL_BOX)
    tif = [Image.fromarray(photo(seed=s)) for s in range(2)]
    c.add("multipage-tiff", "pages.tif", encode(tif[0], "TIFF", save_all=True, append_images=tif[1:]),
          {"protect": "error", "anonymize": "error"}, "a multi-page TIFF is refused like an animation",
          match={"protect": "multi-page", "anonymize": "multi-page"}, box=SMALL_BOX)

    # -- EXIF ------------------------------------------------------------------------------------------
    card = quadrants()
    for o in range(1, 9):
        stored = card if _STORE[o] is None else card.transpose(_STORE[o])
        c.add(f"exif-orientation-{o}", f"orientation-{o}.jpg",
              encode(stored, "JPEG", quality=95, subsampling=0, exif=exif_block(o)), _plain_ok(),
              f"EXIF orientation {o}: the output shows the picture upright and carries no EXIF",
              expect={"quadrants": True, "exif": "none"}, box=CARD_BOX)
    c.add("exif-orientation-6-keep", "orientation-6-keep.jpg",
          encode(card.transpose(_STORE[6]), "JPEG", quality=95, subsampling=0, exif=exif_block(6)), _plain_ok(),
          "--keep-metadata: upright pixels, Orientation 1, camera tags kept, GPS gone",
          args=["--keep-metadata"], expect={"quadrants": True, "exif": "kept"}, box=CARD_BOX)
    c.add("exif-orientation-invalid", "orientation-9.jpg",
          encode(card, "JPEG", quality=95, subsampling=0, exif=exif_block(9)), _plain_ok(),
          "an orientation outside 1-8 is ignored (noted), the picture is left as stored",
          expect={"quadrants": True}, box=CARD_BOX)
    damaged = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x40" + b"\xff" * 40  # 64 entries, 40 bytes
    c.add("exif-damaged", "exif-damaged.jpg", encode(Image.fromarray(base), "JPEG", quality=92, exif=damaged),
          _plain_ok(), "an EXIF block that lies about its size: ignored (with --keep-metadata: not kept)",
          args=["--keep-metadata"], expect={"size": [64, 48]}, box=SMALL_BOX)

    wrong = exif_block(6)
    at = wrong.index(b"\x01\x0f\x00\x02")  # Make, ASCII -> RATIONAL
    wrong = wrong[:at] + b"\x01\x0f\x00\x05" + wrong[at + 4:]
    c.add("exif-wrong-type", "exif-wrong-type.jpg",
          encode(card.transpose(_STORE[6]), "JPEG", quality=95, subsampling=0, exif=wrong), _plain_ok(),
          "orientation 6 beside a tag of the wrong type (found by fuzzing: Pillow's exif_transpose raised "
          "AttributeError): turned upright, the bad tag dropped from the kept EXIF",
          args=["--keep-metadata"], expect={"quadrants": True}, box=CARD_BOX)

    # -- names and output folders ------------------------------------------------------------------------
    c.add("unicode-name", "ünïcødé 写真 😀.jpg", jpg, _plain_ok(True), "non-ASCII file names in and out")
    c.add("output-missing", "plain.png", png, {"protect": "ok", "anonymize": "ok"},
          "a missing --out-dir is created (with its parents)", output="missing", box=SMALL_BOX)
    c.add("output-is-file", "plain.png", None, {"protect": "error", "anonymize": "error"},
          "--out-dir names an existing file: cannot make the folder", output="file", box=SMALL_BOX,
          match={"protect": "output folder", "anonymize": "output folder"})
    c.add("output-readonly", "plain.png", None, {"protect": "error", "anonymize": "error"},
          "--out-dir is read-only: permission denied, nothing left behind (emulated when run as root)",
          output="readonly", box=SMALL_BOX)

    # -- protected files and what can happen to them -----------------------------------------------------
    _protected(c, base, password, no_image, log)

    manifest = {"version": 1, "password": password, "kdf": KDF, "box": list(BOX),
                "display": {"size": [DISPLAY_W, DISPLAY_H], "quadrants": QUADRANT_RGB},
                "entries": c.entries}
    (c.root / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    return manifest


def _protected(c: Corpus, base: np.ndarray, password: str, no_image: str, log) -> None:
    import faceveil

    prot = faceveil.protect(base, password, boxes=[BOX], kdf=KDF)
    good = prot.to_bytes()
    record = json.loads(prot.record.to_json())
    if log:
        log(f"protected the synthetic photo with model {record['model']['name']}")

    def variant(rec: dict | str | None) -> bytes:
        text = rec if isinstance(rec, str) or rec is None else json.dumps(rec)
        return with_text(good, None if text is None else {"faceveil": text})

    refused = {"protect": "error", "anonymize": "error"}
    c.add("protected", "protected.png", good, {"recover": "ok", "inspect": "ok", **refused},
          "a valid protected file: recovers; protecting or anonymizing it again is refused",
          exit_code={"protect": 2, "anonymize": 2}, match={"protect": "already protected",
                                                           "anonymize": "recover it first"})
    c.add("protected-unicode-name", "protégé 写真 😀.png", good, {"recover": "ok", "inspect": "ok"},
          "a protected file with a non-ASCII name")
    c.add("record-missing", "record-missing.png", variant(None),
          {"recover": "error", "inspect": "error", "protect": "ok", "anonymize": "ok"},
          "the PNG lost its faceveil chunk (re-saved by another program): a plain image now",
          match={"recover": "no faceveil record", "inspect": "no faceveil record"}, box=SMALL_BOX)
    bad_json = json.dumps(record)[:-25]
    c.add("record-bad-json", "record-bad-json.png", variant(bad_json), _outcomes("error"),
          "the record is cut short: not valid JSON (protect/anonymize refuse it too)",
          match=dict.fromkeys(ALL, "not valid json"))
    c.add("record-empty", "record-empty.png", variant(""), {"recover": "error", "inspect": "error"},
          "an empty record")
    c.add("record-not-object", "record-list.png", variant("[1, 2, 3]"), {"recover": "error", "inspect": "error"},
          "a record that is a JSON list")
    for key in sorted(record):
        rec = {k: v for k, v in record.items() if k != key}
        optional = key in ("verifier", "mac", "pixels_sha256")
        why = {"verifier": "a password-protected file always has a verifier: refused as altered",
               "mac": "a password-protected file always has a MAC: stripping it must not switch tamper "
                      "detection off",
               "pixels_sha256": "the MAC covers it: refused as altered"}.get(
            key, f"{key} is required: the record is invalid")
        c.add(f"field-removed-{key}", f"field-removed-{key}.png", variant(rec),
              {"recover": "error", "inspect": "ok" if optional else "error"}, why,
              match={"recover": "altered" if optional else key.split("_")[0]})
    rec = json.loads(json.dumps(record))
    x0, y0, x1, y1 = rec["faces"][0]["crop"]
    rec["faces"][0]["crop"] = [x0 + 2, y0, x1 + 2, y1]
    c.add("tampered-crop", "tampered-crop.png", variant(rec), {"recover": "error", "inspect": "ok"},
          "a face's crop moved by 2 px: the MAC fails", match={"recover": "altered"})
    rec = json.loads(json.dumps(record))
    rec["faces"][0]["veil"]["params"] = {k: (v * 2 if isinstance(v, (int, float)) and not isinstance(v, bool)
                                             else v) for k, v in rec["faces"][0]["veil"]["params"].items()}
    c.add("tampered-veil", "tampered-veil.png", variant(rec), {"recover": "error", "inspect": "ok"},
          "a veil parameter changed: the MAC fails", match={"recover": "altered"})
    rec = dict(record, format_version=99)
    c.add("format-version-99", "format-version-99.png", variant(rec), _outcomes("error"),
          "written by a newer faceveil: says which version this one reads",
          match=dict.fromkeys(ALL, "version 99"))
    rec = dict(record, extra_field_of_the_future={"a": [1, 2]})
    c.add("unknown-field", "unknown-field.png", variant(rec), {"recover": "error", "inspect": "ok"},
          "an unknown top-level field is kept (a newer writer) but the MAC covers it: added later, refused",
          match={"recover": "altered"})
    with Image.open(io.BytesIO(good)) as im:
        im.load()
        veiled = im.convert("RGB")
        text = {"faceveil": im.text["faceveil"]}
    c.add("reencoded-jpeg", "protected-reencoded.jpg", encode(veiled, "JPEG", quality=95),
          {"recover": "error", "inspect": "error", "protect": "ok", "anonymize": "ok"},
          "re-saved as JPEG: the record (a PNG chunk) is gone, and the hidden faces with it",
          match={"recover": "no faceveil record"}, box=SMALL_BOX)
    c.add("resized", "protected-resized.png",
          with_text(encode(veiled.resize((32, 24), Image.Resampling.BILINEAR), "PNG"), text),
          {"recover": "error", "inspect": "ok"}, "resized after protection: the record's size no longer matches",
          match={"recover": "resized or cropped"})
    c.add("cropped", "protected-cropped.png", with_text(encode(veiled.crop((0, 0, 48, 40)), "PNG"), text),
          {"recover": "error", "inspect": "ok"}, "cropped after protection: the record's size no longer matches",
          match={"recover": "resized or cropped"})
    edited = np.array(veiled)
    edited[0:4, 0:4] = 255 - edited[0:4, 0:4]
    c.add("pixels-edited", "protected-edited.png", with_text(encode(Image.fromarray(edited), "PNG"), text),
          {"recover": "ok", "inspect": "ok"}, "pixels edited outside the face: recovers, with a warning")
    e = Image.Exif()
    e[0x0112] = 6
    c.add("protected-exif-rotated", "protected-rotated.png",
          with_text(good, text, [png_chunk(b"eXIf", e.tobytes()[6:])]), {"recover": "error", "inspect": "ok"},
          "a viewer added EXIF orientation 6 to the PNG: read turned, its size no longer matches",
          match={"recover": "resized or cropped"})
    huge = json.dumps(dict(record, padding="x" * 1_500_000))
    c.add("record-huge", "record-huge.png", variant(huge), {"recover": "error", "inspect": "error"},
          "a 1.5 MB record (compressed to a few KB): above every limit, refused without parsing")
    c.add("recover-missing-out-dir", "protected.png", None, {"recover": "ok"},
          "recover creates a missing --out-dir", output="missing")


# -- fuzz targets (tests/integration/test_hostile.py, benchmarks/fuzz_long.py) ------------------------

def seed_images() -> dict[str, bytes]:
    """Small valid files the image fuzzer mutates: PNG (RGB, RGBA, palette, with EXIF), JPEG (with
    EXIF orientation) and a protected PNG's structure (an iTXt chunk)."""
    base = photo(24, 32, 3)
    card = quadrants()
    pal = Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "png": encode(Image.fromarray(base), "PNG"),
        "png-rgba": encode(Image.fromarray(np.dstack([base, base[..., 0]])), "PNG"),
        "png-palette-trns": encode(pal, "PNG", transparency=0),
        "png-exif-text": with_text(encode(Image.fromarray(base), "PNG", exif=exif_block(6)),
                                   {"faceveil": '{"format":"faceveil","format_version":1}'}),
        "jpeg": encode(card.transpose(_STORE[6]), "JPEG", quality=90, exif=exif_block(6)),
        "jpeg-progressive": encode(Image.fromarray(base), "JPEG", quality=80, progressive=True),
    }


def mutate(data: bytes, ops: Sequence[tuple[int, int, int]], fix_png_crc: bool = False) -> bytes:
    """Apply byte mutations ``(kind, position, value)``: kind 0 sets a byte, 1 inserts one, 2
    deletes ``value % 64 + 1`` bytes, 3 flips bit ``value % 8``, 4 truncates at the position.
    Positions wrap around the current length. ``fix_png_crc`` recomputes every chunk's CRC so the
    damage reaches the decoders instead of stopping at the checksum."""
    d = bytearray(data)
    for kind, pos, value in ops:
        if not d:
            d = bytearray(b"\x00")
        p = pos % len(d)
        k = kind % 5
        if k == 0:
            d[p] = value & 0xFF
        elif k == 1:
            d.insert(p, value & 0xFF)
        elif k == 2:
            del d[p:p + value % 64 + 1]
        elif k == 3:
            d[p] ^= 1 << (value % 8)
        else:
            del d[max(p, 1):]
    out = bytes(d)
    return fix_crcs(out) if fix_png_crc else out


def fix_crcs(png: bytes) -> bytes:
    """Recompute the CRC of every complete chunk of a (possibly damaged) PNG."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        return png
    d = bytearray(png)
    i = 8
    while i + 12 <= len(d):
        n = struct.unpack(">I", d[i:i + 4])[0]
        end = i + 8 + n
        if end + 4 > len(d):
            break
        d[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(d[i + 4:end])))
        i = end + 4
    return bytes(d)


def image_target(data: bytes) -> str:
    """Read ``data`` as an upload. Returns ``"decoded"`` or the FaceveilError's class name; any
    other exception propagates (a bug). A decoded image must be a sane array."""
    from faceveil.errors import FaceveilError
    from faceveil.io.image import exif_for_output, read_image_bytes

    try:
        img = read_image_bytes(data, name="fuzzed")
    except FaceveilError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return type(e).__name__
    assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3
    assert img.alpha is None or img.alpha.shape == img.rgb.shape[:2]
    kept = exif_for_output(img.info.get("exif"), width=img.width, height=img.height)  # never raises
    if kept is not None:
        check = Image.Exif()
        check.load(kept)
        assert check.get(0x0112) == 1 and 0x8825 not in check
    return "decoded"


def record_target(data: bytes | str) -> str:
    """Parse ``data`` as a faceveil record. Returns ``"parsed"`` or the FaceveilError's class name;
    any other exception propagates (a bug). A parsed record must round-trip canonically."""
    from faceveil.errors import FaceveilError
    from faceveil.io.container import Record

    try:
        rec = Record.from_json(data)
    except FaceveilError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return type(e).__name__
    again = Record.from_json(rec.to_json())
    assert again.to_json() == rec.to_json()
    return "parsed"


def sample_record() -> str:
    """A real record (canonical JSON) for the record fuzzer to mutate; no network is run."""
    from faceveil.io import container as ct

    rec = ct.Record(
        model=ct.ModelRef(name="proface-s-randwr", sha256="ab" * 32),
        kdf=ct.KdfParams(salt=bytes(range(16)), n=2 ** 10, r=8, p=1),
        image=ct.ImageSize(width=64, height=48), verifier="cd" * 32, pixels_sha256="ef" * 32,
        faces=[ct.FaceEntry(index=0, box=(12.0, 8.0, 44.0, 40.0), crop=(10, 6, 46, 42), score=0.93,
                            veil=ct.VeilRef(name="blur", params={"sigma": 4.5, "kernel": 15}))])
    return rec.with_mac(b"k" * 32).to_json()


#: JSON fragments that trouble parsers: non-finite and huge numbers, deep nesting, lone surrogates,
#: NULs, bidi overrides, duplicate or misplaced keys.
RECORD_TOKENS = ("NaN", "Infinity", "-Infinity", "1e999", "-0", "1.0", "9" * 5000, "-" + "9" * 400,
                 '"\\ud800"', '"\\udfff\\ud800"', "[" * 3000, '{"a":' * 600, "null", "true", '""', "[]", "{}",
                 '"format":"faceveil",', '"faces":[],', '"crop":[0,0,2,2],', '"\\u0000"', "\x00", "\u202e",
                 "0x10", "1_000", ",,", "\"", "\\", "\ufeff")


def splice(data: bytes, tokens: Sequence[tuple[int, str]]) -> bytes:
    """Insert each ``(position, token)`` (position wraps around) into ``data``."""
    d = bytearray(data)
    for pos, tok in tokens:
        p = pos % (len(d) + 1)
        d[p:p] = tok.encode("utf-8")
    return bytes(d)


def random_ops(rng: random.Random, n_max: int = 8) -> list[tuple[int, int, int]]:
    """Random mutations for :func:`mutate` (what hypothesis draws in the test)."""
    return [(rng.randrange(5), rng.randrange(1 << 20), rng.randrange(256)) for _ in range(rng.randint(1, n_max))]


def random_tokens(rng: random.Random, n_max: int = 3) -> list[tuple[int, str]]:
    return [(rng.randrange(1 << 16), rng.choice(RECORD_TOKENS)) for _ in range(rng.randint(0, n_max))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write files/ and manifest.json into")
    p.add_argument("--password", default=PASSWORD, help="password of the protected entries")
    args = p.parse_args(argv)
    m = build(args.out_dir, args.password, log=lambda s: print(s, file=sys.stderr))
    n = sum(len(e["commands"]) for e in m["entries"])
    print(f"{len(m['entries'])} entries, {n} command runs: {args.out_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
