"""The evaluation harness: the papers' tables (PRO-Face S Tables I-III, V, §V-D; IMN §3) measured
on our models from saved 8-bit files, plus MobileFaceNet identity leakage.

``evaluate(faces_dir, model, ...) -> dict`` runs it; :mod:`.report` turns results into Markdown and
``docs/RESULTS.md``; :mod:`.metrics` holds the per-image metrics. Importing this package is light:
the identity model loads only when asked for.
"""

from .harness import DEFAULT_TEST_PASSWORD, add_eval_arguments, evaluate, run_eval
from .metrics import image_metrics, mae255, ms_ssim, psnr, rmse255, rgb_to_y, ssim

_REPORT = ("markdown", "update_section", "write_json", "write_results_md")


def __getattr__(name: str):
    # The report functions load lazily so that ``python -m faceveil.eval.report`` does not import
    # its own module twice (runpy's RuntimeWarning).
    if name in _REPORT:
        from . import report
        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_TEST_PASSWORD", "add_eval_arguments", "evaluate", "run_eval", "image_metrics", "mae255",
           "ms_ssim", "psnr", "rmse255", "rgb_to_y", "ssim", "markdown", "update_section", "write_json",
           "write_results_md"]
