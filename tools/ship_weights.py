"""Copy a training run's weights into the package and record them in the manifest.

    python tools/ship_weights.py runs/proface-s-randwr --name proface-s-randwr --version 1 --default

Writes ``src/faceveil/weights/<name>-v<version>.safetensors`` and updates ``manifest.json`` with the
file's sha256, the architecture config, the wrong-key mode and a summary of the run (steps, the
final validation line of ``metrics.jsonl``). Old files of the same name are removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from faceveil.models.zoo import _read_header, sha256_file  # noqa: E402

WEIGHTS = ROOT / "src" / "faceveil" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="run directory (holds best.safetensors / last.safetensors)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--file", default="best.safetensors", help="which weights of the run")
    ap.add_argument("--default", action="store_true", help="make it the default model")
    ap.add_argument("--description", default="")
    a = ap.parse_args()
    src = a.run / a.file
    meta = _read_header(src)
    cfg = json.loads(meta["faceveil.config"])
    train_cfg = json.loads(meta.get("faceveil.train_config", "{}"))
    wr_mode = meta.get("faceveil.wr_mode", "randwr")
    vals, logged = [], []
    mfile = a.run / "metrics.jsonl"
    if mfile.exists():
        lines = [json.loads(line) for line in mfile.read_text().splitlines() if line.strip()]
        vals = [r for r in lines if any(k.startswith("val_") for k in r)]
        logged = [r for r in lines if "sec_per_step" in r]
    step = int(meta.get("faceveil.train_step", 0))
    # training time of this run (steps between log lines × their mean seconds per step), so the
    # README's training times come from the shipped manifest, not from a local runs/ folder
    seconds, prev = 0.0, 0
    for r in sorted(logged, key=lambda r: r["step"]):
        if r["step"] > step:
            break
        seconds += max(0, r["step"] - prev) * float(r["sec_per_step"])
        prev = r["step"]
    dst_name = f"{a.name}-v{a.version}.safetensors"
    for old in WEIGHTS.glob(f"{a.name}-v*.safetensors"):
        old.unlink()
    shutil.copyfile(src, WEIGHTS / dst_name)
    manifest_path = WEIGHTS / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"format": 1, "models": {}}
    manifest["models"][a.name] = {
        "version": a.version,
        "arch": train_cfg.get("model", "proface-s"),
        "file": dst_name,
        "sha256": sha256_file(WEIGHTS / dst_name),
        "config": cfg,
        "wr_mode": wr_mode,
        "description": a.description,
        "trained": {"steps": step,
                    "seconds": round(seconds),
                    "seconds_per_step_median": (sorted(float(r["sec_per_step"]) for r in logged)[len(logged) // 2]
                                                if logged else None),
                    "init": train_cfg.get("init"),
                    "config": train_cfg,
                    "validation": vals[-1] if vals else None,
                    "data": "UTKFace + CelebA (non-commercial research licences) + natural images"},
    }
    if a.default or not manifest.get("default"):
        manifest["default"] = a.name
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"shipped {dst_name} sha256 {manifest['models'][a.name]['sha256']}")


if __name__ == "__main__":
    main()
