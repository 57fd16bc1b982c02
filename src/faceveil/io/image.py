"""Reading and writing images: the only place where files become arrays and arrays become files.

Reading (:func:`read_image`) gives one convention whatever the file held: ``rgb`` is ``H×W×3`` uint8,
C-contiguous, in display orientation (EXIF orientation applied), plus ``alpha`` (``H×W`` uint8) when the
file had transparency. Mode policy:

========================  ===================================================================
file mode                 what read_image returns
========================  ===================================================================
RGB, RGBX, YCbCr, HSV     RGB
RGBA, RGBa, LA, La, PA    RGB + alpha
L, 1                      grey replicated to RGB (``1`` gives 0/255)
P                         RGB, + alpha when the palette has transparency
I;16*, I (16-bit grey)    reduced to 8 bits by rounding ``v·255/65535``, with a logged warning
16-bit RGB(A) PNG         Pillow keeps the high byte; noted in ``info`` with a logged warning
CMYK                      converted to sRGB through its embedded ICC profile when there is one,
                          else Pillow's naive conversion (logged warning)
F (float), others         ImageError: convert to 8-bit first
========================  ===================================================================

Animated or multi-page files (GIF, APNG, WebP, TIFF with more than one frame) are refused: veiling
only the first frame of an animation would leave faces in the rest unveiled without the user
noticing. MPO files (the JPEGs of many cameras, which carry a second preview/depth frame) are read as
their primary image.

Size limit: images above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 100 MP) are refused from
the header, before any pixel is decoded. Pillow's own decompression-bomb guard stays in force as a
second line (it warns above ``PIL.Image.MAX_IMAGE_PIXELS`` ≈ 89.5 MP and refuses above twice that);
its refusal also becomes an :class:`~faceveil.errors.ImageError`. faceveil never changes Pillow's
process-wide settings on import; an application that wants a larger limit calls
:func:`set_pillow_pixel_limit` once at start-up. (The CLI silences Pillow's warning, which Python
would print as two stray stderr lines: the 100 MP check decides; see ``faceveil.cli``.)

EXIF is *not* carried over to outputs by default (it may hold GPS positions and camera serials);
orientation is baked into the pixels. The ICC profile is kept when it describes RGB data. On request
(``keep_metadata`` in :mod:`faceveil.api`, ``--keep-metadata`` in the CLI) :func:`exif_for_output`
makes the EXIF an output may carry: the input's tags (``info["exif"]`` holds the raw block) without
the GPS IFD, the thumbnail, maker notes, the file's own image-structure tags and the other metadata
blocks EXIF can embed (XMP, IPTC, Photoshop resources), with Orientation set to 1.

Writing (:func:`write_image`) is atomic: a temporary file in the target folder, fsync, then a rename;
a failed write leaves neither a partial file nor the temporary one.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin

from ..errors import ImageError, ShapeError, UsageError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DEFAULT_MAX_PIXELS = 100_000_000
"""Default refusal threshold of :func:`read_image` (width × height)."""

JPEG_QUALITY = 95
WEBP_QUALITY = 95
PNG_COMPRESS_LEVEL = 6

# Suffix -> Pillow format name. Every format write_image can produce is here.
_WRITABLE = {
    ".png": "PNG",
    ".tif": "TIFF", ".tiff": "TIFF",
    ".bmp": "BMP",
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
    ".webp": "WEBP",
}
_LOSSLESS = {"PNG", "TIFF", "BMP"}
_ALPHA_FORMATS = {"PNG", "TIFF", "WEBP"}  # Pillow reads BMP alpha back as RGB: BMP drops alpha
_LOSSY_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif", ".heic", ".heif", ".gif",
                   ".jxl"}
# Exceptions Pillow's decoders raise on damaged or hostile input (several plugins raise SyntaxError,
# struct.error or IndexError rather than OSError). Not a bare except: programming errors still surface.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                  TypeError, ZeroDivisionError, OverflowError, zlib.error, MemoryError,
                  Image.DecompressionBombError, Warning)  # Warning: only raised when warnings are errors
# EXIF is optional: a tag of the wrong type makes Pillow's EXIF code raise AttributeError too
# (found by benchmarks/fuzz_long.py); reading it, that means "ignore the EXIF", not "a bug".
_EXIF_ERRORS = (*_DECODE_ERRORS, AttributeError)
_EXIF_ORIENTATION = 0x0112
# What ImageOps.exif_transpose does for each orientation, without re-serialising the EXIF (which
# fails on damaged tags, and which faceveil drops or rebuilds anyway).
_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                          8: Image.Transpose.ROTATE_90}
# keep_metadata: IFD0 tags never carried to an output. The image-structure tags of the file they
# came from (they would misdescribe the new file; a TIFF's EXIF *is* its IFD0), the pointers that
# are rebuilt or dropped (Exif, GPS, Interop, SubIFDs), the thumbnail (IFD1 is never written, and
# its pointer tags go here), and the metadata blocks of other standards EXIF can embed: XMP and
# IPTC can hold the GPS position and people's names, Photoshop resources a thumbnail of the faces.
_EXIF_DROP_IFD0 = frozenset({
    0x00FE, 0x00FF, 0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0107, 0x0108, 0x0109, 0x010A, 0x0111,
    0x0115, 0x0116, 0x0117, 0x0118, 0x0119, 0x011C, 0x0122, 0x0123, 0x0124, 0x0125, 0x012D, 0x013D,
    0x0140, 0x0141, 0x0142, 0x0143, 0x0144, 0x0145, 0x014A, 0x014C, 0x0152, 0x0153, 0x0154, 0x0155,
    0x0156, 0x015B, 0x0200, 0x0201, 0x0202, 0x0211, 0x0212, 0x0213, 0x0214,
    0x02BC,  # XMP
    0x83BB,  # IPTC
    0x8649,  # Photoshop image resources
    0x8773,  # ICC profile (faceveil carries the ICC profile itself)
    0x8769, 0x8825, 0xA005,  # Exif (rebuilt), GPS (dropped), Interop pointers
    0xC4A5,  # PrintIM
    0xC612, 0xC613, 0xC614, 0xC634,  # DNG version / private data
})
# Exif-IFD tags never carried: maker notes (opaque vendor blocks with previews, serials, face
# positions and even recognised names) and the Interop pointer.
_EXIF_DROP_SUB = frozenset({0x927C, 0xA005})
_EXIF_PIXEL_X, _EXIF_PIXEL_Y = 0xA002, 0xA003
_JPEG_MAX_EXIF = 65533 - 2  # what fits in one APP1 segment


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image in faceveil's file-side convention.

    Attributes:
        rgb: ``H×W×3`` uint8, C-contiguous, display orientation.
        alpha: ``H×W`` uint8, or None when the file had no transparency.
        format: Pillow's format name of the file (``"PNG"``, ``"JPEG"``, ...).
        path: the file read, or None for bytes / file objects without a name.
        info: facts about the decoding: ``icc_profile`` (bytes or None), ``mode`` (the file's mode),
            ``exif_orientation`` (the tag's value or None), ``exif_transposed`` (bool),
            ``exif`` (the file's raw EXIF block, bytes, or None; see :func:`exif_for_output`),
            ``bit_depth`` (8 or 16: bits per sample in the file, where known), ``notes`` (list of
            one-line strings on anything lossy or unusual that happened).
        text: the file's PNG text chunks (tEXt/zTXt/iTXt) as plain ``str -> str``; empty for other
            formats. The protected file's record lives here under ``"faceveil"``.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str
    path: Path | None
    info: dict = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def icc_profile(self) -> bytes | None:
        return self.info.get("icc_profile")

    @classmethod
    def from_pil(cls, image: Image.Image, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
        """Convert an in-memory PIL image exactly as :func:`read_image` converts a file (modes, EXIF
        orientation, limits, PNG text). ``image`` is not modified or closed."""
        if not isinstance(image, Image.Image):
            raise UsageError(f"from_pil takes a PIL image, not {type(image).__name__}")
        raw = getattr(image, "filename", "") or ""
        path = Path(raw) if isinstance(raw, str) and raw else None
        name = str(path) if path is not None else "<PIL image>"
        try:
            return _convert(image, name, path, max_pixels)
        except ImageError:
            raise
        except _DECODE_ERRORS as e:
            raise ImageError(f"cannot read {name}: {_decode_reason(e)}") from None

    @classmethod
    def from_array(cls, array: np.ndarray) -> LoadedImage:
        """Wrap a uint8 array: ``H×W`` (grey), ``H×W×1``, ``H×W×3`` (RGB) or ``H×W×4`` (RGBA).
        The pixels are copied. Raises :class:`ShapeError` for other shapes or dtypes (convert float
        images in [0, 1] with ``(x * 255).round().astype(np.uint8)`` first)."""
        if not isinstance(array, np.ndarray):
            raise UsageError(f"from_array takes a numpy array, not {type(array).__name__}")
        if array.dtype != np.uint8:
            raise ShapeError(f"image arrays must be uint8, got {array.dtype}; convert float images in "
                             "[0, 1] with (x * 255).round().astype(np.uint8)")
        a = array[..., None] if array.ndim == 2 else array
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
            raise ShapeError(f"image arrays must be H×W, H×W×3 or H×W×4, got {array.shape}")
        alpha = np.ascontiguousarray(a[..., 3]) if a.shape[2] == 4 else None
        rgb = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
        rgb = np.array(rgb, dtype=np.uint8, order="C", copy=True)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[a.shape[2]]
        info = {"icc_profile": None, "mode": mode, "exif_orientation": None, "exif_transposed": False,
                "exif": None, "bit_depth": 8, "frames": 1, "notes": []}
        return cls(rgb=rgb, alpha=None if alpha is None else alpha.copy(), format="array", path=None,
                   info=info, text={})


def set_pillow_pixel_limit(max_pixels: int | None) -> None:
    """Align Pillow's process-wide decompression-bomb guard with ``max_pixels``.

    For applications (the CLI, the web server) to call once at start-up when they raise faceveil's
    limit above Pillow's (≈179 MP hard refusal). ``None`` disables Pillow's guard; faceveil's own
    ``max_pixels`` check in :func:`read_image` still applies. Library code never calls this.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise UsageError("the pixel limit must be a positive integer")
    Image.MAX_IMAGE_PIXELS = None if max_pixels is None else int(max_pixels)


