"""Batch runs of ``faceveil protect`` / ``faceveil recover`` on many files.

:func:`run_batch` plans every file first (its output path; ``--skip-existing``; an existing output,
the input itself or an output two inputs share is that file's error), then processes the files in
this process (``-j 1``) or in a pool of worker processes (``-j N``), and reports them **in input
order**: a progress bar and per-file error lines on stderr, a one-line summary, ``--json`` on
stdout, ``--report FILE``. One failing file never stops the others; the exit code is 0 when none
failed, 3 when every failure was a wrong password, 2 when every failure was a usage error, 1
otherwise, 130 when interrupted (Ctrl-C: files not started are cancelled, the files being
processed are finished, so no output is ever partial; a second Ctrl-C stops them at once, their
temporary files removed).

Workers (``-j N``): ``spawn`` processes (torch and ``fork`` do not mix), each loading the model once
in its initializer and running ``cores // N`` torch threads (``OMP_NUM_THREADS`` likewise), so N
workers share the cores without oversubscription. The password reaches them through the
initializer's arguments, which travel pickled through the pipe that starts each process: never
argv, never a file; the ``--password-env`` variable is taken out of the environment the workers
inherit. A worker logs into a list that comes back with the file's result; the main process
prints it, so stderr stays in input order and nothing is lost with ``-q`` (the report keeps the
warnings).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import FaceveilError, ImageError, UsageError
from . import one_line

log = logging.getLogger("faceveil")

#: The logger every faceveil module logs under (``faceveil.api``, ``faceveil.io.image``, ...).
_LOGGER = "faceveil"


# -- options ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchSpec:
    """What to do to every file; picklable, and holds no secret (the password travels apart)."""

    command: str  # "protect", "recover" or "anonymize"
    model: str | None = None
    overwrite: bool = False
    keep_metadata: bool = False  # the input's EXIF, less GPS/thumbnail/maker notes, Orientation 1
    # protect
    veil: str = "blur"
    veil_params: dict = field(default_factory=dict)
    strength: float = 1.0
    boxes: list | None = None
    margin: float = 0.15
    threshold: float | None = None
    min_face: int | None = None
    keep_faces: tuple[int, ...] = ()
    seed: int | None = None  # what a veil draws per face (protect, anonymize)
    # recover
    force: bool = False


@dataclass
class Task:
    """One file to process: ``keep_boxes`` are this photo's boxes to leave visible (protect)."""

    src: Path
    dst: Path
    keep_boxes: list | None = None


@dataclass
class Planned:
    src: Path
    dst: Path | None
    task: Task | None = None
    result: dict | None = None  # set when the file is decided before any work (skipped, error)


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers and ``taskset`` set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: int, n_tasks: int) -> int:
    """``-j``: 0 means one worker per core; never more workers than files."""
    n = cpu_count() if jobs == 0 else jobs
    return max(1, min(n, n_tasks))


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v


# -- keep boxes ---------------------------------------------------------------------------------------

