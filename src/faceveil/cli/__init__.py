"""The ``faceveil`` command line. ``main(argv) -> int`` is testable in-process.

Exit codes: 0 success; 2 usage; 3 wrong password; 1 any other failure. Every failure is one line on
stderr (``faceveil: error: ...``), never a traceback, and leaves no output file behind. Control
characters in messages (a file name may hold a line break or a terminal escape sequence) are shown
escaped, and Python warnings (Pillow's, on odd files) become ``faceveil: WARNING: ...`` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

from .. import __version__
from ..errors import FaceveilError, UsageError, WrongPasswordError

log = logging.getLogger("faceveil")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm",
                  ".pbm", ".heic", ".avif"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` owns the exit code and the message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `faceveil {self.prog.split()[-1]} --help`)"
                         if " " in self.prog else message)


# -- passwords ------------------------------------------------------------------------------------

def read_password(args: argparse.Namespace, *, confirm: bool) -> str:
    """From ``--password-env``, ``--password-file``, ``--password`` (warns) or a prompt without echo."""
    if getattr(args, "password_env", None):
        value = os.environ.get(args.password_env)
        if not value:
            raise UsageError(f"environment variable {args.password_env} is not set or empty")
        return value
    if getattr(args, "password_file", None):
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read password file {args.password_file}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
        value = text.splitlines()[0] if text.splitlines() else ""
        if not value:
            raise UsageError(f"password file {args.password_file} is empty")
        return value
    if getattr(args, "password", None):
        log.warning("--password puts the password in your shell history and the process list; "
                    "prefer --password-env or --password-file")
        return args.password
    if not sys.stdin.isatty():
        raise UsageError("no password given: use --password-env VAR or --password-file FILE "
                         "(there is no terminal to prompt on)")
    try:
        value = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password (again): ") != value:
            raise UsageError("the passwords do not match")
    except (EOFError, KeyboardInterrupt):
        raise UsageError("no password entered") from None
    if not value:
        raise UsageError("the password is empty")
    return value


def add_password_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    g.add_argument("--password-file", metavar="F", help="read the password from the first line of this file")
    g.add_argument("--password", help=argparse.SUPPRESS)


# -- inputs and outputs ---------------------------------------------------------------------------

def expand_inputs(inputs: Iterable[str]) -> list[tuple[Path, Path]]:
    """Files stay as given; a folder contributes its images (recursively). Returns
    ``(file, path relative to its root)`` pairs, de-duplicated, in a stable order."""
    out: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            pairs = [(f, f.relative_to(p)) for f in files]
        elif p.exists():
            pairs = [(p, Path(p.name))]
        else:
            raise UsageError(f"{raw}: no such file or folder")
        for f, rel in pairs:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append((f, rel))
    return out


def output_path(src: Path, rel: Path, args: argparse.Namespace, tag: str, n_inputs: int,
                suffix: str = ".png") -> Path:
    if args.output:
        return Path(args.output)
    stem = rel.with_suffix("").name
    if tag == "recovered" and stem.endswith(".veiled"):
        stem = stem[: -len(".veiled")]
    name = f"{stem}.{tag}{suffix}"
    if args.out_dir:
        return Path(args.out_dir) / rel.parent / name
    return src.with_name(name)


def _check_io_args(args: argparse.Namespace, files: list) -> None:
    if args.output and args.out_dir:
        raise UsageError("give either -o/--output or --out-dir, not both")
    if args.output and len(files) != 1:
        raise UsageError(f"-o/--output names one file but there are {len(files)} inputs; use --out-dir")


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: object) -> str:
    """``text`` with control characters and line breaks escaped (``\\n``, ``\\x1b``, ...): a file
    name can hold them, and a message must stay one line that cannot drive the terminal."""
    return str(text).translate(_CONTROL)


class OneLineFormatter(logging.Formatter):
    """Log lines with :func:`one_line` applied to the message (a traceback, with -v, stays as is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI and its workers: one faceveil WARNING log line."""
    text = str(message).strip()
    log.warning("%s", text.splitlines()[0] if text else category.__name__)


@contextlib.contextmanager
def warnings_as_log_lines():
    """Python warnings become one ``faceveil: WARNING:`` line each (not a file:line report and a
    source line). Pillow's DecompressionBombWarning is silenced: faceveil refuses images above its
    own limit (``max_pixels``, 100 MP) from the header, and Pillow's hard refusal still applies."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.showwarning = show_warning
        yield


def _say_error(msg: str) -> None:
    print(f"faceveil: error: {one_line(msg)}", file=sys.stderr)


# -- commands -------------------------------------------------------------------------------------

def _parse_params(items: list[str] | None) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--veil-param takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        for cast in (int, float):
            try:
                out[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[k] = v
    return out


def _parse_boxes(items: list[str] | None) -> list | None:
    if not items:
        return None
    boxes = []
    for item in items:
        try:
            vals = [float(v) for v in item.split(",")]
        except ValueError:
            raise UsageError(f"--box takes x0,y0,x1,y1, got {item!r}") from None
        if len(vals) != 4:
            raise UsageError(f"--box takes x0,y0,x1,y1, got {item!r}")
        boxes.append(vals)
    return boxes


def _inputs(args: argparse.Namespace, lossless_only: bool) -> list[tuple[Path, Path]]:
    """The input files, after the checks every batch command makes before it starts."""
    from ..io.image import output_format_for

    files = expand_inputs(args.inputs)
    _check_io_args(args, files)
    if args.output:
        output_format_for(args.output, lossless_only=lossless_only)
    if not files:
        raise UsageError("no images found in the given folders")
    return files


def _veil_batch(args: argparse.Namespace, command: str, lossless_only: bool):
    """The checks and the :class:`batch.BatchSpec` that protect and anonymize share (veil,
    parameters, boxes, faces to keep), all made before any work or password prompt."""
    from ..obfuscate import get_veil
    from . import batch

    files = _inputs(args, lossless_only=lossless_only)
    params = _parse_params(args.veil_param)
    boxes = _parse_boxes(args.box)
    get_veil(args.veil)
    keep = batch.KeepBoxes(args.keep_boxes) if args.keep_boxes else None
    if args.report:
        batch.check_report_path(args.report, files)
    spec = batch.BatchSpec(command, model=getattr(args, "model", None), overwrite=args.overwrite,
                           keep_metadata=args.keep_metadata, veil=args.veil, veil_params=params, strength=args.strength, boxes=boxes,
                           margin=args.margin, threshold=args.threshold, min_face=args.min_face,
                           keep_faces=tuple(sorted(set(args.keep_face or ()))), seed=args.seed)
    return files, spec, keep


def cmd_protect(args: argparse.Namespace) -> int:
    from ..models import load_model
    from . import batch

    files, spec, keep = _veil_batch(args, "protect", lossless_only=True)
    model = load_model(args.model)
    password = read_password(args, confirm=True)
    return batch.run_batch(args, spec, files, password, model, keep=keep, lossless_only=True)


def cmd_recover(args: argparse.Namespace) -> int:
    from . import batch

    files = _inputs(args, lossless_only=False)
    if args.report:
        batch.check_report_path(args.report, files)
    password = read_password(args, confirm=False)
    spec = batch.BatchSpec("recover", model=args.model, overwrite=args.overwrite, force=args.force,
                           keep_metadata=args.keep_metadata)
    return batch.run_batch(args, spec, files, password, args.model, lossless_only=False)


def cmd_anonymize(args: argparse.Namespace) -> int:
    from . import batch

    files, spec, keep = _veil_batch(args, "anonymize", lossless_only=False)
    return batch.run_batch(args, spec, files, "", None, keep=keep, lossless_only=False)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .. import api

    print(json.dumps(api.inspect(args.file), indent=2))
    return 0


def cmd_veils(args: argparse.Namespace) -> int:
    from ..obfuscate import VEILS

    rows = {name: {"summary": v.summary, "defaults_at_112px": v.defaults(112), "params": v.param_help}
            for name, v in sorted(VEILS.items())}
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for name, row in rows.items():
            print(f"{name:10s} {row['summary']}")
            for k, h in row["params"].items():
                print(f"{'':10s}   {k}: {h} (112 px default: {row['defaults_at_112px'].get(k)})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.zoo import available_models, read_manifest

    m = read_manifest()
    rows = {name: {k: e.get(k) for k in ("arch", "version", "wr_mode", "sha256", "description")}
            for name, e in available_models().items()}
    if args.json:
        print(json.dumps({"default": m.get("default"), "models": rows}, indent=2))
    else:
        for name, r in rows.items():
            star = "*" if name == m.get("default") else " "
            print(f"{star} {name:22s} {r['arch']:10s} {r.get('wr_mode') or '':7s} {r.get('description') or ''}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.cli import run_train

    return run_train(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..web import ServeConfig, serve

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise UsageError("--max-upload-mb and --max-megapixels must be positive")
    cfg = ServeConfig(model=args.model, workers=args.workers,
                      max_pending=max(args.max_pending, args.workers),
                      max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                      max_pixels=int(args.max_megapixels * 1_000_000))
    serve(args.host, args.port, cfg, log_level="warning" if args.quiet else "info", announce=not args.quiet)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from ..attacks.suite import run_attack

    return run_attack(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.harness import run_eval

    return run_eval(args)


def cmd_eval_veils(args: argparse.Namespace) -> int:
    from ..eval.veils import run_veil_eval

    return run_veil_eval(args)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="faceveil", description="Veil every face in a photo; lift the veil with "
                       "the password.")
    p.add_argument("--version", action="version", version=f"faceveil {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    def io_opts(sp, password: bool = True, model: bool = True):
        sp.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
        g = sp.add_argument_group("output")
        g.add_argument("-o", "--output", metavar="OUT", help="output file (one input only)")
        g.add_argument("--out-dir", metavar="DIR", help="output folder (mirrors input folders)")
        x = g.add_mutually_exclusive_group()
        x.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
        x.add_argument("--skip-existing", action="store_true",
                       help="leave an input whose output exists alone (status 'skipped'): resumes a batch")
        g.add_argument("--keep-metadata", action="store_true",
                       help="keep the input's EXIF (camera, dates, ...) in the output, without the GPS "
                            "position, thumbnail and maker notes; by default outputs carry no EXIF")
        if password:
            add_password_options(sp)
        if model:
            sp.add_argument("--model", metavar="NAME|PATH", help="model name or .safetensors file")
        sp.add_argument("-j", "--jobs", type=non_negative_int, default=1, metavar="N",
                        help="files processed at once, each in its own worker process (default 1; "
                             "0: one per CPU core)")
        sp.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
        sp.add_argument("--report", metavar="FILE",
                        help="write a JSON report of every file (status, faces, veil, errors, time)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary, no warnings")

    from ..detect.geometry import DEFAULT_MARGIN
    from ..obfuscate import VEILS
    from .batch import non_negative_int

    def veil_opts(sp):
        sp.add_argument("--veil", default="blur", choices=sorted(VEILS), help="the veil (default: blur)")
        sp.add_argument("--strength", type=float, default=1.0,
                        help="scale the veil's size-scaled defaults (0.25-4, default 1)")
        sp.add_argument("--veil-param", action="append", metavar="NAME=VALUE",
                        help="override a veil parameter (repeatable; see `faceveil veils`)")
        sp.add_argument("--box", action="append", metavar="x0,y0,x1,y1",
                        help="veil this box instead of detecting faces (repeatable)")
        sp.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help=f"extra border around each face box, as a fraction of its size (default {DEFAULT_MARGIN})")
        sp.add_argument("--threshold", type=float, help="detection confidence threshold (0-1)")
        sp.add_argument("--min-face", type=int, help="smallest face to detect, in pixels")
        sp.add_argument("--keep-face", action="append", type=non_negative_int, metavar="N",
                        help="leave face N visible (repeatable; numbered from 0 as `protect --json` and "
                             "`inspect` number them; an N the photo does not have is a warning)")
        sp.add_argument("--keep-boxes", metavar="FILE",
                        help="JSON: boxes [[x0,y0,x1,y1], ...] whose faces stay visible in every input, or "
                             '{"photo.jpg": [[...]], ...} per input; a face matches at IoU >= 0.3 or when '
                             "its centre lies inside")
        sp.add_argument("--seed", type=int, help="make what the veil draws per face reproducible (the "
                        "cartoon sticker); without it every run draws afresh")

    sp = sub.add_parser("protect", help="veil the faces; the originals stay hidden in the PNG")
    io_opts(sp)
    veil_opts(sp)
    sp.set_defaults(func=cmd_protect)

    sp = sub.add_parser("anonymize", help="veil the faces for good (no password; cannot be undone)")
    io_opts(sp, password=False, model=False)
    veil_opts(sp)
    sp.set_defaults(func=cmd_anonymize)

    sp = sub.add_parser("recover", help="lift the veil with the password")
    io_opts(sp)
    sp.add_argument("--force", action="store_true",
                    help="run the network even when the password is wrong (shows the wrong-key output)")
    sp.set_defaults(func=cmd_recover)

    sp = sub.add_parser("inspect", help="print a protected file's metadata as JSON")
    sp.add_argument("file", metavar="FILE")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("veils", help="list the registered veils")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_veils)

    sp = sub.add_parser("models", help="list the shipped models")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("train", help="train a model (see configs/)")
    from ..train.cli import add_train_arguments

    add_train_arguments(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("serve", help="run the local web app and REST API")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument("--model", metavar="NAME|PATH", help="protection model (default: the shipped default)")
    sp.add_argument("--workers", type=int, default=1,
                    help="photos processed at once (default 1; each uses cores/workers threads)")
    sp.add_argument("--max-pending", type=int, default=64,
                    help="requests admitted at once, queued or running; more get 503 (default 64)")
    sp.add_argument("--max-upload-mb", type=float, default=30, help="largest upload in MiB (default 30)")
    sp.add_argument("--max-megapixels", type=float, default=40, help="largest image in megapixels (default 40)")
    sp.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("attack", help="run the attack suite against our own scheme (docs/SECURITY.md)")
    from ..attacks.suite import add_attack_arguments

    add_attack_arguments(sp)
    sp.set_defaults(func=cmd_attack)

    sp = sub.add_parser("eval", help="evaluate a model on a folder of aligned face crops")
    from ..eval.harness import add_eval_arguments

    add_eval_arguments(sp)
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("eval-veils", help="measure every veil like the pose-consistency paper: detection, "
                        "landmarks, identity, SSIM, Fréchet distance, time (LFW crops and photos)")
    from ..eval.veils import add_veil_eval_arguments

    add_veil_eval_arguments(sp)
    sp.set_defaults(func=cmd_eval_veils)
    return p


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else (logging.ERROR if quiet else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("faceveil: %(levelname)s: %(message)s"))
    root = logging.getLogger("faceveil")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if verbose:
        logging.getLogger("faceveil").handlers[0].setFormatter(
            OneLineFormatter("faceveil: %(levelname)s: %(name)s: %(message)s"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings_as_log_lines():
        return _main(argv)


def _main(argv: list[str]) -> int:
    try:
        parser = build_parser()
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        args = parser.parse_args(argv)
        _setup_logging(args.verbose, getattr(args, "quiet", False))
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args))
    except FaceveilError as e:
        _say_error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _say_error("interrupted")
        return 130
    except BrokenPipeError:  # `faceveil inspect x.png | head`: not an error worth a message
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    except MemoryError:
        _say_error("out of memory (try a smaller image)")
        return 1
    except OSError as e:
        _say_error(f"{e.filename + ': ' if getattr(e, 'filename', None) else ''}{e.strerror or e}")
        return 1
    except SystemExit as e:  # argparse --help / --version
        return int(e.code or 0)
    except Exception as e:  # a bug: still one line, the traceback only with -v
        log.debug("internal error", exc_info=True)
        _say_error(f"internal error: {type(e).__name__}: {e} (run with -v for details; please report it)")
        return 1


def entry() -> None:
    sys.exit(main())


__all__ = ["main", "entry", "WrongPasswordError"]
