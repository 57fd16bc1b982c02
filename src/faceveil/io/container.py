"""The protected file's metadata record: a small, versioned JSON object in the PNG's iTXt chunk
``faceveil``. The specification, with the reasons behind each rule, is ``docs/FORMAT.md``.

The record says *how* to recover (which model, KDF parameters and salt, which crops, which veils)
and lets recovery tell a wrong password from a right one (``verifier``) and detect tampering (``mac``).
It holds nothing secret: no password, no key, no landmarks, no original pixels.

Every value is validated twice over: when a :class:`Record` is built (so faceveil never writes a
record it would refuse to read) and when one is parsed (:meth:`Record.from_json`), which treats its
input as hostile: size cap before parsing, no duplicate keys, no NaN/Infinity, exact types (``true``
is not an integer, ``1.0`` is not an integer), bounded numbers and strings, crops inside the image.
Every failure is a :class:`~faceveil.errors.ContainerError` naming the offending field.

Canonical form (:func:`canonical_bytes`, :meth:`Record.to_json`): ``json.dumps`` with sorted keys,
``(",", ":")`` separators, ASCII only (non-ASCII as ``\\uXXXX``), floats in Python's shortest
round-trip notation. A record parsed and re-serialised gives the same bytes, so the MAC is computed
over the canonical bytes of the *parsed* record, never over the raw text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..errors import ContainerError, UsageError

log = logging.getLogger(__name__)

FORMAT_NAME = "faceveil"
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
# Version 2 (docs/FORMAT.md, "Versioning"): the hidden face may be a keyed wavelet scramble of the
# original (faceveil.nn.scramble), as the named model's config says. Version 3: a keyed scramble of
# the residual x − y instead. A file is written with the lowest version its model needs
# (INNConfig.format_version), so older readers still recover what they can.
TEXT_KEY = "faceveil"
"""Keyword of the PNG iTXt chunk that carries the record."""

# Caps on hostile input. MAX_RECORD_BYTES stays below Pillow's 1 MiB limit on one decompressed PNG
# text chunk (PngImagePlugin.MAX_TEXT_CHUNK), so every record faceveil writes can be read back.
MAX_RECORD_BYTES = 1_000_000
MAX_FACES = 4096
MAX_SIDE = 1 << 20  # pixels per image side
MAX_COORD = 4 * MAX_SIDE  # |box coordinate|: detector boxes may stick out of the image
MAX_VEIL_PARAMS = 32
MAX_STRING = 256
MAX_EXTRA_DEPTH = 16
MAX_PARAM_INT = 2 ** 53  # exactly representable by every JSON reader
MAX_PARAM_FLOAT = 1e15
SALT_MIN_BYTES, SALT_MAX_BYTES = 8, 64
# scrypt bounds: kept equal to faceveil.keys (MAX_SCRYPT_MEMORY, MAX_SCRYPT_P); a unit test checks.
MAX_SCRYPT_MEMORY = 1 << 30
MAX_SCRYPT_P = 16

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_VEIL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PARAM_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TOP_KEYS = frozenset({"format", "format_version", "software", "model", "kdf", "verifier", "mac",
                       "pixels_sha256", "image", "faces"})

ParamValue = bool | int | float | str


# --------------------------------------------------------------------------------------------
# small checkers; messages start with the field name so callers can prefix a path


def _tname(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, numbers.Integral):
        return "an integer"
    if isinstance(v, numbers.Real):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Mapping):
        return "an object"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__


def _short(v: Any) -> str:
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and abs(int(v)) > 10 ** 15:
        return "a huge number"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ContainerError(f"{name} must be an integer, not {_tname(v)}")
    v = int(v)
    if not lo <= v <= hi:
        raise ContainerError(f"{name} = {_short(v)} is out of range [{lo}, {hi}]")
    return v


def _float(v: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ContainerError(f"{name} must be a number, not {_tname(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise ContainerError(f"{name} is out of range") from None
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ContainerError(f"{name} = {_short(f)} is out of range [{lo:g}, {hi:g}]")
    return f


def _str(v: Any, name: str, *, max_len: int = MAX_STRING, pattern: re.Pattern | None = None,
         what: str = "") -> str:
    if not isinstance(v, str):
        raise ContainerError(f"{name} must be a string, not {_tname(v)}")
    if len(v) > max_len:
        raise ContainerError(f"{name} is longer than {max_len} characters")
    if pattern is not None and not pattern.fullmatch(v):
        raise ContainerError(f"{name} = {_short(v)} is not {what or 'valid'}")
    if pattern is None and not v.isprintable():
        raise ContainerError(f"{name} contains control or unprintable characters")
    _check_unicode(v, name)
    return str(v)


def _check_unicode(s: str, name: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ContainerError(f"{name} contains invalid Unicode (a lone surrogate)") from None


def _seq(v: Any, name: str, n: int) -> Sequence:
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Sequence) and not _is_array(v):
        raise ContainerError(f"{name} must be a list of {n} numbers, not {_tname(v)}")
    v = list(v)
    if len(v) != n:
        raise ContainerError(f"{name} must have {n} elements, not {len(v)}")
    return v


def _is_array(v: Any) -> bool:  # numpy arrays / tuples from the pipeline, without importing numpy
    return hasattr(v, "__len__") and hasattr(v, "__getitem__") and hasattr(v, "shape")


def _obj(v: Any, name: str, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping:
    if not isinstance(v, Mapping):
        raise ContainerError(f"{name} must be an object, not {_tname(v)}")
    missing = [k for k in required if k not in v]
    if missing:
        raise ContainerError(f"{name} lacks {', '.join(missing)}")
    unknown = sorted(str(k) for k in v if k not in required and k not in optional)
    if unknown:
        raise ContainerError(f"{name} has unknown field {_short(unknown[0])}")
    return v


def _prefixed(prefix: str, e: ContainerError) -> ContainerError:
    return ContainerError(f"{prefix}.{e}")


# --------------------------------------------------------------------------------------------
# the data model


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """The hiding network a file was made with: registry name and the sha256 of its weights file.
    Recovery needs exactly these weights (a different network cannot invert another's output)."""

    name: str
    sha256: str

    def __post_init__(self) -> None:
        _str(self.name, "name", max_len=128, pattern=_MODEL_NAME,
             what="a model name (letters, digits, . _ + -)")
        _str(self.sha256, "sha256", max_len=64, pattern=_HEX64, what="64 lowercase hex digits")

    def to_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any) -> ModelRef:
        d = _obj(d, "model", ("name", "sha256"))
        try:
            return cls(name=d["name"], sha256=d["sha256"])
        except ContainerError as e:
            raise _prefixed("model", e) from None


