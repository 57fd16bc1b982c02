"""The public Python API: :func:`protect` and :func:`recover` on files, PIL images or arrays.

>>> import faceveil
>>> veiled = faceveil.protect("group.jpg", "my password", veil="pixelate")
>>> veiled.save("group.veiled.png")
>>> back = faceveil.recover("group.veiled.png", "my password")
>>> back.save("group.recovered.png")
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .detect import get_detector
from .detect.base import Face
from .detect.geometry import DEFAULT_MARGIN, CropBox, box_iou, check_box, crops_overlap, order_faces
from .errors import ContainerError, ImageError, ModelError, UsageError, WrongPasswordError
from .io import container as ct
from .io.image import LoadedImage, exif_for_output, read_image, read_image_bytes, write_image
from .keys import DEFAULT_KDF, MasterKey, derive_master_key, new_salt
from .models.zoo import LoadedModel, load_model
from .pipeline import FacePlan, plan_faces, protect_array, recover_array

log = logging.getLogger(__name__)

ImageLike = str | Path | bytes | np.ndarray | LoadedImage | Any  # Any: a PIL.Image.Image


@dataclass
class FaceInfo:
    """One processed face: detection box, the crop that was protected, the veil used."""

    index: int
    box: tuple[float, float, float, float]
    crop: CropBox
    score: float
    veil: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"index": self.index, "box": [round(v, 1) for v in self.box], "crop": self.crop.as_list(),
                "score": round(self.score, 4), "veil": {"name": self.veil, "params": self.params}}


@dataclass
class KeptFace:
    """A found face left visible on request (``keep_faces`` / ``keep_boxes`` of :func:`protect`):
    not veiled, not in the record. ``index`` is its number among all the faces found, i.e. the
    ``index`` it would have had without ``keep_*`` (the number ``keep_faces`` refers to)."""

    index: int
    box: tuple[float, float, float, float]
    crop: CropBox
    score: float
    reason: str  # "keep_faces" or "keep_boxes"

    def to_dict(self) -> dict:
        return {"index": self.index, "box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
                "reason": self.reason}


@dataclass
class Protected:
    """The result of :func:`protect`. ``image`` is the protected RGB (uint8 H×W×3); ``alpha`` the
    untouched alpha channel, if any; ``record`` the metadata the PNG must carry for recovery;
    ``faces`` the veiled faces (numbered 0, 1, ... as in the record); ``kept`` the faces left
    visible on request; ``exif`` the EXIF block the PNG carries (``keep_metadata``), else None."""

    image: np.ndarray
    alpha: np.ndarray | None
    record: ct.Record
    faces: list[FaceInfo]
    icc_profile: bytes | None = None
    kept: list[KeptFace] = field(default_factory=list)
    exif: bytes | None = None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the protected PNG (atomically). Any other format is refused: a lossy one would
        destroy the hidden faces."""
        from .io.image import output_format_for

        fmt = output_format_for(path, lossless_only=True)
        text = ct.embed({}, self.record)
        write_image(path, self.image, self.alpha, text=text, icc_profile=self.icc_profile, format=fmt,
                    overwrite=overwrite, exif=self.exif)
        return Path(path)

    def to_bytes(self) -> bytes:
        """The protected PNG, with its record, encoded in memory."""
        from .io.image import encode_image

        return encode_image(self.image, self.alpha, format="PNG", text=ct.embed({}, self.record),
                            icc_profile=self.icc_profile, exif=self.exif)

    def to_pil(self):
        from PIL import Image

        if self.alpha is not None:
            return Image.fromarray(np.dstack([self.image, self.alpha]), "RGBA")
        return Image.fromarray(self.image, "RGB")


@dataclass
class Recovered:
    """The result of :func:`recover`. ``verified`` is False only when ``force`` ran the network
    with a password that failed the check (the output then shows the wrong-key behaviour);
    ``modified`` is True when the protected pixels are not those that were written."""

    image: np.ndarray
    alpha: np.ndarray | None
    record: ct.Record
    faces: list[FaceInfo]
    verified: bool = True
    modified: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from .io.image import output_format_for

        fmt = output_format_for(path, lossless_only=False)
        write_image(path, self.image, self.alpha, icc_profile=self.icc_profile, format=fmt,
                    overwrite=overwrite, exif=self.exif)
        return Path(path)

    to_pil = Protected.to_pil

    def to_bytes(self, format: str = "PNG") -> bytes:
        """The recovered image encoded in memory (PNG by default)."""
        from .io.image import encode_image

        return encode_image(self.image, self.alpha, format=format, icc_profile=self.icc_profile,
                            exif=self.exif)