class KeepBoxes:
    """``--keep-boxes FILE``: JSON, either a list of boxes ``[[x0, y0, x1, y1], ...]`` for every
    input, or an object mapping an input (the path as given on the command line or as found in a
    folder, its path relative to that folder, or any path to the same file) to such a list."""

    def __init__(self, path: str) -> None:
        from ..detect.geometry import check_box

        self.path = path
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise UsageError(f"cannot read --keep-boxes file {path}: {e.strerror or e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"--keep-boxes file {path} is not valid JSON: {e}") from None

        def boxes(value, where: str) -> list:
            if not isinstance(value, list):
                raise UsageError(f"--keep-boxes file {path}: {where} must be a list of [x0, y0, x1, y1] "
                                 f"boxes, got {type(value).__name__}")
            out = []
            for b in value:
                if not isinstance(b, list) or len(b) != 4 or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in b):
                    raise UsageError(f"--keep-boxes file {path}: {where}: a box is [x0, y0, x1, y1] "
                                     f"(four numbers), got {json.dumps(b)}")
                try:
                    out.append(list(check_box(b)))
                except UsageError as e:
                    raise UsageError(f"--keep-boxes file {path}: {where}: {e}") from None
            return out

        self.every: list | None = None
        self.by_key: dict[str, list] = {}
        self.names: dict[str, str] = {}  # normalised key -> the key as written
        self.used: set[str] = set()
        if isinstance(data, list):
            self.every = boxes(data, "the list")
        elif isinstance(data, dict):
            for k, v in data.items():
                for norm in self._keys(Path(k)):
                    self.by_key[norm] = boxes(v, f"entry {k!r}")
                    self.names[norm] = k
        else:
            raise UsageError(f"--keep-boxes file {path} must hold a list of boxes or an object mapping "
                             f"files to lists of boxes, got {type(data).__name__}")

    @staticmethod
    def _keys(p: Path) -> list[str]:
        keys = [os.path.normpath(str(p))]
        with contextlib.suppress(OSError, RuntimeError):
            keys.append(str(p.resolve()))
        return keys

    def lookup(self, src: Path, rel: Path) -> list | None:
        if self.every is not None:
            return self.every
        for k in [*self._keys(src), os.path.normpath(str(rel))]:
            if k in self.by_key:
                self.used.add(self.names[k])
                return self.by_key[k]
        return None

    def unused(self) -> list[str]:
        return sorted(set(self.names.values()) - self.used)


# -- one file ---------------------------------------------------------------------------------------

def _entry(command: str, src: Path, dst: Path | None) -> dict:
    """A file's row in the JSON summary / report; every key present (``None`` when not applicable)."""
    e: dict[str, Any] = {"input": str(src), "output": str(dst) if dst else None, "status": None,
                         "faces": None, "boxes": None}
    if command in ("protect", "anonymize"):
        e["kept"] = None
    e.update(veil=None, model=None)
    if command == "recover":
        e.update(verified=None, modified=None)
    e.update(seconds=None, error=None, exit_code=None, warnings=[])
    return e


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.items: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # noqa: BLE001 - a broken log call must not fail the file
            msg = str(record.msg)
        self.items.append((record.levelno, msg))


@contextlib.contextmanager
def _collect_logs():
    """Route the faceveil logger into a list for the duration (the caller prints it)."""
    lg = logging.getLogger(_LOGGER)
    h = _Collect()
    saved = list(lg.handlers)
    lg.handlers[:] = [h]
    try:
        yield h.items
    finally:
        lg.handlers[:] = saved


def make_output_folder(dst: Path) -> None:
    """Create ``dst``'s folder and its parents (a missing ``--out-dir`` is made); when that cannot
    be done, one clear error instead of the OS's bare "File exists"."""
    folder = dst.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"cannot create the output folder {folder}: a file is in the way "
                         "(it or one of its parents is a file)") from None
    except OSError as e:
        raise ImageError(f"cannot create the output folder {folder}: {e.strerror or e}") from None


def _protect(spec: BatchSpec, password: str, model, task: Task) -> dict:
    from .. import api

    res = api.protect(task.src, password, veil=spec.veil, veil_params=spec.veil_params, model=model,
                      boxes=spec.boxes, margin=spec.margin, threshold=spec.threshold, min_face=spec.min_face,
                      strength=spec.strength, keep_faces=spec.keep_faces, keep_boxes=task.keep_boxes,
                      seed=spec.seed, keep_metadata=spec.keep_metadata)
    if not res.faces and not res.kept:
        log.warning("no face found; copied through unchanged")
    make_output_folder(task.dst)
    res.save(task.dst, overwrite=spec.overwrite)
    return {"faces": len(res.faces), "boxes": [f.to_dict()["box"] for f in res.faces],
            "kept": [k.to_dict() for k in res.kept], "veil": spec.veil, "model": res.record.model.name}