@dataclass(frozen=True, kw_only=True)
class KdfParams:
    """Key-derivation parameters and the per-image random salt (public by design).

    ``as_dict()`` gives the ``{"name", "n", "r", "p"}`` dict that :func:`faceveil.keys.derive_master_key`
    takes; ``salt`` is passed beside it.
    """

    salt: bytes
    n: int = 2 ** 16
    r: int = 8
    p: int = 1
    name: str = "scrypt"

    def __post_init__(self) -> None:
        if self.name != "scrypt":
            raise ContainerError(f"name: unsupported key derivation {_short(self.name)}; "
                                 "this faceveil knows scrypt")
        n = _int(self.n, "n", 2, 2 ** 32)
        r = _int(self.r, "r", 1, 2 ** 20)
        p = _int(self.p, "p", 1, MAX_SCRYPT_P)
        if n & (n - 1):
            raise ContainerError(f"n = {n} must be a power of two")
        if 128 * n * r > MAX_SCRYPT_MEMORY:
            raise ContainerError(f"n, r = {n}, {r} would need more than {MAX_SCRYPT_MEMORY >> 20} MiB")
        if not isinstance(self.salt, (bytes, bytearray)):
            raise ContainerError(f"salt must be bytes, not {_tname(self.salt)}")
        if not SALT_MIN_BYTES <= len(self.salt) <= SALT_MAX_BYTES:
            raise ContainerError(f"salt must be {SALT_MIN_BYTES} to {SALT_MAX_BYTES} bytes, "
                                 f"not {len(self.salt)}")
        for attr, v in (("n", n), ("r", r), ("p", p), ("salt", bytes(self.salt))):
            object.__setattr__(self, attr, v)

    def as_dict(self) -> dict:
        return {"name": self.name, "n": self.n, "r": self.r, "p": self.p}

    def to_dict(self) -> dict:
        return {**self.as_dict(), "salt": base64.b64encode(self.salt).decode("ascii")}

    @classmethod
    def from_dict(cls, d: Any) -> KdfParams:
        d = _obj(d, "kdf", ("name", "n", "r", "p", "salt"))
        try:
            salt_b64 = _str(d["salt"], "salt", max_len=4 * SALT_MAX_BYTES)
            try:
                salt = base64.b64decode(salt_b64, validate=True)
            except (binascii.Error, ValueError):
                raise ContainerError("salt is not valid base64") from None
            if base64.b64encode(salt).decode("ascii") != salt_b64:
                raise ContainerError("salt is not canonical base64 (standard alphabet, padded)")
            return cls(name=d["name"], n=d["n"], r=d["r"], p=d["p"], salt=salt)
        except ContainerError as e:
            raise _prefixed("kdf", e) from None


