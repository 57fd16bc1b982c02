"""``faceveil train``: run or resume a training run from a YAML config, or export its weights."""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from ..errors import UsageError

log = logging.getLogger(__name__)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="training config (see configs/); defaults apply to "
                   "missing keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config value, e.g. --set optim.steps=500 (YAML value syntax)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in this invocation")
    p.add_argument("--max-minutes", type=float, help="stop (and checkpoint) after this many minutes")
    p.add_argument("--export", metavar="PATH", help="write the run's best weights (.safetensors) here "
                   "and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-q", "--quiet", action="store_true")


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise UsageError(f"--set {k}: cannot parse value {v!r}") from None
    return out


def run_train(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, _overrides(args.set))
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if args.export:
        from pathlib import Path
        import shutil

        run = Path(cfg.out_dir) / cfg.name
        src = run / "best.safetensors"
        if not src.exists():
            src = run / "last.safetensors"
        if not src.exists():
            raise UsageError(f"no weights in {run}: train first")
        shutil.copyfile(src, args.export)
        print(args.export)
        return 0
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        for name in ("faceveil.train.loop", "faceveil.train.data"):
            lg = logging.getLogger(name)
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
    from .loop import Trainer

    t = Trainer(cfg)
    t.run(max_steps=args.max_steps,
          max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    log.info("run directory: %s", t.dir)
    return 0
