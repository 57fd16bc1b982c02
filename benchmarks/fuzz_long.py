"""The hostile-input fuzzers of tests/integration/test_hostile.py, run for minutes instead of 300 examples.

    python benchmarks/fuzz_long.py [MINUTES] [--seed N] [--failures DIR] [--json FILE]

Three targets, the same as the test's (``tools/hostile_corpus.py``): the image loader
(``read_image_bytes`` + ``exif_for_output``) on byte mutations of small valid PNG/JPEG files (with
and without the PNG CRCs repaired, so the damage reaches the decoders), the metadata record parser
(``Record.from_json``) on byte mutations of a real record with trouble-making JSON tokens spliced
in, and the record parser on random bytes. Each may return a result or raise one of faceveil's own
errors; anything else (another exception, an assertion on the result, a case slower than
``--slow`` seconds) is a failure: its input is saved under ``--failures`` (default
``out/fuzz-failures``) and counted. Time is split evenly between the targets (``MINUTES`` in all,
default 5). Random inputs come from ``random.Random(seed)``, so a run is repeatable.

Prints a table of examples, outcomes (decoded/parsed and each error class) and failures per target,
and exits 1 when anything failed. Not part of ``make test``; run it after touching ``faceveil.io``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import logging
import random
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

_spec = importlib.util.spec_from_file_location("hostile_corpus", ROOT / "tools" / "hostile_corpus.py")
hc = importlib.util.module_from_spec(_spec)
sys.modules["hostile_corpus"] = hc
_spec.loader.exec_module(hc)


def _image_cases(rng: random.Random, seeds: dict[str, bytes]):
    names = sorted(seeds)
    while True:
        name = rng.choice(names)
        yield name, hc.mutate(seeds[name], hc.random_ops(rng), fix_png_crc=rng.random() < 0.5)


def _record_cases(rng: random.Random, record: str):
    raw = record.encode()
    while True:
        data = hc.splice(hc.mutate(raw, hc.random_ops(rng)), hc.random_tokens(rng))
        yield "record", data.decode("utf-8", "surrogateescape") if rng.random() < 0.5 else data


def _random_cases(rng: random.Random):
    while True:
        yield "random", rng.randbytes(rng.randrange(0, 2000))


def fuzz(name: str, target, cases, seconds: float, failures_dir: Path, slow: float) -> dict:
    counts: collections.Counter = collections.Counter()
    failed: list[dict] = []
    t_end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < t_end:
        seed_name, data = next(cases)
        n += 1
        t0 = time.perf_counter()
        try:
            outcome = target(data)
        except Exception as e:  # noqa: BLE001 - that is what we are looking for
            outcome = None
            why = f"{type(e).__name__}: {e}"
            tb = traceback.format_exc()
        else:
            why = tb = None
            counts[outcome] += 1
        took = time.perf_counter() - t0
        if outcome is None or took > slow:
            blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
            digest = hashlib.sha256(blob).hexdigest()[:16]
            failures_dir.mkdir(parents=True, exist_ok=True)
            path = failures_dir / f"{name}-{seed_name}-{digest}.bin"
            path.write_bytes(blob)
            why = why or f"slow: {took:.2f} s"
            if tb:
                path.with_suffix(".txt").write_text(tb, encoding="utf-8")
            failed.append({"input": str(path), "why": why})
            print(f"FAIL {name}: {why} -> {path}", file=sys.stderr)
    return {"target": name, "examples": n, "seconds": round(seconds, 1), "outcomes": dict(counts.most_common()),
            "failures": failed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("minutes", nargs="?", type=float, default=5.0, help="total run time (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--failures", type=Path, default=ROOT / "out" / "fuzz-failures",
                   help="where failing inputs are saved")
    p.add_argument("--slow", type=float, default=5.0, help="a case slower than this (s) is a failure")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("MINUTES must be positive")
    logging.getLogger("faceveil").addHandler(logging.NullHandler())  # its warnings on damaged files
    logging.getLogger("faceveil").propagate = False
    rng = random.Random(args.seed)
    targets = [
        ("image", hc.image_target, _image_cases(rng, hc.seed_images())),
        ("record", hc.record_target, _record_cases(rng, hc.sample_record())),
        ("record-random", hc.record_target, _random_cases(rng)),
    ]
    per = args.minutes * 60 / len(targets)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns on damaged metadata; only exceptions matter
        for name, target, cases in targets:
            results.append(fuzz(name, target, cases, per, args.failures, args.slow))
    print(f"{'target':14s} {'examples':>9s} {'per s':>7s} {'failures':>8s}  outcomes")
    for r in results:
        outs = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())
        print(f"{r['target']:14s} {r['examples']:9d} {r['examples'] / r['seconds']:7.0f} "
              f"{len(r['failures']):8d}  {outs}")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "minutes": args.minutes, "results": results},
                                        indent=2) + "\n", encoding="utf-8")
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
