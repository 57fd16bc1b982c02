"""``faceveil serve``: a local web app and REST API over the same code as the CLI (see :mod:`.app`)."""

from .app import ServeConfig, background_server, create_app, serve

__all__ = ["ServeConfig", "background_server", "create_app", "serve"]