# -- inputs ---------------------------------------------------------------------------------------

def _load(image: ImageLike) -> LoadedImage:
    """Files go through :func:`read_image` (EXIF orientation, modes, limits), encoded bytes (an
    upload) through :func:`read_image_bytes`; PIL images and arrays are converted the same way."""
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return read_image_bytes(bytes(image), name="the upload")
    if isinstance(image, np.ndarray):
        return LoadedImage.from_array(image)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return LoadedImage.from_pil(image)
    raise UsageError(f"cannot read an image from a {type(image).__name__}; pass a path, a PIL "
                     "image or a uint8 array")


def _kept_exif(img: LoadedImage, keep_metadata: bool) -> bytes | None:
    """``keep_metadata``: the input's EXIF as an output may carry it (no GPS, no thumbnail,
    Orientation 1: :func:`faceveil.io.image.exif_for_output`); otherwise None (no EXIF at all)."""
    if not keep_metadata:
        return None
    name = str(img.path) if img.path is not None else "the image"
    return exif_for_output(img.info.get("exif"), width=img.width, height=img.height, name=name)


def _pixels_digest(rgb: np.ndarray, alpha: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(f"{rgb.shape[1]}x{rgb.shape[0]}".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    if alpha is not None:
        h.update(np.ascontiguousarray(alpha).tobytes())
    return h.hexdigest()


def _mac_key(master: MasterKey) -> bytes:
    """Key of the HMAC over the canonical record: once the password is known, recovery detects any
    edit of the metadata (docs/FORMAT.md)."""
    from .keys import hkdf

    return hkdf(master.key, b"faceveil/v1 metadata mac")


def _faces_from_boxes(boxes: Sequence[Sequence[float]]) -> list[Face]:
    out = []
    for b in boxes:
        if len(b) != 4:
            raise UsageError(f"a face box is x0,y0,x1,y1; got {list(b)}")
        out.append(Face(tuple(float(v) for v in b), 1.0))
    return out


#: A found face whose box overlaps a ``keep_boxes`` box with at least this IoU (or whose centre lies
#: inside it) is left visible.
KEEP_IOU = 0.3


def _check_keep(keep_faces, keep_boxes) -> tuple[list[int], list[tuple[float, float, float, float]]]:
    faces: list[int] = []
    for i in keep_faces or ():
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise UsageError(f"keep_faces takes face indices (integers >= 0), got {i!r}")
        faces.append(int(i))
    boxes = [check_box(b) for b in (keep_boxes or ())]
    return faces, boxes


def keep_box_matches(box: Sequence[float], keep: Sequence[float], min_iou: float = KEEP_IOU) -> bool:
    """Whether a found face ``box`` is the one a keep box ``keep`` designates: IoU >= ``min_iou``,
    or the face box's centre lies inside ``keep``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return keep[0] <= cx < keep[2] and keep[1] <= cy < keep[3] or box_iou(box, keep) >= min_iou


def _split_kept(plans: list[FacePlan], keep_faces: list[int], keep_boxes: list[tuple[float, float, float, float]],
                w: int, h: int) -> tuple[list[FacePlan], list[KeptFace]]:
    """The plans to veil (renumbered 0, 1, ...) and the faces to leave visible."""
    veiled: list[tuple[int, FacePlan]] = []
    kept: list[KeptFace] = []
    for p in plans:
        reason = ("keep_faces" if p.index in keep_faces else
                  "keep_boxes" if any(keep_box_matches(p.box, k) for k in keep_boxes) else None)
        if reason:
            kept.append(KeptFace(p.index, p.box, p.crop, p.score, reason))
        else:
            veiled.append((p.index, p))
    for i in sorted(set(keep_faces)):
        if i >= len(plans):
            log.warning("keep_faces: there is no face %d (%d found, numbered from 0); nothing kept for it",
                        i, len(plans))
    for k in kept:  # a veiled neighbour's crop changes the pixels it shares with a kept face
        x0, y0 = min(max(0, int(k.box[0])), w - 1), min(max(0, int(k.box[1])), h - 1)
        kb = CropBox(x0, y0, max(x0 + 1, min(w, math.ceil(k.box[2]))), max(y0 + 1, min(h, math.ceil(k.box[3]))))
        for orig, p in veiled:
            if crops_overlap(kb, p.crop):
                log.warning("face %d is kept visible, but the crop of veiled face %d overlaps its box: "
                            "the pixels they share are changed", k.index, orig)
    out = [dataclasses.replace(p, index=j) for j, (_, p) in enumerate(veiled)]
    return out, kept


# -- protect --------------------------------------------------------------------------------------

def _plans(img: LoadedImage, veil: str, veil_params: dict | None, strength: float, detector: str,
           boxes: Sequence | None, margin: float, threshold: float | None, min_face: int | None,
           keep_idx: list[int], keep_bx: list, seed: int | None) -> tuple[list[FacePlan], list[KeptFace]]:
    """Detection (or the given boxes), ordering, crops, veil parameters and the faces kept visible:
    what :func:`protect` and :func:`anonymize` share."""
    import random

    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    h, w = img.rgb.shape[:2]
    if boxes is not None:
        faces = _faces_from_boxes(boxes)
    else:
        opts = {}
        if threshold is not None:
            opts["threshold"] = float(threshold)
        if min_face is not None:
            opts["min_size"] = float(min_face)
        faces = get_detector(detector, **opts).detect(img.rgb)
    rng = random.Random(int(seed)) if seed is not None else None
    plans = plan_faces(w, h, order_faces(faces), veil, veil_params, margin, strength, rng)
    kept: list[KeptFace] = []
    if keep_idx or keep_bx:
        plans, kept = _split_kept(plans, keep_idx, keep_bx, w, h)
    return plans, kept


def protect(image: ImageLike, password: str | bytes, *, veil: str = "blur", veil_params: dict | None = None,
            model: str | LoadedModel | None = None, detector: str = "yunet", boxes: Sequence | None = None,
            margin: float = DEFAULT_MARGIN, threshold: float | None = None, min_face: int | None = None,
            kdf: dict | None = None, progress: Callable[[int], None] | None = None,
            strength: float = 1.0, keep_faces: Sequence[int] | None = None,
            keep_boxes: Sequence | None = None, seed: int | None = None,
            keep_metadata: bool = False) -> Protected:
    """Veil every face in ``image`` and hide the originals, keyed by ``password``.

    ``boxes`` (``[(x0, y0, x1, y1), ...]``) replaces detection. ``veil_params`` override the veil's
    defaults (which scale with each face's crop); ``strength`` (0.25-4) scales those defaults.
    ``kdf`` overrides the scrypt parameters (stored in the file). ``seed`` fixes what a veil draws
    per face (the cartoon sticker); without it each run draws afresh. Returns a
    :class:`Protected`; call ``.save("out.png")``.

    ``keep_faces`` (indices into the faces found, numbered as ``protect`` numbers them without
    ``keep_*``: raster order, from 0) and ``keep_boxes`` (``[(x0, y0, x1, y1), ...]``: a found face
    whose box overlaps one with IoU >= :data:`KEEP_IOU`, or whose centre lies inside one) are left
    visible: not veiled, not in the record, pixels untouched unless a veiled neighbour's crop
    overlaps them (logged as a warning). They are in ``Protected.kept``; the veiled faces are
    renumbered 0, 1, .... An index with no face is a logged warning, not an error (nothing extra
    is left visible).

    ``keep_metadata``: the PNG carries the input's EXIF (camera, dates, ...; an eXIf chunk) without
    the GPS position, thumbnail and maker notes, with Orientation 1 (the pixels are already
    turned). By default the output has no EXIF at all.
    """
    keep_idx, keep_bx = _check_keep(keep_faces, keep_boxes)
    img = _load(image)
    if ct.extract(img.text) is not None:
        raise UsageError("this image is already protected by faceveil; recover it first "
                         "(protecting twice would lose the first password's faces)")
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    h, w = img.rgb.shape[:2]
    plans, kept = _plans(img, veil, veil_params, strength, detector, boxes, margin, threshold, min_face,
                         keep_idx, keep_bx, seed)
    trained = lm.trained_veils
    if plans and trained is not None and veil not in trained:
        log.warning("model %s was not trained with the %r veil (only %s): the faces will come back "
                    "less exactly than with those", lm.name, veil, ", ".join(trained))
    if plans and lm.keyed and not lm.net.config.scramble:
        log.warning("model %s does not scramble the faces it hides (file format version 1): anyone with "
                    "faceveil can lift this protection without the password (docs/THREAT_MODEL.md)", lm.name)
    salt = new_salt()
    kdf_params = dict(kdf or DEFAULT_KDF)
    master = derive_master_key(password, salt, kdf_params) if lm.keyed else None
    out, done = protect_array(img.rgb, plans, master, lm, progress)
    infos = [FaceInfo(p.index, p.box, p.crop, p.score, p.veil, p.params) for p in done]
    record = ct.Record(
        format_version=lm.net.config.format_version,
        software=f"faceveil {__version__}",
        model=ct.ModelRef(name=lm.name, sha256=lm.sha256),
        kdf=ct.KdfParams(name=kdf_params["name"], n=kdf_params["n"], r=kdf_params["r"], p=kdf_params["p"],
                         salt=salt),
        verifier=master.verifier if master else None,
        image=ct.ImageSize(width=w, height=h),
        faces=[ct.FaceEntry(index=f.index, box=f.box, crop=f.crop.as_list(),
                            crop_size=[f.crop.width, f.crop.height], score=f.score,
                            veil=ct.VeilRef(name=f.veil, params=f.params)) for f in infos],
        pixels_sha256=_pixels_digest(out, img.alpha),
    )
    if master is not None:
        record = record.with_mac(_mac_key(master))
    return Protected(out, img.alpha, record, infos, img.info.get("icc_profile"), kept,
                     _kept_exif(img, keep_metadata))


# -- anonymize ------------------------------------------------------------------------------------

@dataclass
class Anonymized:
    """The result of :func:`anonymize`: the veiled RGB (uint8 H×W×3), the untouched alpha, the faces
    veiled and those kept visible. Nothing of the original faces is kept: this cannot be undone."""

    image: np.ndarray
    alpha: np.ndarray | None
    faces: list[FaceInfo]
    kept: list[KeptFace] = field(default_factory=list)
    icc_profile: bytes | None = None
    exif: bytes | None = None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the image (any writable format: nothing is hidden in it; no EXIF is carried over
        unless ``keep_metadata`` was asked for, and never GPS), atomically."""
        from .io.image import output_format_for

        fmt = output_format_for(path, lossless_only=False)
        write_image(path, self.image, self.alpha, icc_profile=self.icc_profile, format=fmt, overwrite=overwrite,
                    exif=self.exif)
        return Path(path)

    def to_bytes(self, format: str = "PNG") -> bytes:
        from .io.image import encode_image

        return encode_image(self.image, self.alpha, format=format, icc_profile=self.icc_profile,
                            exif=self.exif)

    to_pil = Protected.to_pil


def anonymize(image: ImageLike, *, veil: str = "blur", veil_params: dict | None = None, strength: float = 1.0,
              seed: int | None = None, detector: str = "yunet", boxes: Sequence | None = None,
              margin: float = DEFAULT_MARGIN, threshold: float | None = None, min_face: int | None = None,
              keep_faces: Sequence[int] | None = None, keep_boxes: Sequence | None = None,
              progress: Callable[[int], None] | None = None, keep_metadata: bool = False) -> Anonymized:
    """Veil every face in ``image`` for good: the same detection, crops and veils as
    :func:`protect`, but no network, no password and no record — the originals are gone.

    A protected image is refused (anonymizing it would destroy the hidden faces of its owner).
    ``seed`` makes what a veil draws per face reproducible (the cartoon sticker); without it every
    run draws afresh. ``keep_metadata`` keeps the input's EXIF as :func:`protect` does (never GPS).
    """
    from .pipeline import anonymize_array

    keep_idx, keep_bx = _check_keep(keep_faces, keep_boxes)
    img = _load(image)
    if ct.extract(img.text) is not None:
        raise UsageError("this image is protected by faceveil; recover it first (anonymizing it would "
                         "destroy the hidden faces)")
    plans, kept = _plans(img, veil, veil_params, strength, detector, boxes, margin, threshold, min_face,
                         keep_idx, keep_bx, seed)
    out, done = anonymize_array(img.rgb, plans, progress)
    infos = [FaceInfo(p.index, p.box, p.crop, p.score, p.veil, p.params) for p in done]
    return Anonymized(out, img.alpha, infos, kept, img.info.get("icc_profile"), _kept_exif(img, keep_metadata))


# -- recover --------------------------------------------------------------------------------------

def _model_for(record: ct.Record, model: str | LoadedModel | None) -> LoadedModel:
    lm = model if isinstance(model, LoadedModel) else load_model(model or record.model.name)
    if lm.sha256 != record.model.sha256:
        raise ModelError(f"this file was protected with model {record.model.name!r} "
                         f"(weights sha256 {record.model.sha256[:12]}…), which this installation does not "
                         f"have (it has {lm.name!r}, {lm.sha256[:12]}…); install the faceveil version that "
                         f"wrote it ({record.software})")
    needed = lm.net.config.format_version
    if record.format_version != needed:
        what = {1: "hides the face itself", 2: "scrambles the face", 3: "scrambles the residual"}[needed]
        raise ContainerError(f"the record says format version {record.format_version}, but model {lm.name!r} "
                             f"{what} (version {needed}): the record was altered")
    return lm


def recover(image: ImageLike, password: str | bytes, *, record: ct.Record | None = None,
            force: bool = False, model: str | LoadedModel | None = None,
            progress: Callable[[int], None] | None = None, keep_metadata: bool = False) -> Recovered:
    """Lift the veil from a protected image with its password.

    Raises :class:`WrongPasswordError` when the password fails the stored verifier, unless
    ``force`` (then the network runs anyway with the wrong key and ``verified`` is False).
    Raises :class:`ContainerError` when the record of a keyed model lacks its verifier (unless
    ``force``) or, the password being right, its MAC: faceveil writes both, so a record without
    them was stripped, and recovering it would let any edit of the record pass unnoticed.
    ``keep_metadata`` carries the protected file's EXIF (see :func:`protect`) to the output.
    """
    img = _load(image)
    rec = record or ct.extract(img.text)
    if rec is None:
        raise ContainerError("no faceveil record in this image: it was not protected by faceveil, or "
                             "another program re-saved it and dropped the metadata")
    h, w = img.rgb.shape[:2]
    rec.check_image_size(w, h)
    lm = _model_for(rec, model)
    verified = True
    master = None
    if lm.keyed:
        kdf = {"name": rec.kdf.name, "n": rec.kdf.n, "r": rec.kdf.r, "p": rec.kdf.p}
        if rec.verifier is None and not force:
            raise ContainerError("the faceveil record has no verifier, which every file protected with "
                                 f"model {lm.name!r} carries: the record was altered; refusing to recover")
        master = derive_master_key(password, rec.kdf.salt, kdf)
        if rec.verifier is None or not master.matches(rec.verifier):
            if not force:
                raise WrongPasswordError("wrong password (use --force to run the network anyway and "
                                         "see what a wrong key gives)")
            verified = False
            log.warning("wrong password: running the network anyway (--force); the output is "
                        "what an attacker without the password gets")
        elif rec.mac is None:
            raise ContainerError("the faceveil record has no mac, which every file protected with a password "
                                 "carries: the record was altered; refusing to recover")
        elif not ct.verify_mac(rec, _mac_key(master)):
            raise ContainerError("the faceveil record was altered after protection; refusing to recover")
    modified = rec.pixels_sha256 is not None and rec.pixels_sha256 != _pixels_digest(img.rgb, img.alpha)
    if modified:
        log.warning("the protected pixels were changed after protection (re-encoded or edited?); "
                    "the recovered faces will be degraded")
    for f in rec.faces:
        if not CropBox.from_list(f.crop).inside(w, h):
            raise ContainerError(f"face {f.index}: crop {f.crop} lies outside the {w}×{h} image")
    out = recover_array(img.rgb, [(f.index, CropBox.from_list(f.crop)) for f in rec.faces], master, lm,
                        progress)
    infos = [FaceInfo(f.index, tuple(f.box), CropBox.from_list(f.crop), f.score, f.veil.name,
                      dict(f.veil.params)) for f in rec.faces]
    return Recovered(out, img.alpha, rec, infos, verified, modified, img.info.get("icc_profile"),
                     _kept_exif(img, keep_metadata))


def inspect(image: ImageLike) -> dict:
    """The faceveil record of a protected image as a plain dict (nothing secret is in it)."""
    img = _load(image)
    rec = ct.extract(img.text)
    if rec is None:
        raise ContainerError("no faceveil record in this image")
    return rec.to_dict()


__all__ = ["protect", "recover", "anonymize", "inspect", "Protected", "Recovered", "Anonymized", "FaceInfo",
           "KeptFace", "FacePlan", "ImageError", "KEEP_IOU", "keep_box_matches"]