@dataclass(frozen=True, kw_only=True)
class ImageSize:
    """Size of the protected PNG in pixels (after EXIF orientation was applied to the input)."""

    width: int
    height: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", _int(self.width, "width", 1, MAX_SIDE))
        object.__setattr__(self, "height", _int(self.height, "height", 1, MAX_SIDE))

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: Any) -> ImageSize:
        d = _obj(d, "image", ("width", "height"))
        try:
            return cls(width=d["width"], height=d["height"])
        except ContainerError as e:
            raise _prefixed("image", e) from None


@dataclass(frozen=True, kw_only=True)
class VeilRef:
    """The veil applied to a face: registry name and its concrete parameters (a flat mapping of
    ``str -> bool | int | float | str``, stored read-only)."""

    name: str
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _str(self.name, "name", max_len=64, pattern=_VEIL_NAME,
             what="a veil name (letters, digits, . _ -)")
        if not isinstance(self.params, Mapping):
            raise ContainerError(f"params must be an object, not {_tname(self.params)}")
        if len(self.params) > MAX_VEIL_PARAMS:
            raise ContainerError(f"params has more than {MAX_VEIL_PARAMS} entries")
        clean: dict[str, ParamValue] = {}
        for k in sorted(self.params, key=str):
            if not isinstance(k, str):
                raise ContainerError(f"params keys must be strings, not {_tname(k)}")
            _str(k, "params key", max_len=64, pattern=_PARAM_KEY, what="an identifier")
            clean[k] = _param_value(self.params[k], f"params.{k}")
        object.__setattr__(self, "params", MappingProxyType(clean))

    def to_dict(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Any) -> VeilRef:
        d = _obj(d, "veil", ("name", "params"))
        try:
            return cls(name=d["name"], params=d["params"])
        except ContainerError as e:
            raise _prefixed("veil", e) from None


def _param_value(v: Any, name: str) -> ParamValue:
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return _int(v, name, -MAX_PARAM_INT, MAX_PARAM_INT)
    if isinstance(v, numbers.Real):
        return _float(v, name, -MAX_PARAM_FLOAT, MAX_PARAM_FLOAT)
    if isinstance(v, str):
        return _str(v, name)
    raise ContainerError(f"{name} must be a boolean, number or string, not {_tname(v)} "
                         "(veil parameters are a flat object)")