def _anonymize(spec: BatchSpec, password: str, model, task: Task) -> dict:
    from .. import api

    res = api.anonymize(task.src, veil=spec.veil, veil_params=spec.veil_params, strength=spec.strength,
                        seed=spec.seed, boxes=spec.boxes, margin=spec.margin, threshold=spec.threshold,
                        min_face=spec.min_face, keep_faces=spec.keep_faces, keep_boxes=task.keep_boxes,
                        keep_metadata=spec.keep_metadata)
    if not res.faces and not res.kept:
        log.warning("no face found; copied through unchanged")
    make_output_folder(task.dst)
    res.save(task.dst, overwrite=spec.overwrite)
    return {"faces": len(res.faces), "boxes": [f.to_dict()["box"] for f in res.faces],
            "kept": [k.to_dict() for k in res.kept], "veil": spec.veil,
            "params": [f.params for f in res.faces]}


_COMMANDS = {"protect": "_protect", "recover": "_recover", "anonymize": "_anonymize"}


def _recover(spec: BatchSpec, password: str, model, task: Task) -> dict:
    from .. import api

    res = api.recover(task.src, password, force=spec.force, model=model, keep_metadata=spec.keep_metadata)
    make_output_folder(task.dst)
    res.save(task.dst, overwrite=spec.overwrite)
    veils = sorted({f.veil for f in res.faces})
    return {"faces": len(res.faces), "boxes": [f.to_dict()["box"] for f in res.faces],
            "veil": ",".join(veils) or None, "model": res.record.model.name, "verified": res.verified,
            "modified": res.modified}


def process_file(spec: BatchSpec, password: str, model, task: Task) -> dict:
    """Protect or recover one file; never raises for a failure of that file (it is in the result).
    The logs it made are in ``result["_log"]`` as ``(level, message)`` pairs."""
    t0 = time.perf_counter()
    e = _entry(spec.command, task.src, task.dst)
    with _collect_logs() as logs:
        try:
            e.update(globals()[_COMMANDS[spec.command]](spec, password, model, task))
            e["status"] = "ok"
        except FaceveilError as err:
            e.update(status="error", error=str(err), exit_code=err.exit_code)
        except MemoryError:
            e.update(status="error", error="out of memory (try a smaller image)", exit_code=1)
        except OSError as err:
            name = f"{err.filename}: " if getattr(err, "filename", None) else ""
            e.update(status="error", error=f"{name}{err.strerror or err}", exit_code=1)
        except Exception as err:  # noqa: BLE001 - a bug: this file fails, the batch goes on
            log.debug("internal error", exc_info=True)
            e.update(status="error", exit_code=1, error=f"internal error: {type(err).__name__}: {err} "
                                                        "(run with -v for details; please report it)")
    e["seconds"] = round(time.perf_counter() - t0, 3)
    prefix = f"{task.src}: "
    e["_log"] = [(lvl, m if m.startswith(prefix) else prefix + m) for lvl, m in logs]
    return e


# -- worker processes -------------------------------------------------------------------------------

_WORKER: dict = {}


class _Terminated(BaseException):
    """SIGTERM in a worker while it processes a file: unwinds it (temporary files removed)."""


def _on_sigterm(signum, frame):  # pragma: no cover - runs in a worker process
    if _WORKER.get("busy"):
        raise _Terminated()
    os._exit(128 + signum)


