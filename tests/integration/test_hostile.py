"""Hostile and damaged input, end to end: every entry of the generated corpus
(``tools/hostile_corpus.py``) through the real CLI (in-process ``faceveil.cli.main``, as in
test_cli.py), asserting the outcome its manifest defines; and hypothesis fuzzing of the two parsers
that meet untrusted bytes first, the metadata record and the image loader, which may only ever raise
faceveil's own errors (``benchmarks/fuzz_long.py`` runs the same fuzzers for longer).

An ``error`` outcome: a non-zero exit status, exactly one ``faceveil: error: ...`` line on stderr
(``faceveil: WARNING: ...`` lines aside), printable (control characters in file names escaped), no
traceback, no "internal error", no output file or temporary file anywhere, the input's bytes
unchanged. An ``ok`` outcome: exit 0, one output that decodes (and the manifest's extra checks).
Each case runs under a hang guard.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from faceveil import errors

from .conftest import PASSWORD, PW_ENV, ROOT, digest, listing, run_cli

_spec = importlib.util.spec_from_file_location("hostile_corpus", ROOT / "tools" / "hostile_corpus.py")
hc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("hostile_corpus", hc)
_spec.loader.exec_module(hc)

CASE_TIMEOUT_S = 60  # one CLI run; the slowest (first protect: model load) takes a few seconds
WARNING_PREFIX = "faceveil: WARNING: "
FACEVEIL_ERRORS = {c.__name__ for c in vars(errors).values()
                   if isinstance(c, type) and issubclass(c, errors.FaceveilError)}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# -- the corpus -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    manifest = hc.build(root, PASSWORD)
    return root, manifest


def cases(manifest: dict, command: str) -> list[dict]:
    return [e for e in manifest["entries"] if command in e["commands"]]


class Hang(BaseException):
    """A case ran past CASE_TIMEOUT_S (BaseException: the CLI's `except Exception` cannot eat it)."""


@contextlib.contextmanager
def hang_guard(seconds: float):
    """SIGALRM interrupts a case that runs too long; if the process is stuck in C code and even that
    cannot fire, faulthandler dumps every thread and ends the run instead of hanging CI."""
    import faulthandler

    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds * 3, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()


def _argv(command: str, src: Path, out: Path, extra: list[str]) -> list:
    if command == "inspect":
        return ["inspect", src]
    argv = [command, src, "--out-dir", out]
    if command in ("protect", "recover"):
        argv += ["--password-env", PW_ENV]
    return argv + extra


def _out_dir(kind: str | None, work: Path) -> Path:
    if kind is None:
        return work / "out"
    if kind == "missing":
        return work / "missing" / "deeper"
    if kind == "file":
        p = work / "a-file"
        p.write_bytes(b"I am a file, not a folder")
        return p
    if kind == "readonly":
        p = work / "read-only"
        p.mkdir()
        p.chmod(0o555)
        return p
    raise AssertionError(f"unknown output kind {kind!r}")


def run_case(root: Path, manifest: dict, entry: dict, command: str, work: Path) -> list[str]:
    """Run one (entry, command); return what is wrong with the outcome (empty: as defined)."""
    expected = entry["commands"][command]
    src = root / entry["file"]
    work.mkdir(parents=True)
    out = _out_dir(entry.get("output"), work)
    out_before = out.read_bytes() if out.is_file() else None
    before_digest, before_listing = digest(src), listing(root / "files")
    t0 = time.perf_counter()
    try:
        with hang_guard(CASE_TIMEOUT_S), _read_only_for_root(out if entry.get("output") == "readonly" else None):
            res = run_cli(*_argv(command, src, out, entry.get("args", {}).get(command, [])))
    except Hang as e:
        return [str(e)]
    finally:
        if entry.get("output") == "readonly":
            out.chmod(0o755)
    seconds = time.perf_counter() - t0
    problems: list[str] = []
    where = f"exit {res.code}, stderr {res.err!r}"
    if "Traceback" in res.err or "internal error" in res.err:
        problems.append(f"traceback or internal error: {where}")
    if digest(src) != before_digest:
        problems.append("the input file changed")
    new_files = sorted(set(listing(root / "files")) - set(before_listing))
    if new_files:
        problems.append(f"files appeared beside the inputs: {new_files}")
    lines = [line for line in res.err.splitlines() if line.strip()]
    bad = [line for line in lines if not line.isprintable()]
    if bad:
        problems.append(f"unprintable characters on stderr: {bad!r}")
    errors_ = [line for line in lines if not line.startswith(WARNING_PREFIX)]
    produced = [] if not out.is_dir() else listing(out)
    if expected == "error":
        if res.code == 0:
            problems.append(f"succeeded, expected an error: {where}")
        want_code = entry.get("exit_code", {}).get(command)
        if want_code is not None and res.code != want_code:
            problems.append(f"exit {res.code}, expected {want_code}")
        if len(errors_) != 1 or not errors_[0].startswith("faceveil: error: "):
            problems.append(f"expected exactly one 'faceveil: error:' line: {res.err!r}")
        pattern = entry.get("match", {}).get(command)
        if pattern and not any(re.search(pattern, line, re.IGNORECASE) for line in errors_):
            problems.append(f"error line does not match {pattern!r}: {errors_!r}")
        if produced:
            problems.append(f"left files in the output folder: {produced}")
        if out_before is not None and out.read_bytes() != out_before:
            problems.append("the file named as --out-dir changed")
    else:
        if res.code != 0:
            problems.append(f"failed, expected success: {where}")
        elif errors_:
            problems.append(f"stderr lines other than warnings: {errors_!r}")
        elif command == "inspect":
            try:
                doc = json.loads(res.out)
                if doc.get("format") != "faceveil":
                    problems.append(f"inspect printed no record: {res.out[:200]!r}")
            except json.JSONDecodeError:
                problems.append(f"inspect printed no JSON: {res.out[:200]!r}")
        elif len(produced) != 1:
            problems.append(f"expected one output file, found {produced}")
        else:
            problems += check_output(out / produced[0], command, entry, manifest)
    if seconds > CASE_TIMEOUT_S / 2:
        problems.append(f"took {seconds:.1f} s")
    return problems


def check_output(path: Path, command: str, entry: dict, manifest: dict) -> list[str]:
    from faceveil import api
    from faceveil.io.image import read_image

    problems = []
    try:
        img = read_image(path)
    except errors.FaceveilError as e:
        return [f"the output does not decode: {e}"]
    if command == "protect":
        try:
            rec = api.inspect(path)
            if rec["image"] != {"width": img.width, "height": img.height}:
                problems.append(f"record size {rec['image']} != image {img.width}×{img.height}")
        except errors.FaceveilError as e:
            problems.append(f"the protected output has no valid record: {e}")
    expect = entry.get("expect", {})
    if "size" in expect and [img.width, img.height] != expect["size"]:
        problems.append(f"output is {img.width}×{img.height}, expected {expect['size']}")
    if "alpha" in expect and (img.alpha is not None) != expect["alpha"] and path.suffix != ".jpg":
        problems.append(f"alpha channel {'kept' if img.alpha is not None else 'lost'}, expected "
                        f"{'kept' if expect['alpha'] else 'none'}")
    with Image.open(path) as im:
        exif = im.getexif()
        plain = np.asarray(im.convert("RGB"))  # as stored: no EXIF orientation applied
        gps = exif.get_ifd(0x8825)
        sub = exif.get_ifd(0x8769)
    if gps or 0x8825 in exif:
        problems.append(f"GPS survived: {dict(gps)}")
    if exif.get(0x0112, 1) != 1:
        problems.append(f"EXIF orientation {exif.get(0x0112)} in the output")
    if expect.get("quadrants"):
        want_w, want_h = manifest["display"]["size"]
        if plain.shape[:2] != (want_h, want_w):
            problems.append(f"stored as {plain.shape[1]}×{plain.shape[0]}, expected {want_w}×{want_h} upright")
        else:
            got = hc.quadrant_colours(plain)
            for k, rgb in manifest["display"]["quadrants"].items():
                if max(abs(a - b) for a, b in zip(got[k], rgb)) > 40:
                    problems.append(f"{k} is {got[k]}, expected {tuple(rgb)}: orientation not baked in")
    if expect.get("exif") == "none" and len(exif):
        problems.append(f"EXIF carried over without --keep-metadata: {dict(exif)}")
    if expect.get("exif") == "kept":
        if exif.get(0x010F) != "HostileCam" or exif.get(0x0132) != "2024:05:06 07:08:09":
            problems.append(f"--keep-metadata lost the camera tags: {dict(exif)}")
        if exif.get(0x0112) != 1:
            problems.append("--keep-metadata: Orientation is not 1")
        if 0x927C in sub:
            problems.append("--keep-metadata kept the maker note")
    return problems


@contextlib.contextmanager
def _read_only_for_root(folder: Path | None):
    """root writes into a read-only folder anyway: for root, creating a file in ``folder`` fails
    with EACCES as it would for anyone else (the error path under test is faceveil's)."""
    if folder is None or not IS_ROOT:
        yield
        return
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir") or (args[2] if len(args) > 2 else "")).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkstemp", mkstemp)
        yield


