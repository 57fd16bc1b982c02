"""Batch speed: ``faceveil protect|recover DIR --out-dir ... -j 1`` vs ``-j 2`` (worker processes).

    python benchmarks/batch_speed.py [--files 16] [--jobs 1 2] [--repeats 1] [--no-write]

Makes a folder of ``--files`` photos in a temporary directory (1200×600 crops of
``examples/group.jpg`` at different offsets, each with the photo's 4 faces, saved as PNG), then
times the real command end to end (``python -m faceveil``, a fresh process: start-up, model load
and, with ``-j N``, starting the workers included) for each ``-j``: protect into one folder,
recover that folder into another. Reports the wall time (median of ``--repeats``), files per
second, the speed-up over the first ``-j``, and the CPU time of the command and its workers per
second of wall time ("cores busy"). It also checks that every ``-j`` recovers the same pixels.

The results go into the ``batch_speed`` section of ``docs/RESULTS.md`` (and
``docs/results/batch_speed.json``) unless ``--no-write``. The load average before each run is
recorded: on a shared machine other work competes for the cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from PIL import Image  # noqa: E402

from faceveil.cli.batch import cpu_count  # noqa: E402
from faceveil.eval.harness import machine_info  # noqa: E402
from faceveil.eval.report import RESULTS_MD, update_section  # noqa: E402
from faceveil.io.image import read_image  # noqa: E402
from faceveil.models.zoo import load_model  # noqa: E402

PHOTO = ROOT / "examples" / "group.jpg"
SECTION = "batch_speed"
PASSWORD_ENV = "FACEVEIL_BENCH_PASSWORD"


def make_folder(folder: Path, n: int) -> None:
    """``n`` different 1200×600 crops of the group photo (all four faces inside), in two sub-folders."""
    im = Image.open(PHOTO).convert("RGB")
    w, h = im.size
    for i in range(n):
        dx, dy = (i * 5) % (w - 1200 + 1), (i * 3) % (h - 600 + 1)
        out = folder / ("a" if i % 2 else "b") / f"photo{i:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        im.crop((dx, dy, dx + 1200, dy + 600)).save(out)


def busy_jiffies() -> int | None:
    """CPU time (clock ticks) all processes on the machine have used so far (Linux /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            f = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return f[0] + f[1] + f[2] + sum(f[5:8])  # user nice system (idle iowait) irq softirq steal


def run(argv: list[str]) -> dict:
    """Run ``python -m faceveil ARGV``; wall time, CPU time of it and its workers, and the cores
    the rest of the machine kept busy meanwhile (other work competing for them)."""
    env = dict(os.environ, **{PASSWORD_ENV: "batch benchmark"})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    j0 = busy_jiffies()
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "faceveil", *argv, "--password-env", PASSWORD_ENV, "-q"],
                       env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    j1 = busy_jiffies()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"faceveil {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    others = None
    if j0 is not None and j1 is not None:
        others = max(0.0, (j1 - j0) / os.sysconf("SC_CLK_TCK") - cpu) / wall
    return {"wall_s": wall, "cpu_s": cpu, "load_before": load, "other_cores": others}


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file's decoded pixels (RGB, and alpha if any)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            img = read_image(p)
            h = hashlib.sha256(img.rgb.tobytes())
            if img.alpha is not None:
                h.update(img.alpha.tobytes())
            out[str(p.relative_to(folder))] = h.hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting (median)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: rewrite the docs/RESULTS.md section from docs/results/batch_speed.json")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads((ROOT / "docs" / "results" / "batch_speed.json").read_text())
        update_section(ROOT / RESULTS_MD, SECTION, markdown(res))
        print(f"wrote the {SECTION} section of {RESULTS_MD}")
        return 0

    lm = load_model(None)
    tmp = Path(tempfile.mkdtemp(prefix="faceveil-batch-"))
    rows = []
    try:
        src = tmp / "photos"
        make_folder(src, args.files)
        recovered: dict[int, dict[str, str]] = {}
        for command in ("protect", "recover"):
            for j in args.jobs:
                runs, report = [], None
                for r in range(args.repeats):
                    if command == "protect":
                        out = tmp / f"veiled-j{j}-{r}"
                        argv_ = ["protect", str(src), "--out-dir", str(out)]
                    else:
                        out = tmp / f"back-j{j}-{r}"
                        argv_ = ["recover", str(tmp / f"veiled-j{args.jobs[0]}-0"), "--out-dir", str(out)]
                    rep = tmp / f"report-{command}-j{j}-{r}.json"
                    runs.append(run([*argv_, "-j", str(j), "--report", str(rep)]))
                    report = json.loads(rep.read_text())
                    if report["ok"] != args.files:
                        raise SystemExit(f"{command} -j {j}: {report['ok']} of {args.files} files ok")
                    if command == "recover":
                        recovered[j] = digests(out)
                    if not (command == "protect" and j == args.jobs[0] and r == 0):  # recover reads that one
                        shutil.rmtree(out, ignore_errors=True)
                wall = statistics.median(x["wall_s"] for x in runs)
                cpu = statistics.median(x["cpu_s"] for x in runs)
                row = {"command": command, "jobs": j, "files": args.files, "faces": report["faces"],
                       "wall_s": round(wall, 2), "files_per_s": round(args.files / wall, 3),
                       "batch_s": report["seconds"], "cpu_s": round(cpu, 2), "cores_busy": round(cpu / wall, 2),
                       "load_before": [round(x["load_before"], 2) for x in runs],
                       "other_work_cores": [None if x["other_cores"] is None else round(x["other_cores"], 2)
                                            for x in runs],
                       "repeats": args.repeats}
                rows.append(row)
                print(f"{command:8s} -j {j}: {wall:6.1f} s wall ({args.files / wall:.2f} files/s), "
                      f"{cpu:6.1f} s CPU ({cpu / wall:.2f} cores busy), other work {row['other_work_cores']} "
                      f"cores, load before {row['load_before']}",
                      flush=True)
        identical = all(recovered[j] == recovered[args.jobs[0]] for j in recovered)
        print(f"recovered pixels identical across -j {args.jobs}: {identical}")
        for j in recovered:
            differ = sorted(k for k in recovered[j] if recovered[j][k] != recovered[args.jobs[0]].get(k))
            if differ:
                print(f"  -j {j} differs from -j {args.jobs[0]} in {differ}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = {r["command"]: r["wall_s"] for r in rows if r["jobs"] == args.jobs[0]}
    for r in rows:
        r["speedup"] = round(base[r["command"]] / r["wall_s"], 2)
    mach = machine_info()
    mach["cores_available"] = cpu_count()
    command = "python benchmarks/batch_speed.py" + (f" --files {args.files}" if args.files != 16 else "") + \
        (f" --repeats {args.repeats}" if args.repeats != 1 else "")
    res = {"command": command, "model": {"name": lm.name, "sha256": lm.sha256}, "machine": mach,
           "photo": "1200×600 crops of examples/group.jpg, 4 faces each, PNG", "rows": rows,
           "recovered_identical_across_jobs": identical}
    if args.no_write:
        return 0
    jp = ROOT / "docs" / "results" / "batch_speed.json"
    jp.parent.mkdir(parents=True, exist_ok=True)
    jp.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    update_section(ROOT / RESULTS_MD, SECTION, markdown(res))
    print(f"wrote {jp.relative_to(ROOT)} and the {SECTION} section of {RESULTS_MD}")
    return 0


def markdown(res: dict) -> str:
    """The ``batch_speed`` section of docs/RESULTS.md from the JSON result."""
    rows, mach = res["rows"], res["machine"]
    jobs = sorted({r["jobs"] for r in rows})
    n = rows[0]["files"]
    lines = [f"Command: `{res['command']}` — {n} photos (1200×600 crops of `examples/group.jpg`, 4 faces "
             f"each), the whole `faceveil` command timed end to end (start-up, model load and worker start "
             f"included), model {res['model']['name']}, {mach.get('cpu')}, **{mach['cores_available']} cores**, "
             "shared with other work: *cores busy* is the CPU time of the command and its workers per second "
             "of wall time, *other work* the cores the rest of the machine kept busy meanwhile.\n",
             "| command | -j | wall | files/s | speed-up | CPU time | cores busy | other work | load before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['command']} | {r['jobs']} | {r['wall_s']:.1f} s | {r['files_per_s']:.2f} | "
                     f"{r['speedup']:.2f}× | {r['cpu_s']:.1f} s | {r['cores_busy']:.2f} | "
                     f"{', '.join('–' if v is None else f'{v:.2f}' for v in r['other_work_cores'])} cores | "
                     f"{', '.join(f'{v:.2f}' for v in r['load_before'])} |")
    lines.append("")
    lines.append(f"Recovered pixels identical (bit for bit) across `-j {' / '.join(map(str, jobs))}`: "
                 f"{'yes' if res['recovered_identical_across_jobs'] else 'NO'}.")
    others = [v for r in rows for v in r["other_work_cores"] if v is not None]
    cpu = {(r["command"], r["jobs"]): r["cpu_s"] for r in rows}
    if others and min(others) >= 0.5:
        lines.append("")
        lines.append(f"Other work kept {min(others):.1f}-{max(others):.1f} of the {mach['cores_available']} "
                     "cores busy during every run, so these are speed-ups on a shared machine, not on an idle "
                     "one (not measured here). With `-j 1` the one process runs "
                     f"{mach['torch_threads']} torch threads that wait for each other whenever one of them "
                     f"shares its core with other work (CPU time for the same {n} files: "
                     + ", ".join(f"{c} {cpu[(c, jobs[0])]:.0f} s at -j {jobs[0]} vs {cpu[(c, jobs[-1])]:.0f} s at "
                                 f"-j {jobs[-1]}" for c in ("protect", "recover"))
                     + f"); the `-j {jobs[-1]}` workers run {max(1, mach['cores_available'] // jobs[-1])} thread "
                     "each and do not wait. On an idle machine the speed-up is bounded by the core count "
                     f"({mach['cores_available']}×).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
