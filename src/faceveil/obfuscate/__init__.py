"""Veils (pre-obfuscators). Importing this package registers the built-in ones."""

from . import filters  # noqa: F401  (registers blur, pixelate, median)
from .registry import VEILS, Veil, apply_veil, get_veil, register

__all__ = ["VEILS", "Veil", "apply_veil", "get_veil", "register"]
