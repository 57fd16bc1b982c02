"""Load on `faceveil serve`: many concurrent protect requests on loopback, latency and memory.

    python benchmarks/serve_load.py [--requests 50] [--workers 1 2] [--photo examples/group.jpg]
                                    [--deadline 600] [--no-write]

For each ``--workers`` value a real server is started as a separate process (``python -m faceveil
serve -q``); ``--requests`` protect requests (the photo, a fresh password each) are all sent at
once from one asyncio client; each request's latency (send to last byte) and status are recorded
while the server's resident memory (the process and its children) is sampled every 20 ms. The run
is bounded: every request has a timeout, the whole storm a deadline, and the server is stopped at
the end whatever happens. Peak memory is compared with the server's idle memory after start-up.

The results go into the ``serve_load`` section of ``docs/RESULTS.md`` (and
``docs/results/serve_load.json``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import psutil  # noqa: E402

from faceveil.eval.harness import machine_info  # noqa: E402
from faceveil.eval.report import RESULTS_MD, update_section  # noqa: E402

SECTION = "serve_load"
#: Pseudo-statuses of requests that got no answer.
STATUS_NAMES = {"-1": "timed out or refused", "-2": "unanswered at the deadline"}
PHOTO = ROOT / "examples" / "group.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MemorySampler(threading.Thread):
    """Peak RSS of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.proc, self.interval, self.peak, self.stop = psutil.Process(pid), interval, 0, threading.Event()

    def rss(self) -> int:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running())
        except psutil.Error:
            return 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def storm(url: str, body: bytes, n: int, deadline: float) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=deadline, limits=limits) as client:
        async def one(i: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            try:
                r = await client.post("/api/protect", files={"image": ("photo.jpg", body, "image/jpeg")},
                                      data={"password": f"load test password {i}", "veil": "blur"})
                code = r.status_code
            except httpx.HTTPError:
                code = -1  # timeout or connection error
            return code, time.perf_counter() - t0

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:  # self-stopping: whatever is left at the deadline is abandoned
            t.cancel()
        return [t.result() for t in done] + [(-2, deadline)] * len(pending)


def run_one(workers: int, n: int, photo: Path, deadline: float) -> dict:
    """One server with ``workers`` workers, ``n`` requests at once; the numbers of the table."""
    port = free_port()
    cmd = [sys.executable, "-m", "faceveil", "serve", "--port", str(port), "-q", "--workers", str(workers),
           "--max-pending", str(max(64, n))]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        t_start = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() - t_start > 120:
                raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-500:]}")
            time.sleep(0.2)
        startup = time.monotonic() - t_start
        load_before = os.getloadavg()[0]  # other work on the machine: the numbers are only as quiet as it
        sampler = MemorySampler(server.pid)
        idle = sampler.rss()
        sampler.start()
        body = photo.read_bytes()
        t0 = time.perf_counter()
        results = asyncio.run(storm(url, body, n, deadline))
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        healthy = httpx.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    ok = [t for c, t in results if c == 200]
    codes: dict[str, int] = {}
    for c, _ in results:
        codes[str(c)] = codes.get(str(c), 0) + 1
    return {
        "workers": workers, "requests": n, "status_counts": codes, "ok": len(ok),
        "latency_s": {"p50": pct(ok, 0.5), "p90": pct(ok, 0.9), "p99": pct(ok, 0.99),
                      "max": max(ok) if ok else float("nan"), "mean": statistics.fmean(ok) if ok else float("nan")},
        "wall_s": wall, "throughput_per_s": len(ok) / wall if wall else float("nan"),
        "idle_rss_mib": idle / 2**20, "peak_rss_mib": sampler.peak / 2**20, "startup_s": startup,
        "healthy_after": healthy, "load_avg_before": load_before,
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"{res['requests']} protect requests sent at once to `faceveil serve` on loopback "
        f"(`{res['photo']}`, {res['photo_size']}, {res['faces']} faces, blur veil, a fresh password and "
        f"scrypt derivation per request); {m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, "
        f"torch {m.get('torch', '?')}. Command: `python benchmarks/serve_load.py`; "
        f"{res['when']}.",
        "",
        "| workers | ok | other statuses | p50 s | p90 s | p99 s | max s | photos/s | idle RSS MiB | peak RSS MiB | load avg before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        other = ", ".join(f"{STATUS_NAMES.get(k, k)}: {v}" for k, v in sorted(r["status_counts"].items())
                          if k != "200") or "none"
        lat = r["latency_s"]
        lines.append(f"| {r['workers']} | {r['ok']}/{r['requests']} | {other} | {lat['p50']:.1f} | {lat['p90']:.1f} | "
                     f"{lat['p99']:.1f} | {lat['max']:.1f} | {r['throughput_per_s']:.2f} | "
                     f"{r['idle_rss_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r.get('load_avg_before', float('nan')):.1f} |")
    lines += ["", "*load avg before*: the machine's 1-minute load average when the storm started; above 0 "
              "means other work shared the cores, and the latencies are that much longer than on an idle "
              "machine.", "", "Latency is from sending a request to its last byte, so with every request queued at once "
              "it grows with the queue: the p50 is about half the storm's length. Memory stays bounded by the "
              "admission limit (`--max-pending`) times the upload size plus `--workers` photos in flight."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--photo", type=Path, default=PHOTO)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds before the storm is abandoned")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite the docs section from the saved JSON")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads((ROOT / "docs" / "results" / f"{SECTION}.json").read_text())
        update_section(RESULTS_MD, SECTION, markdown(res))
        return 0
    if args.requests < 1 or any(w < 1 for w in args.workers):
        ap.error("--requests and --workers must be positive")

    from faceveil import api

    probe = api.protect(args.photo, "probe")
    h, w = probe.image.shape[:2]
    runs = []
    for workers in args.workers:
        r = run_one(workers, args.requests, args.photo, args.deadline)
        print(json.dumps(r), flush=True)
        runs.append(r)
    try:
        photo_name = str(args.photo.resolve().relative_to(ROOT))
    except ValueError:
        photo_name = args.photo.name
    res = {"benchmark": SECTION, "photo": photo_name, "photo_size": f"{w}×{h}", "faces": len(probe.faces),
           "requests": args.requests, "runs": runs, "machine": machine_info(),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    text = markdown(res)
    print(text)
    if not args.no_write:
        out = ROOT / "docs" / "results" / f"{SECTION}.json"
        out.write_text(json.dumps(res, indent=2) + "\n")
        update_section(RESULTS_MD, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