@pytest.fixture
def cheap_kdf(monkeypatch):
    """protect through the CLI derives its key with a cheap scrypt (the corpus is about parsing)."""
    import faceveil.api

    monkeypatch.setattr(faceveil.api, "DEFAULT_KDF", dict(hc.KDF))


@pytest.mark.parametrize("command", hc.ALL)
def test_every_corpus_entry_has_its_defined_outcome(corpus, command, tmp_path, cheap_kdf):
    root, manifest = corpus
    failures = []
    for i, entry in enumerate(cases(manifest, command)):
        problems = run_case(root, manifest, entry, command, tmp_path / f"{i:03d}")
        if problems:
            failures.append(f"{entry['id']} ({entry['file']!r}, expected {entry['commands'][command]}): "
                            + "; ".join(problems))
    assert not failures, f"{len(failures)} {command} case(s) not as the manifest defines:\n" + "\n".join(failures)


def test_the_corpus_covers_the_hostile_cases(corpus):
    root, manifest = corpus
    ids = {e["id"] for e in manifest["entries"]}
    wanted = {"empty", "truncated-png", "truncated-jpeg", "jpeg-named-png", "png-named-jpg", "text-as-png",
              "zip-as-png", "bomb-declared", "bomb-compressed", "enormous-png", "one-pixel", "grey16-png",
              "rgb16-png", "cmyk-jpeg", "palette-png", "palette-trns-png", "rgba-png", "grey-png",
              "grey-alpha-png", "animated-gif", "apng", "record-missing", "record-bad-json", "tampered-crop",
              "format-version-99", "reencoded-jpeg", "resized", "cropped", "unicode-name",
              "output-readonly", "output-missing"}
    wanted |= {f"exif-orientation-{o}" for o in range(1, 9)}
    wanted |= {f"field-removed-{k}" for k in ("format", "format_version", "software", "model", "kdf", "image",
                                              "faces", "verifier", "mac", "pixels_sha256")}
    assert wanted <= ids, sorted(wanted - ids)
    for e in manifest["entries"]:
        assert (root / e["file"]).is_file(), e
        assert set(e["commands"]) <= set(hc.ALL) and set(e["commands"].values()) <= {"ok", "error"}, e
        assert e["reason"] and "\n" not in e["reason"], e
    # nothing big is written: the bombs are bombs only when decoded
    assert sum((root / e["file"]).stat().st_size for e in manifest["entries"]) < 2_000_000