@dataclass(frozen=True, kw_only=True)
class FaceEntry:
    """One protected face.

    Attributes:
        index: position in ``Record.faces`` (0, 1, ...); it selects the face's secret map.
        box: detected face box ``(x0, y0, x1, y1)`` in image pixels, floats rounded to 0.1 px; may
            extend past the image edge. Informational.
        crop: the integer region that was veiled and hidden, ``(x0, y0, x1, y1)``, x1/y1 exclusive,
            inside the image, with even width and height (the Haar transform halves them).
        crop_size: ``(width, height)`` of the crop; derived from ``crop`` when not given, and
            checked against it when given.
        score: detector confidence in [0, 1] rounded to 4 decimals, or None (e.g. a box given by hand).
        veil: the veil and its parameters.
    """

    index: int
    box: tuple[float, float, float, float]
    crop: tuple[int, int, int, int]
    veil: VeilRef
    crop_size: tuple[int, int] | None = None
    score: float | None = None

    def __post_init__(self) -> None:
        index = _int(self.index, "index", 0, MAX_FACES - 1)
        box = tuple(round(_float(v, "box", -MAX_COORD, MAX_COORD), 1) for v in _seq(self.box, "box", 4))
        if box[0] > box[2] or box[1] > box[3]:
            raise ContainerError(f"box {list(box)} has x0 > x1 or y0 > y1")
        crop = tuple(_int(v, "crop", 0, MAX_SIDE) for v in _seq(self.crop, "crop", 4))
        w, h = crop[2] - crop[0], crop[3] - crop[1]
        if w < 2 or h < 2:
            raise ContainerError(f"crop {list(crop)} is empty or smaller than 2×2")
        if w % 2 or h % 2:
            raise ContainerError(f"crop {list(crop)} has an odd size {w}×{h}; sizes must be even")
        if not isinstance(self.veil, VeilRef):
            raise ContainerError(f"veil must be a VeilRef, not {_tname(self.veil)}")
        if self.crop_size is not None:
            size = tuple(_int(v, "crop_size", 0, MAX_SIDE) for v in _seq(self.crop_size, "crop_size", 2))
            if size != (w, h):
                raise ContainerError(f"crop_size {list(size)} does not match crop {list(crop)} ({w}×{h})")
        score = None if self.score is None else round(_float(self.score, "score", 0.0, 1.0), 4)
        for attr, v in (("index", index), ("box", box), ("crop", crop), ("crop_size", (w, h)),
                        ("score", score)):
            object.__setattr__(self, attr, v)

    def to_dict(self) -> dict:
        d = {"index": self.index, "box": list(self.box), "crop": list(self.crop),
             "crop_size": list(self.crop_size), "veil": self.veil.to_dict()}
        if self.score is not None:
            d["score"] = self.score
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "face") -> FaceEntry:
        d = _obj(d, where, ("index", "box", "crop", "crop_size", "veil"), ("score",))
        try:
            veil = VeilRef.from_dict(d["veil"])
            return cls(index=d["index"], box=d["box"], crop=d["crop"], crop_size=d["crop_size"],
                       veil=veil, score=d.get("score"))
        except ContainerError as e:
            raise _prefixed(where, e) from None


def default_software() -> str:
    """``"faceveil <version>"`` (imported lazily: the package imports this module)."""
    from .. import __version__

    return f"faceveil {__version__}"


