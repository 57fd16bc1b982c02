"""Every user-facing failure is a :class:`FaceveilError`; the CLI maps each to one line and an exit code."""

from __future__ import annotations


class FaceveilError(Exception):
    """Base class. ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class UsageError(FaceveilError):
    """The request itself is malformed (bad option, unsupported format, missing password)."""

    exit_code = 2


class WrongPasswordError(FaceveilError):
    """The password does not match the verifier stored in the file."""

    exit_code = 3


class ShapeError(FaceveilError, ValueError):
    """A tensor or image has a shape the operation cannot take."""


class ImageError(FaceveilError):
    """An image cannot be read, decoded or written."""


class ContainerError(FaceveilError):
    """A protected file's metadata record is missing, damaged or of an unknown version."""


class ModelError(FaceveilError):
    """A model name is unknown, or its weights are missing or fail their sha256 check."""


class VeilError(FaceveilError, ValueError):
    """A veil name or parameter is invalid."""