# -- fuzzing -------------------------------------------------------------------------------------------

SEEDS = hc.seed_images()
RECORD = hc.sample_record()
ops = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome_ok(outcome: str, success: str) -> None:
    assert outcome == success or outcome in FACEVEIL_ERRORS, outcome


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns on some damaged metadata
@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), ops=ops, fix_crc=st.booleans())
def test_fuzz_image_loader_only_raises_faceveil_errors(seed, ops, fix_crc):
    _outcome_ok(hc.image_target(hc.mutate(SEEDS[seed], ops, fix_png_crc=fix_crc)), "decoded")


@FUZZ
@given(ops=ops, tokens=st.lists(st.tuples(st.integers(0, 1 << 16), st.sampled_from(hc.RECORD_TOKENS)),
                                max_size=3), as_text=st.booleans())
def test_fuzz_mutated_records_only_raise_container_errors(ops, tokens, as_text):
    data = hc.splice(hc.mutate(RECORD.encode(), ops), tokens)
    if as_text:
        data = data.decode("utf-8", "surrogateescape")
    _outcome_ok(hc.record_target(data), "parsed")


@FUZZ
@given(st.binary(max_size=2000) | st.text(max_size=500))
def test_fuzz_random_records_only_raise_container_errors(blob):
    _outcome_ok(hc.record_target(blob), "parsed")


def test_unmutated_seeds_are_accepted():
    """The fuzzers start from valid inputs (else they would only test the first check)."""
    for name, data in SEEDS.items():
        assert hc.image_target(data) == "decoded", name
    assert hc.record_target(RECORD) == "parsed"