@dataclass(frozen=True, kw_only=True)
class Record:
    """The metadata record of one protected image (format version :data:`FORMAT_VERSION`).

    Attributes:
        model, kdf, verifier: what recovery needs besides the password; ``verifier`` is
            ``faceveil.keys.MasterKey.verifier`` (64 hex digits), None for a model without a key.
        image: the protected image's size (the PNG's, after EXIF orientation); ``width`` and
            ``height`` are shortcuts.
        faces: the protected faces, ``faces[i].index == i``; crops lie inside the image.
        mac: optional HMAC-SHA256 (64 hex) over :func:`canonical_bytes` of the record without it;
            see :func:`compute_mac`.
        pixels_sha256: optional sha256 (64 hex) of the protected pixels as written, so recovery can
            tell that the PNG was edited or re-encoded (the writer defines the digest's input).
        software: the writer, e.g. ``"faceveil 0.1.0"`` (informational).
        format_version: 1; 2 when the model hides a keyed scramble of the face; 3 when it hides a
            keyed scramble of the residual ``x − y``.
        extra: unknown top-level fields of a newer writer, kept verbatim (and covered by the MAC);
            faceveil itself writes none.
    """

    model: ModelRef
    kdf: KdfParams
    image: ImageSize
    verifier: str | None = None
    faces: tuple[FaceEntry, ...] = ()
    mac: str | None = None
    pixels_sha256: str | None = None
    software: str = field(default_factory=default_software)
    extra: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.format_version, bool) or self.format_version not in SUPPORTED_VERSIONS:
            raise ContainerError(f"format_version must be one of {', '.join(map(str, SUPPORTED_VERSIONS))}, "
                                 f"not {_short(self.format_version)}")
        if not isinstance(self.model, ModelRef):
            raise ContainerError(f"model must be a ModelRef, not {_tname(self.model)}")
        if not isinstance(self.kdf, KdfParams):
            raise ContainerError(f"kdf must be a KdfParams, not {_tname(self.kdf)}")
        if not isinstance(self.image, ImageSize):
            raise ContainerError(f"image must be an ImageSize, not {_tname(self.image)}")
        for name in ("verifier", "mac", "pixels_sha256"):
            value = getattr(self, name)
            if value is not None:
                _str(value, name, max_len=64, pattern=_HEX64, what="64 lowercase hex digits")
        _str(self.software, "software", max_len=MAX_STRING)
        width, height = self.image.width, self.image.height
        if isinstance(self.faces, (str, bytes, Mapping)) or not isinstance(self.faces, Sequence):
            raise ContainerError(f"faces must be a list, not {_tname(self.faces)}")
        faces = tuple(self.faces)
        if len(faces) > MAX_FACES:
            raise ContainerError(f"faces: {len(faces)} faces, more than the limit of {MAX_FACES}")
        for i, f in enumerate(faces):
            if not isinstance(f, FaceEntry):
                raise ContainerError(f"faces[{i}] must be a FaceEntry, not {_tname(f)}")
            if f.index != i:
                raise ContainerError(f"faces[{i}].index is {f.index}; faces must be numbered 0, 1, 2, ...")
            x0, y0, x1, y1 = f.crop
            if x1 > width or y1 > height:
                raise ContainerError(f"faces[{i}].crop {list(f.crop)} lies outside the "
                                     f"{width}×{height} image")
        extra = _check_extra(self.extra)
        for attr, v in (("faces", faces), ("extra", MappingProxyType(extra))):
            object.__setattr__(self, attr, v)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self, *, exclude_mac: bool = False) -> dict:
        """The record as plain JSON-ready Python values."""
        d = {key: _thaw(v) for key, v in self.extra.items()}
        d.update({
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "software": self.software,
            "model": self.model.to_dict(),
            "kdf": self.kdf.to_dict(),
            "image": self.image.to_dict(),
            "faces": [f.to_dict() for f in self.faces],
        })
        if self.verifier is not None:
            d["verifier"] = self.verifier
        if self.pixels_sha256 is not None:
            d["pixels_sha256"] = self.pixels_sha256
        if self.mac is not None and not exclude_mac:
            d["mac"] = self.mac
        return d

    def to_json(self) -> str:
        """Canonical JSON text (see :func:`canonical_bytes`), MAC included when set.

        Raises:
            ContainerError: the record is larger than :data:`MAX_RECORD_BYTES`.
        """
        return _canonical(self.to_dict()).decode("ascii")

    @classmethod
    def from_json(cls, data: str | bytes | bytearray) -> Record:
        """Parse and validate a record from untrusted text.

        Raises:
            ContainerError: anything wrong, with a one-line message naming the field; an unknown
                ``format_version`` says which version this faceveil reads.
        """
        if isinstance(data, (bytes, bytearray)):
            if len(data) > MAX_RECORD_BYTES:
                raise ContainerError(f"the faceveil record is larger than {MAX_RECORD_BYTES} bytes")
            try:
                data = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise ContainerError("the faceveil record is not valid UTF-8") from None
        if not isinstance(data, str):
            raise ContainerError(f"the faceveil record must be text, not {type(data).__name__}")
        if len(data) > MAX_RECORD_BYTES or len(data.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
            raise ContainerError(f"the faceveil record is larger than {MAX_RECORD_BYTES} bytes")
        try:
            obj = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except ContainerError as e:
            raise ContainerError(f"the faceveil record is not valid JSON: {e}") from None
        except RecursionError:
            raise ContainerError("the faceveil record is not valid JSON: nested too deeply") from None
        except json.JSONDecodeError as e:
            raise ContainerError(f"the faceveil record is not valid JSON ({e.msg} at character "
                                 f"{e.pos})") from None
        except ValueError:  # an integer literal over Python's digit limit
            raise ContainerError("the faceveil record is not valid JSON (a number is too long)") from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> Record:
        """Validate an already-parsed JSON object (see :meth:`from_json`)."""
        if not isinstance(obj, Mapping):
            raise ContainerError(f"the faceveil record must be a JSON object, not {_tname(obj)}")
        if obj.get("format") != FORMAT_NAME:
            raise ContainerError("this is not a faceveil record (its \"format\" is not \"faceveil\")")
        version = obj.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ContainerError("the faceveil record has no integer format_version")
        if version not in SUPPORTED_VERSIONS:
            readable = ", ".join(map(str, SUPPORTED_VERSIONS))
            hint = " — upgrade faceveil to read it" if version > max(SUPPORTED_VERSIONS) else ""
            raise ContainerError(f"this file uses faceveil format version {_short(version)}; "
                                 f"{default_software()} reads version {readable} only{hint}")
        try:
            for key in ("software", "model", "kdf", "image", "faces"):
                if key not in obj:
                    raise ContainerError(f"{key} is missing")
            faces_raw = obj["faces"]
            if not isinstance(faces_raw, list):
                raise ContainerError(f"faces must be a list, not {_tname(faces_raw)}")
            if len(faces_raw) > MAX_FACES:
                raise ContainerError(f"faces: {len(faces_raw)} faces, more than the limit of {MAX_FACES}")
            for key in ("verifier", "mac", "pixels_sha256"):  # optional, but never null
                if key in obj and not isinstance(obj[key], str):
                    raise ContainerError(f"{key} must be a string, not {_tname(obj[key])}")
            extra = {k: v for k, v in obj.items() if k not in _TOP_KEYS}
            if extra:
                log.debug("faceveil record: keeping unknown top-level fields %s", sorted(extra))
            return cls(
                format_version=version,
                software=obj["software"],
                model=ModelRef.from_dict(obj["model"]),
                kdf=KdfParams.from_dict(obj["kdf"]),
                image=ImageSize.from_dict(obj["image"]),
                verifier=obj.get("verifier"),
                mac=obj.get("mac"),
                pixels_sha256=obj.get("pixels_sha256"),
                faces=tuple(FaceEntry.from_dict(f, f"faces[{i}]") for i, f in enumerate(faces_raw)),
                extra=extra,
            )
        except ContainerError as e:
            raise ContainerError(f"invalid faceveil record: {e}") from None

    # -- helpers -----------------------------------------------------------------------------

    def check_image_size(self, width: int, height: int) -> None:
        """Raise :class:`ContainerError` unless the record was made for a ``width×height`` image."""
        if (width, height) != (self.width, self.height):
            raise ContainerError(f"the record describes a {self.width}×{self.height} image but the "
                                 f"file is {width}×{height}; it was resized or cropped after "
                                 "protection and cannot be recovered")

    def with_mac(self, key: bytes) -> Record:
        """A copy carrying :func:`compute_mac` of this record under the MAC *key* (bytes). To attach
        a tag computed elsewhere, use ``dataclasses.replace(record, mac=tag)``."""
        if isinstance(key, str):
            raise UsageError("Record.with_mac takes the MAC key (bytes), not a tag; to attach a "
                             "precomputed tag use dataclasses.replace(record, mac=tag)")
        return replace(self, mac=compute_mac(self, key))


def _check_extra(extra: Any) -> dict:
    if not isinstance(extra, Mapping):
        raise ContainerError(f"extra must be a mapping, not {_tname(extra)}")
    out = {}
    for k, v in extra.items():
        if not isinstance(k, str):
            raise ContainerError("extra field names must be strings")
        if k in _TOP_KEYS:
            raise ContainerError(f"extra field {k!r} clashes with a format-version-1 field")
        _str(k, "extra field name", max_len=MAX_STRING)
        _check_json_value(v, k, 1)
        out[k] = _freeze(v)
    return out


def _check_json_value(v: Any, where: str, depth: int) -> None:
    if depth > MAX_EXTRA_DEPTH:
        raise ContainerError(f"{where} is nested more than {MAX_EXTRA_DEPTH} levels deep")
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, int):
        _int(v, where, -MAX_PARAM_INT, MAX_PARAM_INT)
    elif isinstance(v, float):
        _float(v, where, -1e308, 1e308)
    elif isinstance(v, str):
        _check_unicode(v, where)
    elif isinstance(v, (list, tuple)):
        for item in v:
            _check_json_value(item, where, depth + 1)
    elif isinstance(v, Mapping):
        for key, item in v.items():
            if not isinstance(key, str):
                raise ContainerError(f"{where} has a non-string key")
            _check_unicode(key, where)
            _check_json_value(item, where, depth + 1)
    else:
        raise ContainerError(f"{where} is not a JSON value ({_tname(v)})")


