"""``faceveil attack``: run the attack suite, write ``docs/results/security.json`` and generate
``docs/SECURITY.md`` from it (never edited by hand).

Each attack is a module with ``run(ctx) -> dict`` and ``markdown(result) -> str``; every result
carries its command, data, machine, date and duration. ``--only`` reruns some attacks and keeps the
others' stored results, so the document is always whole. ``--quick`` is a reduced run for tests and
smoke checks (a cheap scrypt, a handful of faces, seconds of decoder training): it never writes into
``docs/`` (only to ``--json-out`` when given).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from ..errors import FaceveilError, UsageError
from ..eval.report import _json_safe as json_safe
from . import byproduct, kdf, keyless, known_plaintext, reident, spoofing, wrong_keys
from .common import DEFAULT_FACES, QUICK_KDF, Context, table

log = logging.getLogger(__name__)

#: name -> module, in the order they run and appear in docs/SECURITY.md.
ATTACKS = {m.NAME: m for m in (kdf, wrong_keys, spoofing, byproduct, keyless, known_plaintext, reident)}
SECURITY_JSON = Path("docs/results/security.json")
SECURITY_MD = Path("docs/SECURITY.md")
SCHEMA = "faceveil-security/1"
DEFAULT_KEYLESS_SECONDS = 60.0


def add_attack_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``faceveil attack`` (mounted on the CLI's subparser)."""
    parser.add_argument("--faces", default=str(DEFAULT_FACES), metavar="DIR",
                        help=f"held-out face crops, one folder per person (default {DEFAULT_FACES}; never "
                             "used for training)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N held-out faces per attack")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(ATTACKS),
                        help=f"run only these attacks ({', '.join(ATTACKS)}); the others' stored results are kept")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run for tests (cheap scrypt, few faces); never written into docs/")
    parser.add_argument("--json-out", metavar="FILE", help=f"write the results here (default {SECURITY_JSON})")
    parser.add_argument("--no-write", action="store_true",
                        help=f"leave {SECURITY_JSON} and {SECURITY_MD} alone (print the summary only)")
    parser.add_argument("--model", metavar="NAME|PATH", help="model to attack (default: the shipped default)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling faces and passwords")
    parser.add_argument("--keyless-seconds", type=float, metavar="S",
                        help=f"training time per keyless decoder (default {DEFAULT_KEYLESS_SECONDS:g}; quick: 2)")
    parser.add_argument("--no-identity", action="store_true", help="skip the MobileFaceNet identity judge")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch threads (default 1: on a machine shared with other work, more threads "
                             "spin-wait on each other and run several times slower)")
    if not any("--quiet" in a.option_strings for a in parser._actions):
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _argv_of(args: argparse.Namespace) -> list[str]:
    out = []
    if args.faces != str(DEFAULT_FACES):
        out += ["--faces", str(args.faces)]
    if args.limit is not None:
        out += ["--limit", str(args.limit)]
    if args.only:
        out += ["--only", *args.only]
    if args.quick:
        out.append("--quick")
    if getattr(args, "model", None):
        out += ["--model", args.model]
    if getattr(args, "seed", 0):
        out += ["--seed", str(args.seed)]
    if getattr(args, "keyless_seconds", None) is not None:
        out += ["--keyless-seconds", f"{args.keyless_seconds:g}"]
    if getattr(args, "no_identity", False):
        out.append("--no-identity")
    if getattr(args, "threads", 1) != 1:
        out += ["--threads", str(args.threads)]
    return out


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad arguments with one line (a :class:`UsageError`) before anything runs."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    for name in args.only or ():
        if name not in ATTACKS:
            raise UsageError(f"--only: unknown attack {name!r}; choose from: {', '.join(ATTACKS)}")
    ks = getattr(args, "keyless_seconds", None)
    if ks is not None and not (0 < ks <= 86400):
        raise UsageError(f"--keyless-seconds must be a positive number of seconds, got {ks:g}")
    threads = getattr(args, "threads", 1)
    if not isinstance(threads, int) or threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    faces = Path(args.faces)
    if not faces.is_dir():
        hint = " (run `make data`)" if faces == DEFAULT_FACES else ""
        raise UsageError(f"--faces: {faces} is not a folder{hint}")
    if args.json_out and Path(args.json_out).is_dir():
        raise UsageError(f"--json-out: {args.json_out} is a folder; give a file name")