def _init_worker(spec: BatchSpec, password: str, threads: int, level: int) -> None:  # pragma: no cover
    """Runs once in each worker process (coverage does not follow spawned processes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    signal.signal(signal.SIGTERM, _on_sigterm)
    import warnings

    from PIL import Image

    from . import show_warning

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # as in the main process
    warnings.showwarning = show_warning  # a log line, collected with the file's result
    lg = logging.getLogger(_LOGGER)
    lg.handlers[:] = []
    lg.setLevel(level)
    lg.propagate = False
    import torch

    torch.set_num_threads(threads)
    from ..models import load_model

    model = spec.model
    with contextlib.suppress(FaceveilError):  # a bad model fails each file, with its message
        if spec.command == "anonymize":  # no network
            raise FaceveilError("no model")
        lm = load_model(spec.model)  # cached in this process: recover's default model too
        if spec.command == "protect":
            model = lm
    _WORKER.update(spec=spec, password=password, model=model, busy=False)


def _work(task: Task) -> dict:  # pragma: no cover - runs in a worker process
    _WORKER["busy"] = True
    try:
        return process_file(_WORKER["spec"], _WORKER["password"], _WORKER["model"], task)
    except _Terminated:
        os._exit(128 + signal.SIGTERM)
    finally:
        _WORKER["busy"] = False


@contextlib.contextmanager
def _worker_birth(threads: int, hide: str | None):
    """While worker processes are started: they inherit SIGINT ignored (no KeyboardInterrupt
    while they import torch), ``OMP_NUM_THREADS=threads``, and not the password's variable."""
    main_thread = threading.current_thread() is threading.main_thread()
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", hide) if k}
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if hide:
        os.environ.pop(hide, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if main_thread:
            signal.signal(signal.SIGINT, old_int)


# -- planning -----------------------------------------------------------------------------------------

def plan(args: argparse.Namespace, command: str, files: list[tuple[Path, Path]], keep: KeepBoxes | None,
         lossless_only: bool) -> list[Planned]:
    """Every input's output and fate, before any work. A file found in a folder that is another
    input's output (``x.veiled.png`` beside ``x.jpg`` on a second run) is left out."""
    from ..io.image import output_format_for, same_file
    from . import output_path

    from ..io.image import _WRITABLE

    tag = {"protect": "veiled", "recover": "recovered", "anonymize": "anonymized"}[command]
    skip = bool(getattr(args, "skip_existing", False))

    def resolved(p: Path) -> Path:
        try:
            return p.resolve()
        except (OSError, RuntimeError):
            return p.absolute()

    dsts: list[Path | FaceveilError] = []
    for src, rel in files:
        try:
            # anonymize keeps the input's format where it can write it (nothing is hidden in it)
            suffix = src.suffix.lower() if command == "anonymize" and src.suffix.lower() in _WRITABLE else ".png"
            dst = output_path(src, rel, args, tag, len(files), suffix)
            output_format_for(dst, lossless_only=lossless_only)
            dsts.append(dst)
        except FaceveilError as e:
            dsts.append(e)
    given = {resolved(Path(raw)) for raw in args.inputs if not Path(raw).is_dir()}
    outputs = {resolved(d) for d in dsts if isinstance(d, Path)}
    out: list[Planned] = []
    claimed: dict[Path, Path] = {}
    for (src, rel), dst in zip(files, dsts):
        rsrc = resolved(src)
        if rsrc in outputs and rsrc not in given:
            log.debug("%s: left out: it is the output of another input", src)
            continue
        if isinstance(dst, FaceveilError):
            out.append(_decided(command, src, None, "error", dst))
            continue
        rdst = resolved(dst)
        if os.path.lexists(dst) and same_file(dst, src):
            out.append(_decided(command, src, dst, "error", UsageError(
                f"the output {dst} is the input; faceveil never overwrites an original")))
        elif rdst in claimed:
            out.append(_decided(command, src, dst, "error", UsageError(
                f"{dst} is also the output of {claimed[rdst]}; rename one of them")))
        elif os.path.lexists(dst) and skip:
            out.append(_decided(command, src, dst, "skipped"))
        elif os.path.lexists(dst) and not args.overwrite:
            out.append(_decided(command, src, dst, "error", UsageError(
                f"{dst} exists; choose another name or pass --overwrite (or --skip-existing)")))
        else:
            boxes = keep.lookup(src, rel) if keep else None
            out.append(Planned(src, dst, Task(src, dst, boxes)))
        claimed.setdefault(rdst, src)
    if keep:
        for k in keep.unused():
            log.warning("--keep-boxes %s: %r matches no input", keep.path, k)
    return out


def _decided(command: str, src: Path, dst: Path | None, status: str, err: FaceveilError | None = None) -> Planned:
    e = _entry(command, src, dst)
    e.update(status=status, seconds=0.0)
    if err is not None:
        e.update(error=str(err), exit_code=err.exit_code)
    return Planned(src, dst, None, e)


# -- the run --------------------------------------------------------------------------------------------

class _Console:
    """stderr during a batch: the progress bar, error lines and the files' log lines, which go
    through the faceveil logger's handlers (their levels apply) and above the bar when it shows."""

    def __init__(self, total: int, quiet: bool, desc: str) -> None:
        self.bar = None
        if not quiet and total > 0:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="file", file=sys.stderr, leave=False,
                                dynamic_ncols=True,
                                disable=not sys.stderr.isatty() and os.environ.get("FACEVEIL_PROGRESS") != "1")

    def line(self, text: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def log(self, level: int, msg: str) -> None:
        for h in logging.getLogger(_LOGGER).handlers:
            if level >= h.level:
                rec = logging.LogRecord(_LOGGER, level, __file__, 0, msg, None, None)
                if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__):
                    self.line(h.format(rec))
                else:
                    h.handle(rec)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _warnings_kept():
    """Log records of WARNING and above are made even with ``-q`` (they go into the report); the
    handlers keep the logger's former level, so stderr shows what it showed before."""
    lg = logging.getLogger(_LOGGER)
    old = lg.level or logging.WARNING
    saved = [(h, h.level) for h in lg.handlers]
    for h in lg.handlers:
        h.setLevel(max(h.level, old))
    lg.setLevel(min(old, logging.WARNING))
    try:
        yield
    finally:
        lg.setLevel(old)
        for h, lvl in saved:
            h.setLevel(lvl)