def _freeze(v: Any) -> Any:
    """Immutable copy of a JSON value (tuples and read-only mappings)."""
    if isinstance(v, Mapping):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ContainerError(f"duplicate key {_short(k)}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ContainerError(f"{name} is not allowed")


def _canonical(d: dict) -> bytes:
    try:
        raw = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as e:  # pragma: no cover - validated on construction
        raise ContainerError(f"the record cannot be serialised: {e}") from None
    out = raw.encode("ascii")
    if len(out) > MAX_RECORD_BYTES:
        raise ContainerError(f"the faceveil record would be {len(out)} bytes, more than the limit of "
                             f"{MAX_RECORD_BYTES} (too many faces or veil parameters)")
    return out


# --------------------------------------------------------------------------------------------
# module-level API


def canonical_bytes(record: Record, exclude_mac: bool = True) -> bytes:
    """The canonical ASCII bytes of ``record``: what the MAC covers (``exclude_mac=True``) or what is
    stored (``exclude_mac=False``, equal to ``record.to_json().encode()``)."""
    if not isinstance(record, Record):
        raise UsageError(f"canonical_bytes takes a Record, not {type(record).__name__}")
    return _canonical(record.to_dict(exclude_mac=exclude_mac))


def compute_mac(record: Record, key: bytes) -> str:
    """HMAC-SHA256 (hex) of :func:`canonical_bytes` of ``record`` without its ``mac``.

    ``key`` must be a dedicated key derived from the master key (e.g. HKDF with its own label),
    never the master key itself or the password.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise UsageError("the MAC key must be at least 16 bytes")
    return hmac.new(bytes(key), canonical_bytes(record, exclude_mac=True), hashlib.sha256).hexdigest()


def verify_mac(record: Record, key: bytes) -> bool:
    """True when ``record.mac`` is present and matches (constant-time comparison)."""
    if record.mac is None:
        return False
    return hmac.compare_digest(compute_mac(record, key), record.mac)


def embed(text: Mapping[str, str] | None, record: Record) -> dict[str, str]:
    """A new PNG-text dict: ``text`` plus the record under :data:`TEXT_KEY` (replacing any older one)."""
    out = dict(text or {})
    out[TEXT_KEY] = record.to_json()
    return out


def extract(text: Mapping[str, Any] | None) -> Record | None:
    """The record in a file's PNG text chunks; None when there is none (not a protected file).

    Raises:
        ContainerError: a record is there but damaged, hostile or of an unknown version.
    """
    if not text or TEXT_KEY not in text:
        return None
    value = text[TEXT_KEY]
    if not isinstance(value, (str, bytes, bytearray)):
        raise ContainerError(f"the faceveil text chunk must be text, not {type(value).__name__}")
    return Record.from_json(value)
