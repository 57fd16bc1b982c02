"""Shared helpers of the end-to-end tests: the CLI run in-process, passwords in the environment,
PSNR on uint8 crops, and the sample photo."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from faceveil.cli import main

ROOT = Path(__file__).resolve().parents[2]
GROUP_JPG = ROOT / "examples" / "group.jpg"  # 1280×640, four faces (examples/CREDITS.md)
GROUP_FACES = 4
# Regions of group.jpg, (x0, y0, x1, y1): one holding two small faces, one with no face at all.
TWO_FACE_REGION = (580, 120, 760, 520)
NO_FACE_REGION = (0, 0, 200, 140)

PASSWORD = "correct horse battery staple ✓"
WRONG_PASSWORD = "correct horse battery staple ✗"
PW_ENV = "FACEVEIL_TEST_PASSWORD"
WRONG_ENV = "FACEVEIL_TEST_WRONG_PASSWORD"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def json(self):
        return json.loads(self.out)

    def assert_one_error_line(self, *fragments: str) -> str:
        """Exactly one line on stderr, in the CLI's error form, no traceback; returns it."""
        assert self.code != 0, self
        assert "Traceback" not in self.err, self.err
        assert len(self.err_lines) == 1, self.err
        line = self.err_lines[0]
        assert line.startswith("faceveil: error: "), line
        assert "internal error" not in line, line
        for f in fragments:
            assert f.lower() in line.lower(), (f, line)
        return line


@contextlib.contextmanager
def _faceveil_logger_restored():
    """``main`` installs a handler on the 'faceveil' logger bound to the current stderr; put the
    logger back afterwards so later tests (and caplog) see the default set-up."""
    lg = logging.getLogger("faceveil")
    saved = (list(lg.handlers), lg.level, lg.propagate)
    try:
        yield
    finally:
        lg.handlers[:], lg.level, lg.propagate = saved[0], saved[1], saved[2]


def run_cli(*argv) -> CliResult:
    """Run ``faceveil ARGV`` in-process, capturing its streams (usable outside a test, e.g. in a
    module-scoped fixture where capsys is not available)."""
    out, err = io.StringIO(), io.StringIO()
    with _faceveil_logger_restored(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(capsys):
    """``cli("protect", path, ...)`` -> :class:`CliResult`, captured with capsys."""

    def run(*argv) -> CliResult:
        capsys.readouterr()
        with _faceveil_logger_restored():
            code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(autouse=True)
def _passwords(monkeypatch):
    monkeypatch.setenv(PW_ENV, PASSWORD)
    monkeypatch.setenv(WRONG_ENV, WRONG_PASSWORD)


# -- images ---------------------------------------------------------------------------------------

def read_rgb(path) -> np.ndarray:
    from faceveil.io.image import read_image

    return read_image(path).rgb


@pytest.fixture(scope="session")
def group_rgb() -> np.ndarray:
    return read_rgb(GROUP_JPG)


def region(rgb: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def write_png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def copy_group(folder: Path, name: str = "group.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(GROUP_JPG, folder / name))


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden and temporary ones included), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


# -- quality --------------------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (inf when identical)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, (a.shape, b.shape, a.dtype, b.dtype)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def crop_of(rgb: np.ndarray, crop) -> np.ndarray:
    """``crop``: [x0, y0, x1, y1] (x1/y1 exclusive) as stored in the record."""
    x0, y0, x1, y1 = (int(v) for v in crop)
    return rgb[y0:y1, x0:x1]


def outside(shape, crops) -> np.ndarray:
    """Boolean H×W mask of the pixels outside every crop."""
    mask = np.ones(shape[:2], dtype=bool)
    for x0, y0, x1, y1 in crops:
        mask[int(y0):int(y1), int(x0):int(x1)] = False
    return mask


def veiled_crop(original: np.ndarray, face: dict) -> np.ndarray:
    """The veil the record's face entry describes, applied to the original crop, in 8 bits."""
    from faceveil.obfuscate import apply_veil
    from faceveil.pipeline import to_tensor, to_uint8

    y, _ = apply_veil(to_tensor(crop_of(original, face["crop"])), face["veil"]["name"],
                      face["veil"]["params"])
    return to_uint8(y)