def run_attack(args: argparse.Namespace) -> int:
    """``faceveil attack``: runs the attacks, writes the JSON and ``docs/SECURITY.md``, prints the
    summary table on stdout and progress on stderr. Returns the exit code (0; findings are reported,
    not failures)."""
    check_args(args)
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(getattr(args, "threads", 1))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(saved)


def _run(args: argparse.Namespace) -> int:
    from ..models.zoo import load_model

    quiet = getattr(args, "quiet", False)
    t_start = time.time()

    def say(msg: str) -> None:
        if not quiet:
            print(f"faceveil attack: [{time.time() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    names = [n for n in ATTACKS if not args.only or n in args.only]
    ks = args.keyless_seconds if getattr(args, "keyless_seconds", None) is not None else (
        2.0 if args.quick else DEFAULT_KEYLESS_SECONDS)
    ctx = Context(faces_dir=Path(args.faces), model=load_model(getattr(args, "model", None)), quick=args.quick,
                  limit=args.limit, seed=getattr(args, "seed", 0),
                  kdf=dict(QUICK_KDF) if args.quick else dict(ctx_default_kdf()),
                  identity=not getattr(args, "no_identity", False), keyless_seconds=ks,
                  command="faceveil attack" + ("" if not _argv_of(args) else " " + shlex.join(_argv_of(args))),
                  say=say)
    write_docs = not args.no_write and not args.quick
    json_out = Path(args.json_out) if args.json_out else (SECURITY_JSON if write_docs else None)
    old = read_results(SECURITY_JSON) if write_docs else None
    results: dict = {}
    run = {"command": ctx.command, "attacks": [], "seconds": 0.0, "complete": False,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start))}

    def save() -> None:
        """After every attack: an interrupted run keeps what it finished (its run says so)."""
        run["seconds"] = round(time.time() - t_start, 1)
        doc = merge(old, results, run)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            tmp = json_out.with_name(json_out.name + ".tmp")
            tmp.write_text(json.dumps(json_safe(doc), indent=1, ensure_ascii=False) + "\n")
            tmp.replace(json_out)
        if write_docs:
            SECURITY_MD.parent.mkdir(parents=True, exist_ok=True)
            tmp = SECURITY_MD.with_name(SECURITY_MD.name + ".tmp")
            tmp.write_text(render(doc, json_out or SECURITY_JSON))
            tmp.replace(SECURITY_MD)

    for name in names:
        say(f"{name}: start")
        results[name] = ATTACKS[name].run(ctx)
        run["attacks"].append(name)
        v = results[name]["verdict"]
        say(f"{name}: {v['status']} ({results[name]['meta']['seconds']} s): {v['summary']}")
        if name != names[-1]:
            save()
    run["complete"] = True
    save()
    if json_out is not None:
        say(f"wrote {json_out}" + (f" and {SECURITY_MD}" if write_docs else ""))
    sys.stdout.write(summary_table({n: results[n] for n in names}))
    for n in names:
        if results[n]["verdict"]["status"] == "finding":
            print(f"faceveil attack: FINDING in {n}: {results[n]['verdict']['summary']}", file=sys.stderr)
    return 0


def ctx_default_kdf() -> dict:
    from ..keys import DEFAULT_KDF

    return DEFAULT_KDF


def read_results(path: Path) -> dict | None:
    try:
        d = json.loads(Path(path).read_text())
        return d if d.get("schema") == SCHEMA else None
    except (OSError, json.JSONDecodeError):
        return None


def merge(old: dict | None, new: dict, run: dict) -> dict:
    """The stored results with ``new`` ones replacing theirs, and ``run`` appended to the runs."""
    attacks = dict((old or {}).get("attacks", {}))
    attacks.update(new)
    ordered = {n: attacks[n] for n in ATTACKS if n in attacks}
    runs = list((old or {}).get("runs", [])) + [dict(run)]
    return {"schema": SCHEMA, "attacks": ordered, "runs": runs[-10:]}


