"""The web app and REST API behind ``faceveil serve``.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /api/protect`` multipart ``image``, ``password``, optional ``veil``, ``strength``, ``boxes``
  → 200 ``image/png`` (the protected photo; the faces' count in ``X-Faceveil-Faces``);
- ``POST /api/recover`` multipart ``image``, ``password`` → 200 ``image/png``; a wrong password →
  403 ``{"code": "wrong_password", ...}``;
- ``POST /api/inspect`` multipart ``image`` → the file's faceveil record (nothing secret is in it);
- ``POST /api/detect`` multipart ``image`` → the faces the protect call would veil (the page
  outlines them and lets the user untick some);
- ``GET /api/veils``, ``GET /healthz``, ``GET /`` (the page).

Every failure is JSON ``{"code", "message"}`` with 400/403/404/405/413/415/422, or 503 with
``Retry-After`` when the work queue is full; never a 500 for anything a client sends.

Privacy: uploads are read into memory (never spooled to disk, see :mod:`.forms`), passwords are
never logged, responses carry ``Cache-Control: no-store``. Resources: the request body is bounded
(``max_upload_bytes``, checked before and while reading), images by pixel count (checked from the
header before decoding), and the work runs on a fixed pool of ``workers`` threads behind an
admission limit of ``max_pending`` requests, so memory stays bounded under any number of clients.
Models are loaded once, at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePath

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..errors import (
    ContainerError,
    FaceveilError,
    ImageError,
    ModelError,
    ShapeError,
    UsageError,
    VeilError,
    WrongPasswordError,
)
from .forms import FormError, Part, parse_form

log = logging.getLogger(__name__)

MAX_PASSWORD_CHARS = 1024


@dataclass
class ServeConfig:
    """Limits and resources of one server."""

    model: str | None = None  # protection model (None: the shipped default)
    max_upload_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 40_000_000
    workers: int = 1  # images processed at once
    max_pending: int = 64  # requests admitted (queued + running); more get 503
    torch_threads: int | None = None  # per worker; None: cores // workers
    preload: bool = True
    extra_models: list[str] = field(default_factory=list)


class ApiError(Exception):
    """A client error with its HTTP status and stable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error_for(e: FaceveilError) -> ApiError:
    """Map the library's errors to HTTP (the message is the same one line the CLI prints)."""
    msg = str(e)
    if isinstance(e, WrongPasswordError):
        return ApiError(403, "wrong_password", "wrong password")
    if isinstance(e, ImageError):
        return ApiError(422, "bad_image", msg)
    if isinstance(e, VeilError):
        return ApiError(422, "invalid_field", msg)
    if isinstance(e, ContainerError):
        code = "not_protected" if "no faceveil record" in msg else "bad_record"
        return ApiError(422, code, msg)
    if isinstance(e, ModelError):
        return ApiError(422, "unknown_model", msg)
    if isinstance(e, (UsageError, ShapeError)):
        return ApiError(400, "bad_request", msg)
    return ApiError(422, "unprocessable", msg)


# -- OpenAPI fragments ------------------------------------------------------------------------------

ERROR_SCHEMA = {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}


def _err(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


COMMON_ERRORS = {
    400: _err("malformed request"), 413: _err("upload or image too large"),
    415: _err("not multipart/form-data, or the upload is not an image"),
    422: _err("a field is missing or invalid, or the image cannot be processed"),
    503: _err("the server is busy; retry after the number of seconds in Retry-After"),
}
PNG_RESPONSE = {"description": "a PNG image", "content": {"image/png": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}


def _form_body(properties: dict, required: list[str]) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}}


IMAGE_PROP = {"type": "string", "format": "binary", "description": "the photo (any format Pillow reads)"}
PASSWORD_PROP = {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_CHARS,
                 "description": "the password (never stored or logged)"}


# -- the app ---------------------------------------------------------------------------------------