def write_report(path: str | Path, doc: dict) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``); an existing report is replaced."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def check_report_path(path: str, files: list[tuple[Path, Path]]) -> None:
    from ..io.image import same_file

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--report {path} is a folder; give a file name")
    if p.exists() and any(same_file(p, src) for src, _ in files):
        raise UsageError(f"--report {path} is one of the inputs")


def exit_code(codes: list[int]) -> int:
    failed = [c for c in codes if c]
    if not failed:
        return 0
    if all(c == 3 for c in failed):
        return 3
    if all(c == 2 for c in failed):
        return 2
    return 1


def run_batch(args: argparse.Namespace, spec: BatchSpec, files: list[tuple[Path, Path]], password: str,
              model, keep: KeepBoxes | None = None, lossless_only: bool = False) -> int:
    """Plan, process and report a batch (see the module docs). ``model``: a loaded model (protect)
    or a name (recover) for this process; workers load their own."""
    command = spec.command
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    quiet = bool(getattr(args, "quiet", False))
    planned = plan(args, command, files, keep, lossless_only)
    n_tasks = sum(p.task is not None for p in planned)
    jobs = resolve_jobs(getattr(args, "jobs", 1), n_tasks)
    results: list[dict | None] = [None] * len(planned)
    console = _Console(len(planned), quiet, command)
    interrupted = False

    def emit(i: int, res: dict) -> None:
        logs = res.pop("_log", [])
        res["warnings"] = [m for lvl, m in logs if lvl >= logging.WARNING]
        results[i] = res
        for lvl, m in logs:
            console.log(lvl, m)
        if res["status"] == "error":
            console.line(f"faceveil: error: {one_line(res['input'])}: {one_line(res['error'])}")
        console.step()

    try:
        with _warnings_kept():
            if jobs <= 1:
                for i, p in enumerate(planned):
                    emit(i, p.result if p.task is None else process_file(spec, password, model, p.task))
            else:
                _run_pool(args, spec, password, planned, jobs, emit)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        console.close()

    for i, p in enumerate(planned):
        if results[i] is None:
            e = _entry(command, p.src, p.dst)
            e.update(status="cancelled", error="interrupted before it was done")
            results[i] = e
    done = [r for r in results if r["status"] != "cancelled"]
    ok = [r for r in done if r["status"] == "ok"]
    n_skipped = sum(r["status"] == "skipped" for r in done)
    failed = [r for r in done if r["status"] == "error"]
    seconds = time.perf_counter() - t0
    doc = {"command": command, "version": __version__, "started": started.isoformat(timespec="seconds"),
           "seconds": round(seconds, 3), "jobs": jobs, "interrupted": interrupted, "total": len(results),
           "ok": len(ok), "skipped": n_skipped, "failed": len(failed),
           "cancelled": len(results) - len(done), "faces": sum(r["faces"] or 0 for r in ok)}
    if command in ("protect", "anonymize"):
        doc["kept"] = sum(len(r["kept"] or ()) for r in ok)
    doc["files"] = results

    report_failed = False
    if getattr(args, "report", None):
        try:
            write_report(args.report, doc)
        except OSError as e:
            console.line(f"faceveil: error: cannot write the report {one_line(args.report)}: "
                         f"{one_line(e.strerror or e)}")
            report_failed = True
    if args.json:
        print(json.dumps(doc, indent=None))
    if interrupted:
        print(f"faceveil: error: interrupted: {len(done)} of {len(results)} files done; run the same "
              "command with --skip-existing to resume", file=sys.stderr)
        return 130
    if len(results) > 1 and not quiet:
        kept = f", {doc['kept']} kept visible" if doc.get("kept") else ""
        workers = f", {jobs} workers" if jobs > 1 else ""
        print(f"faceveil: {command}: {len(results)} files ({len(ok)} ok, {n_skipped} skipped, "
              f"{len(failed)} failed), {doc['faces']} faces{kept}, {_fmt_seconds(seconds)}{workers}",
              file=sys.stderr)
    return exit_code([r["exit_code"] or 0 for r in failed] + [1] * report_failed)


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _run_pool(args: argparse.Namespace, spec: BatchSpec, password: str, planned: list[Planned], jobs: int,
              emit) -> None:
    """Process the planned tasks in ``jobs`` worker processes, emitting results in input order.
    Only ``jobs`` files are ever handed to the pool at once (a new one when one finishes), so on
    Ctrl-C nothing is queued inside the pool: the files being processed finish, no other starts."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    def broken(i: int) -> dict:
        e = _entry(spec.command, planned[i].src, planned[i].dst)
        e.update(status="error", exit_code=1, error="a worker process died (out of memory?); run the same "
                 "command with --skip-existing to retry the files not done")
        return e

    todo = iter([i for i, p in enumerate(planned) if p.task is not None])
    inflight: dict = {}  # future -> index
    results: dict[int, dict] = {}
    nxt = 0

    def refill() -> None:
        while len(inflight) < jobs:
            i = next(todo, None)
            if i is None:
                return
            try:
                inflight[ex.submit(_work, planned[i].task)] = i
            except BrokenProcessPool:
                results[i] = broken(i)

    def flush(everything: bool = False) -> None:
        nonlocal nxt
        while nxt < len(planned):
            if planned[nxt].task is None:
                emit(nxt, planned[nxt].result)
            elif nxt in results:
                emit(nxt, results.pop(nxt))
            elif not everything:
                return
            nxt += 1

    threads = max(1, cpu_count() // jobs)
    level = min(logging.getLogger(_LOGGER).getEffectiveLevel(), logging.WARNING)
    with _worker_birth(threads, getattr(args, "password_env", None)):
        ex = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(spec, password, threads, level))
        refill()  # the first ``jobs`` submissions start the workers
    try:
        flush()
        while inflight:
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for f in done:
                i = inflight.pop(f)
                try:
                    results[i] = f.result()
                except BrokenProcessPool:
                    results[i] = broken(i)
            refill()
            flush()
        for f in list(todo):  # the pool broke before they could be submitted
            results.setdefault(f, broken(f))
        flush()
    except KeyboardInterrupt:
        try:  # the files being processed are finished: no output is ever partial
            ex.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:  # a second Ctrl-C: stop them now (they remove their temporary files)
            for proc in list((getattr(ex, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    proc.terminate()
            ex.shutdown(wait=True, cancel_futures=True)
        for f, i in inflight.items():
            if f.done() and not f.cancelled() and f.exception() is None:
                results[i] = f.result()
        flush(everything=True)  # what was done, in input order; the rest is 'cancelled'
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


__all__ = ["BatchSpec", "Task", "KeepBoxes", "run_batch", "process_file", "plan", "write_report",
           "resolve_jobs", "cpu_count", "exit_code"]