def _is_full(run: dict) -> bool:
    return set(run["attacks"]) == set(ATTACKS) and run.get("complete", True)


STATUS = {"ok": "holds", "finding": "FINDING", "skipped": "skipped"}


def summary_table(results: dict) -> str:
    rows = [[f"[{r['title']}](#{_anchor(i + 1, r['title'])})", _status(r["verdict"]["status"]),
             r["verdict"]["summary"]] for i, r in enumerate(results.values())]
    return table(["attack", "verdict", "result"], rows)


def _status(s: str) -> str:
    word = STATUS.get(s, s)
    return f"**{word}**" if s == "finding" else word


def _anchor(i: int, title: str) -> str:
    import re

    return re.sub(r"[^a-z0-9 -]", "", f"{i}. {title}".lower()).replace(" ", "-")


def render(doc: dict, json_path: Path) -> str:
    """``docs/SECURITY.md`` from the results document."""
    attacks = doc["attacks"]
    last = doc["runs"][-1] if doc.get("runs") else {}
    parts = ["# Security: the attacks, measured\n\n",
             f"<!-- generated by `faceveil attack` from {json_path}; do not edit by hand: rerun the commands -->\n\n",
             "What faceveil promises, against whom, and what it does not: [THREAT_MODEL.md](THREAT_MODEL.md). "
             "Every section below was produced by the command it names, on the data and machine it names; "
             f"the numbers are in `{json_path}`. A full run is `faceveil attack` "
             f"(last full run: {_full_run_seconds(doc)}). Identity is judged by MobileFaceNet with oracle "
             "alignment (the original's landmarks), so every match rate is an upper bound on leakage.\n\n",
             "## Summary\n\n", summary_table(attacks)]
    if any(a["verdict"]["status"] == "finding" for a in attacks.values()):
        parts.append("\n**At least one attack did better than it should: see its section.**\n")
    for i, (name, r) in enumerate(attacks.items()):
        parts.append(f"\n## {i + 1}. {r['title']}\n\n")
        parts.append((ATTACKS[name].__doc__ or "").split("\n\n")[0].strip().replace("\n", " ") + "\n\n")
        parts.append(f"**Verdict: {STATUS.get(r['verdict']['status'])}** — {r['verdict']['summary']}\n\n")
        parts.append(ATTACKS[name].markdown(r))
    runs = doc.get("runs", [])
    full = [i for i, r in enumerate(runs) if _is_full(r)]
    shown = runs[full[-1]:] if full else runs  # the runs whose results are on this page
    parts.append("\n## Runs behind this page\n\n")
    parts.append(table(["command", "attacks", "seconds", "date"],
                       [[f"`{r['command']}`" + ("" if r.get("complete", True) else " (interrupted or running)"),
                         ", ".join(r["attacks"]), str(r["seconds"]), str(r["date"])] for r in shown]))
    return "".join(parts)


def _full_run_seconds(doc: dict) -> str:
    full = [r for r in doc.get("runs", []) if _is_full(r)]
    if not full:
        return "not yet"
    s = full[-1]["seconds"]
    return f"{s / 60:.1f} minutes on {_machine(doc)}"


def _machine(doc: dict) -> str:
    for r in doc["attacks"].values():
        m = r["meta"]["machine"]
        return f"{m.get('cpu')}, {m.get('cpu_count')} cores"
    return "?"


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `faceveil attack --help`)")


def main(argv: list[str] | None = None) -> int:
    """``python -m faceveil.attacks`` (the same options as ``faceveil attack``)."""
    p = _Parser(prog="faceveil attack", description=__doc__.split("\n\n")[0])
    add_attack_arguments(p)
    try:
        args = p.parse_args(argv)
        logging.basicConfig(level=logging.WARNING, format="faceveil: %(levelname)s: %(message)s")
        return run_attack(args)
    except FaceveilError as e:
        print(f"faceveil attack: error: {e}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:  # --help
        return int(e.code or 0)