def create_app(config: ServeConfig | None = None):
    """Build the FastAPI application (models are loaded here when ``config.preload``)."""
    from .. import api
    from ..io import container as ct
    from ..io.image import set_pillow_pixel_limit
    from ..models.zoo import default_model_name, load_model
    from ..obfuscate import VEILS, get_veil
    from ..obfuscate.registry import MAX_STRENGTH, MIN_STRENGTH, check_strength

    cfg = config or ServeConfig()
    if cfg.workers < 1 or cfg.max_pending < cfg.workers:
        raise UsageError("the server needs workers ≥ 1 and max_pending ≥ workers")
    if cfg.max_upload_bytes < 1 or cfg.max_pixels < 1:
        raise UsageError("the upload and pixel limits must be positive")
    # Pillow's process-wide bomb guard (a warning above its limit, an error above twice that) must
    # not be stricter than ours; it is only ever raised, never lowered
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and cfg.max_pixels > Image.MAX_IMAGE_PIXELS:
        set_pillow_pixel_limit(cfg.max_pixels)

    import torch

    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) // cfg.workers)
    torch.set_num_threads(threads)
    model_name = cfg.model or default_model_name()
    if cfg.preload:
        for name in [model_name, *cfg.extra_models]:
            load_model(name)

    admitted = {"n": 0, "peak": 0}
    lock = threading.Lock()
    pools: list[ThreadPoolExecutor] = []  # the worker pool, made on first use; a lifespan's end shuts it

    def get_pool() -> ThreadPoolExecutor:
        with lock:
            if not pools:
                pools.append(ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="faceveil-worker"))
            return pools[0]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        with lock:
            old = pools[:]
            pools.clear()
        for pool in old:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title="faceveil", version=__version__,
        description="Veil every face in a photo; lift the veil with the password. Uploads stay in "
                    "memory; passwords are never stored or logged.",
        docs_url="/docs", redoc_url=None,
    )
    app.state.config = cfg
    app.state.admitted = admitted

    def error_response(err: ApiError):
        headers = {"Cache-Control": "no-store", **err.headers}
        return JSONResponse({"code": err.code, "message": err.message}, status_code=err.status,
                            headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(FormError)
    async def _form_error(request: Request, exc: FormError):
        return error_response(ApiError(exc.status, exc.code, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(ApiError(422, "invalid_field", f"{where}: {first.get('msg', 'invalid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):  # a bug, never a client's fault
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        return error_response(ApiError(500, "internal_error", "internal error; please report it"))

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'")
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # -- request plumbing ----------------------------------------------------------------------

    class _Admission:
        """At most ``max_pending`` requests hold a body in memory or wait for a worker."""

        def __enter__(self):
            with lock:
                if admitted["n"] >= cfg.max_pending:
                    raise ApiError(503, "busy", "the server is busy; try again in a moment",
                                   {"Retry-After": "2"})
                admitted["n"] += 1
                admitted["peak"] = max(admitted["peak"], admitted["n"])
            return self

        def __exit__(self, *exc):
            with lock:
                admitted["n"] -= 1
            return False

    async def read_form(request: Request) -> dict[str, Part]:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > cfg.max_upload_bytes:
                    raise ApiError(413, "too_large", f"the upload is larger than "
                                   f"{cfg.max_upload_bytes // (1024 * 1024)} MiB")
            except ValueError:
                raise ApiError(400, "bad_request", "invalid Content-Length") from None
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type", "send the request as multipart/form-data")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_upload_bytes:
                raise ApiError(413, "too_large",
                               f"the upload is larger than {cfg.max_upload_bytes // (1024 * 1024)} MiB")
            chunks.append(chunk)
        try:
            return parse_form(b"".join(chunks), ctype)
        except FormError as e:
            raise ApiError(e.status, e.code, str(e)) from None

    def image_part(form: dict[str, Part]) -> bytes:
        part = form.get("image")
        if part is None or not part.data:
            raise ApiError(422, "invalid_field", "image: a non-empty image file is required")
        data = part.data
        # the pixel count from the header, before anything is decoded
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except UnidentifiedImageError:
            raise ApiError(415, "not_an_image", "image: not an image file, or a format faceveil cannot "
                           "read") from None
        except Image.DecompressionBombError:
            raise ApiError(413, "image_too_large", "image: too many pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise ApiError(422, "bad_image", "image: the file is damaged or truncated") from None
        if w * h > cfg.max_pixels:
            raise ApiError(413, "image_too_large", f"image: {w}×{h} is more than "
                           f"{cfg.max_pixels / 1e6:g} megapixels")
        return data

    def password_part(form: dict[str, Part]) -> str:
        part = form.get("password")
        value = part.text("password", MAX_PASSWORD_CHARS) if part is not None else ""
        if not value:
            raise ApiError(422, "invalid_field", "password: a non-empty password is required")
        return value

    def text_part(form: dict[str, Part], name: str, max_chars: int = 4096) -> str | None:
        part = form.get(name)
        if part is None:
            return None
        try:
            value = part.text(name, max_chars).strip()
        except FormError as e:
            raise ApiError(e.status, e.code, str(e)) from None
        return value  # present but empty is "", not absent: an empty veil or strength is an error

    def filename_stem(form: dict[str, Part], default: str = "photo") -> str:
        fn = form["image"].filename if "image" in form else None
        stem = PurePath((fn or default).replace("\\", "/")).stem or default
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
        if stem.endswith(".veiled"):
            stem = stem[: -len(".veiled")]
        return stem or default

    async def run(fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(get_pool(), fn, *args)
        except FaceveilError as e:
            raise _error_for(e) from None
        except MemoryError:
            raise ApiError(413, "image_too_large", "the image is too large to process") from None

    def png(data: bytes, filename: str, headers: dict) -> Response:
        return Response(data, media_type="image/png", headers={
            "Content-Disposition": f'attachment; filename="{filename}"', **headers})

    # -- endpoints ------------------------------------------------------------------------------

    static_dir = resources.files("faceveil.web") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse((static_dir / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    @app.get("/healthz", summary="liveness",
             responses={200: {"description": "the server is up", "content": {"application/json": {
                 "schema": {"type": "object", "required": ["status"], "properties": {
                     "status": {"type": "string"}, "version": {"type": "string"},
                     "model": {"type": "string"}}}}}}})
    async def healthz():
        return {"status": "ok", "version": __version__, "model": model_name}

    @app.get("/api/veils", summary="the veils, their parameters and the strength range")
    async def veils():
        return {
            "default": "blur",
            "strength": {"min": MIN_STRENGTH, "max": MAX_STRENGTH, "default": 1.0},
            "veils": [{"name": n, "summary": v.summary, "params": v.param_help,
                       "defaults_at_112px": v.defaults(112)} for n, v in sorted(VEILS.items())],
        }

    def parse_strength(form) -> float:
        raw = text_part(form, "strength", 32)
        if raw is None:
            return 1.0
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(422, "invalid_field", f"strength: not a number: {raw[:32]!r}") from None
        try:
            return check_strength(value)
        except VeilError as e:
            raise ApiError(422, "invalid_field", f"strength: {e}") from None

    def parse_boxes(form) -> list | None:
        raw = text_part(form, "boxes", 60_000)
        if raw is None:
            return None
        try:
            boxes = json.loads(raw)
        except ValueError:
            raise ApiError(422, "invalid_field", "boxes: not JSON (a list of [x0, y0, x1, y1])") from None
        if not isinstance(boxes, list) or len(boxes) > 256 or not all(
                isinstance(b, list) and len(b) == 4 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
                and b[2] > b[0] and b[3] > b[1] for b in boxes):
            raise ApiError(422, "invalid_field", "boxes: a JSON list of at most 256 [x0, y0, x1, y1] "
                           "boxes with x1 > x0 and y1 > y0")
        return boxes

    @app.post("/api/protect", summary="veil every face; the originals stay hidden in the PNG",
              responses={200: PNG_RESPONSE, **COMMON_ERRORS},
              openapi_extra=_form_body({
                  "image": IMAGE_PROP, "password": PASSWORD_PROP,
                  "veil": {"type": "string", "enum": sorted(VEILS), "default": "blur"},
                  "strength": {"type": "number", "minimum": MIN_STRENGTH, "maximum": MAX_STRENGTH,
                               "default": 1.0, "description": "scales the veil's size-scaled defaults"},
                  "boxes": {"type": "string", "description": "JSON list of [x0, y0, x1, y1] boxes to veil "
                            "instead of detecting faces (the page sends the faces left ticked)"},
              }, ["image", "password"]))
    async def protect(request: Request):
        with _Admission():
            form = await read_form(request)
            data = image_part(form)
            password = password_part(form)
            veil = text_part(form, "veil", 64)
            veil = "blur" if veil is None else veil
            try:
                get_veil(veil)
            except VeilError as e:
                raise ApiError(422, "invalid_field", f"veil: {e}") from None
            strength = parse_strength(form)
            boxes = parse_boxes(form)
            stem = filename_stem(form)

            def work():
                res = api.protect(data, password, veil=veil, strength=strength, boxes=boxes, model=model_name)
                return res.to_bytes(), len(res.faces)

            body, n = await run(work)
        return png(body, f"{stem}.veiled.png", {"X-Faceveil-Faces": str(n), "X-Faceveil-Veil": veil})

    @app.post("/api/recover", summary="lift the veil with the password",
              responses={200: PNG_RESPONSE, 403: _err("wrong password"), **COMMON_ERRORS},
              openapi_extra=_form_body({"image": IMAGE_PROP, "password": PASSWORD_PROP},
                                       ["image", "password"]))
    async def recover(request: Request):
        with _Admission():
            form = await read_form(request)
            data = image_part(form)
            password = password_part(form)
            stem = filename_stem(form)

            def work():
                res = api.recover(data, password)
                return res.to_bytes(), len(res.faces), res.modified

            body, n, modified = await run(work)
        return png(body, f"{stem}.recovered.png",
                   {"X-Faceveil-Faces": str(n), "X-Faceveil-Modified": "true" if modified else "false"})

    @app.post("/api/inspect", summary="the faceveil record of a protected image (nothing secret)",
              responses={200: {"description": "the record", "content": {"application/json": {
                  "schema": {"type": "object"}}}}, **COMMON_ERRORS},
              openapi_extra=_form_body({"image": IMAGE_PROP}, ["image"]))
    async def inspect(request: Request):
        with _Admission():
            form = await read_form(request)
            data = image_part(form)
            return await run(api.inspect, data)

    @app.post("/api/detect", summary="the faces protect would veil (for choosing which to keep)",
              responses={200: {"description": "image size and faces", "content": {"application/json": {
                  "schema": {"type": "object", "required": ["width", "height", "faces"]}}}},
                  **COMMON_ERRORS},
              openapi_extra=_form_body({"image": IMAGE_PROP}, ["image"]))
    async def detect(request: Request):
        with _Admission():
            form = await read_form(request)
            data = image_part(form)

            def work():
                from ..detect import get_detector
                from ..detect.geometry import order_faces

                img = api._load(data)
                faces = order_faces(get_detector("yunet").detect(img.rgb))
                protected = ct.extract(img.text) is not None
                return {"width": img.width, "height": img.height, "protected": protected,
                        "faces": [{"index": i, "box": [round(v, 1) for v in f.box], "score": round(f.score, 4)}
                                  for i, f in enumerate(faces)]}

            return await run(work)

    return app


def bind(host: str, port: int):
    """A listening socket, or one clear :class:`UsageError` (port in use, bad address)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot listen on {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log_level: str = "info", announce: bool = False) -> None:
    """Run the app with uvicorn until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    import uvicorn

    sock = bind(host, port)
    if not sock.getsockname()[0].startswith(("127.", "::1")):
        log.warning("serving on %s: anyone who can reach this address can use the server, and "
                    "passwords travel unencrypted unless a TLS proxy is in front", host)
    app = create_app(config)
    if announce:
        shown = f"[{host}]" if ":" in host else host
        print(f"faceveil: serving on http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops)", file=sys.stderr,
              flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "info",
                                           server_header=False, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def background_server(config: ServeConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                      start_timeout: float = 60.0):
    """Run the app in a background thread (tests, benchmarks, embedding); yields its base URL and
    stops it on exit. ``port=0`` picks a free port."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", server_header=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="faceveil-server")
    thread.start()
    try:
        limit = time.monotonic() + start_timeout
        while not server.started:
            if time.monotonic() > limit or not thread.is_alive():
                raise RuntimeError("the faceveil server did not start")
            time.sleep(0.02)
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
