"""Veils (pre-obfuscators). Importing this package registers the built-in ones."""

from . import cartoon, filters, swap, synthetic  # noqa: F401  (register blur, pixelate, median, cartoon, swap,
#                                                         synthetic, mask)
from .registry import VEILS, Veil, apply_veil, get_veil, register

__all__ = ["VEILS", "Veil", "apply_veil", "get_veil", "register"]