# --------------------------------------------------------------------------------------------
# reading


def read_image(source: PathLike | BinaryIO, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file (path or binary file object) into a :class:`LoadedImage`.

    Args:
        source: a path, or a binary file object opened for reading.
        max_pixels: refuse images with more than this many pixels (checked from the header, before
            decoding). ``None`` means no faceveil limit (Pillow's guard still applies).

    Raises:
        ImageError: the file is missing, a folder, unreadable, not an image, truncated, animated,
            too large, or of an unsupported mode. The message is one line naming the file.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise UsageError("max_pixels must be a positive integer or None")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(source)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise ImageError(f"cannot read {name}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"cannot read {name}: it is a folder, not an image file") from None
        except PermissionError:
            raise ImageError(f"cannot read {name}: permission denied") from None
        except OSError as e:
            raise ImageError(f"cannot read {name}: {e.strerror or e}") from None
        with fh:
            return _read(fh, name, path, max_pixels)
    if hasattr(source, "read"):
        raw_name = getattr(source, "name", None)
        path = Path(raw_name) if isinstance(raw_name, (str, os.PathLike)) else None
        return _read(source, str(raw_name) if path is not None else "<stream>", path, max_pixels)
    raise UsageError(f"read_image takes a path or a binary file object, not {type(source).__name__}")


def read_image_bytes(data: bytes, *, name: str = "<bytes>",
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """:func:`read_image` for an in-memory encoded file (e.g. an HTTP upload); ``name`` is used in
    error messages only."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"read_image_bytes takes bytes, not {type(data).__name__}")
    if not data:
        raise ImageError(f"cannot read {name}: it is empty")
    return _read(io.BytesIO(bytes(data)), name, None, max_pixels)


def _read(fh: BinaryIO, name: str, path: Path | None, max_pixels: int | None) -> LoadedImage:
    try:
        try:
            im = Image.open(fh)
        except Image.UnidentifiedImageError:
            raise ImageError(f"cannot read {name}: not an image file, or a format Pillow cannot "
                             "decode") from None
        with im:
            return _convert(im, name, path, max_pixels)
    except ImageError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageError(f"cannot read {name}: {_decode_reason(e)}") from None


def _convert(im: Image.Image, name: str, path: Path | None, max_pixels: int | None) -> LoadedImage:
    """Checks and conversions shared by files and PIL images; decoder errors propagate."""
    notes: list[str] = []
    fmt = im.format or "unknown"
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"cannot read {name}: it has no pixels ({width}×{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"cannot read {name}: {width}×{height} is {width * height / 1e6:.1f} megapixels, "
            f"above the limit of {max_pixels / 1e6:.1f} (max_pixels)")
    frames = _frame_count(im)
    if frames > 1 and fmt != "MPO":
        raise ImageError(f"cannot read {name}: it is animated or multi-page ({frames} frames); "
                         "faceveil veils single images — extract the frame you want first")
    if frames > 1:
        notes.append(f"{fmt} file with {frames} frames: read the primary image only")
        log.debug("%s: reading the primary image of %d frames", name, frames)
    mode = im.mode
    bit_depth = 16 if mode.startswith("I;16") or mode == "I" or _png_rawmode_is_16bit(im) else 8
    im.load()
    text = _png_text(im) if fmt == "PNG" else {}
    icc = im.info.get("icc_profile") or None
    exif = _raw_exif(im)
    im, orientation, transposed = _apply_exif_orientation(im, name, notes)
    rgb, alpha, icc = _to_rgb_alpha(im, name, icc, notes)
    if bit_depth == 16:
        notes.append("16-bit image reduced to 8 bits per channel")
        log.warning("%s: 16-bit image reduced to 8 bits per channel", name)
    info = {"icc_profile": icc, "mode": mode, "exif_orientation": orientation,
            "exif_transposed": transposed, "exif": exif, "bit_depth": bit_depth, "frames": frames,
            "notes": notes}
    return LoadedImage(rgb=rgb, alpha=alpha, format=fmt, path=path, info=info, text=text)


def _decode_reason(e: BaseException) -> str:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"refused as a possible decompression bomb ({e})"
    if isinstance(e, MemoryError):
        return "not enough memory to decode it"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "truncated" in msg.lower():
        return "the file is truncated (incomplete download or copy?)"
    return f"the file is damaged or not a supported image ({msg})"


def _frame_count(im: Image.Image) -> int:
    try:
        return int(getattr(im, "n_frames", 1) or 1)
    except _DECODE_ERRORS:
        return 1  # counting frames failed; decoding the first will tell whether the file is usable


def _png_rawmode_is_16bit(im: Image.Image) -> bool:
    """Pillow decodes 16-bit RGB(A) PNGs to 8 bits; only the tile's raw mode (before load) says so."""
    if im.format != "PNG" or not im.tile:
        return False
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
    return isinstance(raw, str) and ";16" in raw


def _png_text(im: Image.Image) -> dict[str, str]:
    text = getattr(im, "text", None) or {}
    return {str(k): str(v) for k, v in text.items()}


def _raw_exif(im: Image.Image) -> bytes | None:
    """The file's EXIF block as bytes (kept for :func:`exif_for_output`), or None. Never raises."""
    raw = im.info.get("exif")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw) or None
    if "Raw profile type exif" in im.info or hasattr(im, "tag_v2"):  # PNG text profile; TIFF's IFD0
        try:
            exif = im.getexif()
            return exif.tobytes() if len(exif) else None
        except _EXIF_ERRORS:
            return None
    return None


def exif_for_output(raw: bytes | None, *, width: int, height: int, name: str = "the image") -> bytes | None:
    """The EXIF block an output may carry when the user asks to keep metadata, made from the input's
    raw block (``LoadedImage.info["exif"]``); None when there is nothing to keep.

    Kept: every IFD0 tag but those in ``_EXIF_DROP_IFD0`` (Make, Model, DateTime, Artist,
    Copyright, ...) and the Exif sub-IFD without maker notes (exposure, DateTimeOriginal, lens,
    serial numbers: the user asked for them). Dropped: the GPS IFD, the thumbnail (IFD1), maker
    notes, embedded XMP / IPTC / Photoshop blocks, the source file's image-structure tags. Set:
    Orientation = 1 (the pixels are already in display orientation: any other value would make
    readers rotate them again, and a protected PNG read rotated could not be recovered), and
    PixelX/YDimension to ``width``/``height`` where present. Damaged EXIF is a logged warning and
    None, never an error; a tag Pillow cannot write back is dropped with a warning.
    """
    if not raw:
        return None
    try:
        src = Image.Exif()
        src.load(bytes(raw))
        base = {int(t): src[t] for t in sorted(src) if int(t) not in _EXIF_DROP_IFD0}
        sub: dict[int, object] = {}
        if ExifTags.IFD.Exif in src:
            sub = {int(t): v for t, v in sorted(src.get_ifd(ExifTags.IFD.Exif).items())
                   if int(t) not in _EXIF_DROP_SUB and not isinstance(v, dict)}
    except _EXIF_ERRORS as e:
        log.warning("%s: its EXIF is damaged (%s); no metadata kept", name, _exif_reason(e))
        return None
    base[_EXIF_ORIENTATION] = 1
    if _EXIF_PIXEL_X in sub:
        sub[_EXIF_PIXEL_X] = int(width)
    if _EXIF_PIXEL_Y in sub:
        sub[_EXIF_PIXEL_Y] = int(height)
    try:
        return _exif_bytes(base, sub)
    except _EXIF_ERRORS:
        pass
    good_base = {t: v for t, v in base.items() if _exif_encodes({t: v}, {})}
    good_sub = {t: v for t, v in sub.items() if _exif_encodes({}, {t: v})}
    dropped = len(base) + len(sub) - len(good_base) - len(good_sub)
    try:
        out = _exif_bytes(good_base, good_sub)
    except _EXIF_ERRORS as e:
        log.warning("%s: its EXIF cannot be written back (%s); no metadata kept", name, _exif_reason(e))
        return None
    log.warning("%s: %d EXIF tag%s could not be written back and %s dropped", name, dropped,
                "" if dropped == 1 else "s", "was" if dropped == 1 else "were")
    return out


def _exif_bytes(base: dict, sub: dict) -> bytes:
    exif = Image.Exif()
    for tag, value in base.items():
        exif[tag] = value
    if sub:
        exif[ExifTags.IFD.Exif] = dict(sub)
    out = exif.tobytes()
    Image.Exif().load(out)  # what is written must read back
    return out


def _exif_encodes(base: dict, sub: dict) -> bool:
    try:
        _exif_bytes(base, sub)
        return True
    except _EXIF_ERRORS:
        return False


def _exif_reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _apply_exif_orientation(im: Image.Image, name: str, notes: list[str]):
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION)
    except _EXIF_ERRORS as e:
        log.warning("%s: unreadable EXIF ignored (%s)", name, _exif_reason(e))
        notes.append("unreadable EXIF ignored; orientation not applied")
        return im, None, False
    if not isinstance(orientation, int) or orientation == 1:
        return im, orientation if isinstance(orientation, int) else None, False
    if not 2 <= orientation <= 8:
        notes.append(f"invalid EXIF orientation {orientation} ignored")
        return im, orientation, False
    try:
        out = im.transpose(_ORIENTATION_TRANSPOSE[orientation])
    except _DECODE_ERRORS as e:
        log.warning("%s: EXIF orientation %d could not be applied (%s)", name, orientation, _exif_reason(e))
        notes.append(f"EXIF orientation {orientation} could not be applied")
        return im, orientation, False
    log.debug("%s: applied EXIF orientation %d", name, orientation)
    return out, orientation, True


def _icc_is_rgb(icc: bytes | None) -> bool:
    """ICC header bytes 16-19 name the data colour space."""
    return isinstance(icc, (bytes, bytearray)) and len(icc) >= 20 and bytes(icc[16:20]) == b"RGB "


def _to_rgb_alpha(im: Image.Image, name: str, icc: bytes | None, notes: list[str]):
    """Pixels of ``im`` as (rgb, alpha or None, icc profile that still applies)."""
    mode = im.mode
    alpha = None
    if mode in ("RGB",):
        rgb = np.array(im, dtype=np.uint8)
    elif mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and _palette_has_alpha(im)):
        rgba = np.array(im.convert("RGBA"), dtype=np.uint8)
        rgb, alpha = rgba[..., :3], rgba[..., 3]
    elif mode in ("L", "1"):
        grey = np.array(im.convert("L"), dtype=np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    elif mode.startswith("I;16") or mode == "I":
        v = np.array(im).astype(np.int64)
        v = np.clip(v, 0, 65535)
        grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    elif mode == "CMYK":
        rgb, icc = _cmyk_to_rgb(im, name, icc, notes)
    elif mode == "F":
        raise ImageError(f"cannot read {name}: 32-bit float images are not supported; "
                         "convert it to 8-bit RGB first")
    else:  # P without transparency, RGBX, YCbCr, HSV, ...
        try:
            rgb = np.array(im.convert("RGB"), dtype=np.uint8)
        except ValueError:
            raise ImageError(f"cannot read {name}: image mode {mode} is not supported; "
                             "convert it to 8-bit RGB first") from None
        if mode not in ("P", "RGBX"):
            notes.append(f"converted from {mode} to RGB")
    if icc is not None and not _icc_is_rgb(icc):
        notes.append("ICC profile dropped: it does not describe RGB data")
        icc = None
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha, dtype=np.uint8)
    return rgb, alpha, icc


def _palette_has_alpha(im: Image.Image) -> bool:
    if "transparency" in im.info:
        return True
    pal = im.palette
    return pal is not None and getattr(pal, "mode", "") == "RGBA"


def _cmyk_to_rgb(im: Image.Image, name: str, icc: bytes | None, notes: list[str]):
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            notes.append("CMYK converted to sRGB through the embedded ICC profile")
            return np.array(out, dtype=np.uint8), None
        except (ImportError, OSError, ValueError, TypeError) as e:  # ImageCms.PyCMSError is an OSError
            log.warning("%s: CMYK ICC conversion failed (%s); using a naive conversion", name, e)
    else:
        log.warning("%s: CMYK image without an ICC profile; colours use a naive conversion", name)
    notes.append("CMYK converted to RGB naively (colours may shift)")
    return np.array(im.convert("RGB"), dtype=np.uint8), None


# --------------------------------------------------------------------------------------------
# output format policy


def output_format_for(path: PathLike, *, lossless_only: bool) -> str:
    """The Pillow format to write ``path`` in, from its suffix.

    ``lossless_only=True`` is the policy for protected images: they must be PNG, because the hidden
    face survives only exact 8-bit pixels and the metadata record lives in a PNG text chunk.
    ``lossless_only=False`` is the policy for recovered images: PNG, TIFF, BMP (lossless) and
    JPEG / WebP (quality 95) — the original is recovered, and the user chose the format.

    Raises:
        UsageError: the suffix is unknown, missing, or not allowed by the policy; the message says why.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if lossless_only:
        if suffix == ".png":
            return "PNG"
        if suffix in _LOSSY_SUFFIXES:
            raise UsageError(f"cannot save the protected image as {p.name}: a lossy format "
                             f"({suffix[1:].upper()}) destroys the hidden face, so it could never be "
                             "recovered; use .png")
        if suffix in _WRITABLE:
            raise UsageError(f"cannot save the protected image as {p.name}: protected images must be "
                             "PNG (the recovery record is stored in a PNG text chunk); use .png")
        raise UsageError(f"cannot save the protected image as {p.name}: "
                         f"{'no file extension' if not suffix else 'unknown format ' + suffix}; use .png")
    fmt = _WRITABLE.get(suffix)
    if fmt is None:
        choices = ", ".join(sorted({s for s in _WRITABLE}))
        what = "has no file extension" if not suffix else f"has an unsupported extension {suffix}"
        raise UsageError(f"cannot save {p.name}: it {what}; use one of {choices}")
    return fmt


def is_lossless(fmt: str) -> bool:
    """True for the formats that store 8-bit RGB exactly (PNG, TIFF, BMP)."""
    return fmt.upper() in _LOSSLESS


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (after symlinks, ``..``, hard links, case on
    case-insensitive file systems). Either may not exist yet. Use it to refuse writing over an input."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    try:
        return pa.resolve(strict=False) == pb.resolve(strict=False)
    except (OSError, RuntimeError):  # RuntimeError: symlink loop on older Pythons
        return os.path.abspath(pa) == os.path.abspath(pb)


# --------------------------------------------------------------------------------------------
# writing


def write_image(path: PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, *,
                text: Mapping[str, str] | None = None, icc_profile: bytes | None = None,
                format: str | None = None, overwrite: bool = False, exif: bytes | None = None) -> Path:
    """Write ``rgb`` (``H×W×3`` uint8) and optional ``alpha`` (``H×W`` uint8) to ``path``, atomically.

    The image is encoded into a temporary file in the same folder, fsynced, then renamed into place;
    on any failure the temporary file is removed and ``path`` is untouched. With ``overwrite=False``
    an existing ``path`` is refused (race-free where the file system supports hard links).

    Args:
        path: destination file.
        rgb, alpha: pixels; copied, never modified.
        text: PNG only: stored as compressed iTXt chunks (keyword -> UTF-8 text).
        icc_profile: embedded when given (PNG, TIFF, JPEG, WebP).
        format: Pillow format name; default from the suffix (:func:`output_format_for` with
            ``lossless_only=False``). This function applies no lossless policy: callers writing
            protected images must check :func:`output_format_for` with ``lossless_only=True``.
        overwrite: replace an existing file.
        exif: an EXIF block to embed (PNG eXIf chunk, JPEG APP1, TIFF tags, WebP EXIF), written as
            given: callers pass what :func:`exif_for_output` made. BMP cannot hold it, nor a JPEG a
            block over 64 KiB: then it is left out with a logged warning. Default: no EXIF.

    Returns:
        The path written.

    Raises:
        UsageError: the path exists (and ``overwrite`` is False) or is a folder, the format is not
            writable, or ``text`` is given for a non-PNG format.
        ShapeError: the arrays have the wrong shape or dtype.
        ImageError: encoding or the file system failed (permission, missing folder, disk full).
    """
    dest = Path(path)
    fmt = (format.upper() if isinstance(format, str) else output_format_for(dest, lossless_only=False))
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in set(_WRITABLE.values()):
        raise UsageError(f"cannot save {dest.name}: format {format!r} is not supported; use PNG, "
                         "TIFF, BMP, JPEG or WEBP")
    img = _to_pil(rgb, alpha)
    if text and fmt != "PNG":
        raise UsageError(f"cannot save {dest.name}: metadata text can only be stored in a PNG")
    if img.mode == "RGBA" and fmt not in _ALPHA_FORMATS:
        log.warning("%s: %s keeps no transparency; the alpha channel is dropped", dest.name, fmt)
        img = img.convert("RGB")
    save_kwargs = _save_kwargs(fmt, text, icc_profile, exif, dest.name)

    if dest.is_dir():
        raise UsageError(f"cannot save {dest}: it is a folder; give a file name")
    if not overwrite and os.path.lexists(dest):
        raise UsageError(f"{dest} exists; use a different name")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"cannot save {dest}: the folder {folder} does not exist")

    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as e:
        raise ImageError(f"cannot save {dest}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                img.save(fh, format=fmt, **save_kwargs)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, _new_file_mode(dest if overwrite else None))
            _move_into_place(tmp, dest, overwrite)
        except UsageError:
            raise
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, struct.error, zlib.error) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            raise ImageError(f"cannot save {dest}: {reason}") from None
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # pragma: no cover - nothing more we can do
            log.warning("could not remove temporary file %s: %s", tmp, e)
        raise
    _fsync_dir(folder)
    log.debug("wrote %s (%s, %dx%d)", dest, fmt, img.width, img.height)
    return dest


def encode_image(rgb: np.ndarray, alpha: np.ndarray | None = None, *, format: str = "PNG",
                 text: Mapping[str, str] | None = None, icc_profile: bytes | None = None,
                 exif: bytes | None = None) -> bytes:
    """Encode to bytes in memory (e.g. an HTTP response): the same encoder settings as
    :func:`write_image`, nothing touches the disk."""
    fmt = format.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in set(_WRITABLE.values()):
        raise UsageError(f"format {format!r} is not supported; use PNG, TIFF, BMP, JPEG or WEBP")
    if text and fmt != "PNG":
        raise UsageError("metadata text can only be stored in a PNG")
    img = _to_pil(rgb, alpha)
    if img.mode == "RGBA" and fmt not in _ALPHA_FORMATS:
        img = img.convert("RGB")
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **_save_kwargs(fmt, text, icc_profile, exif, f"the {fmt} image"))
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, struct.error, zlib.error) as e:
        raise ImageError(f"cannot encode the image as {fmt}: {e}") from None
    return buf.getvalue()


def _to_pil(rgb: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ShapeError(f"write_image needs rgb as H×W×3 uint8, got {desc}")
    h, w = rgb.shape[:2]
    if h < 1 or w < 1:
        raise ShapeError(f"write_image needs a non-empty image, got {h}×{w}")
    if alpha is None:
        return Image.fromarray(np.ascontiguousarray(rgb))
    if not isinstance(alpha, np.ndarray) or alpha.dtype != np.uint8 or alpha.shape != (h, w):
        desc = f"{alpha.dtype} {alpha.shape}" if isinstance(alpha, np.ndarray) else type(alpha).__name__
        raise ShapeError(f"write_image needs alpha as {h}×{w} uint8, got {desc}")
    return Image.fromarray(np.ascontiguousarray(np.dstack([rgb, alpha])))


def _check_text(text: Mapping[str, str]) -> None:
    for key, value in text.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 79 or key != key.strip() \
                or not all(0x20 <= ord(c) <= 0x7E or 0xA1 <= ord(c) <= 0xFF for c in key):
            raise UsageError(f"invalid PNG text keyword {key!r}: 1-79 printable Latin-1 characters")
        if not isinstance(value, str):
            raise UsageError(f"PNG text {key!r} must be a str, not {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"PNG text {key!r} is not valid Unicode") from None


def _save_kwargs(fmt: str, text: Mapping[str, str] | None, icc: bytes | None, exif: bytes | None = None,
                 name: str = "the image") -> dict:
    kw: dict = {}
    if exif:
        if not isinstance(exif, (bytes, bytearray)):
            raise UsageError("exif must be bytes")
        if fmt == "BMP":
            log.warning("%s: BMP files cannot hold EXIF; the metadata is not kept", name)
        elif fmt == "JPEG" and len(exif) > _JPEG_MAX_EXIF:
            log.warning("%s: the EXIF block (%d bytes) is too large for a JPEG; the metadata is not kept",
                        name, len(exif))
        elif fmt == "TIFF":  # libtiff (LZW) cannot write the Exif sub-IFD: the main tags go in IFD0
            kw["tiffinfo"] = _tiff_exif_tags(exif, name)
        else:
            kw["exif"] = bytes(exif)
    if icc:
        if not isinstance(icc, (bytes, bytearray)):
            raise UsageError("icc_profile must be bytes")
        if fmt != "BMP":
            kw["icc_profile"] = bytes(icc)
    if fmt == "PNG":
        kw.update(optimize=False, compress_level=PNG_COMPRESS_LEVEL)
        if text:
            _check_text(text)
            info = PngImagePlugin.PngInfo()
            for key in sorted(text):
                info.add_itxt(key, text[key], lang="", tkey="", zip=True)
            kw["pnginfo"] = info
    elif fmt == "TIFF":
        kw["compression"] = "tiff_lzw"
    elif fmt == "JPEG":
        kw.update(quality=JPEG_QUALITY, subsampling=0, optimize=False)
    elif fmt == "WEBP":
        kw.update(quality=WEBP_QUALITY, method=4)
    return kw


def _tiff_exif_tags(exif: bytes, name: str) -> dict:
    """The IFD0 tags of an EXIF block made by :func:`exif_for_output`, for a TIFF's own IFD0."""
    src = Image.Exif()
    try:
        src.load(bytes(exif))
        tags = {int(t): src[t] for t in src if int(t) not in _EXIF_DROP_IFD0}
        has_sub = ExifTags.IFD.Exif in src
    except _DECODE_ERRORS:
        return {}
    if has_sub:
        log.warning("%s: a TIFF keeps the main EXIF tags (camera, date, ...) but not the Exif sub-IFD "
                    "(exposure, original date); use PNG or JPEG to keep them", name)
    return tags


def _umask() -> int:
    """The process umask, read without changing it (Linux); 0o022 where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _new_file_mode(existing: Path | None) -> int:
    """mkstemp makes 0600 files; give the result the mode an ordinary new file (or the file being
    replaced) would have."""
    if existing is not None:
        try:
            return existing.stat().st_mode & 0o7777
        except OSError:
            pass
    return 0o666 & ~_umask()


def _move_into_place(tmp: Path, dest: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)  # fails if dest exists: no window in which another file can be clobbered
    except FileExistsError:
        raise UsageError(f"{dest} exists; use a different name") from None
    except OSError:  # no hard links here (FAT, some network file systems): check, then rename
        if os.path.lexists(dest):
            raise UsageError(f"{dest} exists; use a different name") from None
        os.replace(tmp, dest)
        return
    tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); harmless where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
