"""multipart/form-data parsed in memory, with limits.

Starlette's own form parser spools file parts larger than 1 MiB to a temporary file on disk; an
uploaded original must never touch the disk (docs/THREAT_MODEL.md), so the web app reads the body
itself (bounded by the upload limit) and parses it here with ``python_multipart``'s streaming
parser, keeping every part in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header


class FormError(ValueError):
    """The body is not a well-formed multipart/form-data message (or breaks a limit)."""

    def __init__(self, message: str, code: str = "bad_request", status: int = 400):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    def text(self, field: str, max_chars: int) -> str:
        try:
            value = self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"field {field!r} is not UTF-8 text", "invalid_field", 422) from None
        if len(value) > max_chars:
            raise FormError(f"field {field!r} is longer than {max_chars} characters", "invalid_field", 422)
        return value


MAX_PARTS = 16
MAX_FIELD_BYTES = 64 * 1024  # any part that is not the image


def parse_form(body: bytes, content_type: str | None, *, file_fields: frozenset[str] = frozenset({"image"})
               ) -> dict[str, Part]:
    """Parse ``body``; returns the parts by name.

    Raises :class:`FormError` with status 415 when the request is not multipart/form-data, 400 when
    the message is malformed or has too many parts, 413 when a text field is too long, 422 when a
    field is given more than once (every field is a single value: which copy was meant is not ours
    to guess, and schemathesis rightly flags a server that picks one).
    """
    ctype, opts = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise FormError("send the request as multipart/form-data", "unsupported_media_type", 415)
    boundary = opts.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise FormError("the multipart/form-data request has no valid boundary")

    parts: list[Part] = []
    state: dict = {"headers": {}, "field": b"", "value": b"", "chunks": [], "size": 0}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise FormError(f"more than {MAX_PARTS} form fields")
        state.update(headers={}, field=b"", value=b"", chunks=[], size=0)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disp, dopts = parse_options_header(state["headers"].get(b"content-disposition"))
        if disp != b"form-data" or b"name" not in dopts:
            raise FormError("a multipart part has no Content-Disposition: form-data; name=...")
        try:
            state["name"] = dopts[b"name"].decode("utf-8")
            fn = dopts.get(b"filename")
            state["filename"] = fn.decode("utf-8", "replace") if fn is not None else None
        except UnicodeDecodeError:
            raise FormError("a form field name is not UTF-8") from None
        ct = state["headers"].get(b"content-type")
        state["content_type"] = ct.decode("latin-1") if ct else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["size"] += end - start
        if state.get("name") not in file_fields and state["size"] > MAX_FIELD_BYTES:
            raise FormError(f"form field {state.get('name')!r} is larger than {MAX_FIELD_BYTES} bytes",
                            "too_large", 413)
        state["chunks"].append(data[start:end])

    def on_part_end() -> None:
        parts.append(Part(state["name"], b"".join(state["chunks"]), state["filename"], state["content_type"]))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
    })
    try:
        parser.write(body)
        parser.finalize()
    except FormError:
        raise
    except (MultipartParseError, ValueError, KeyError) as e:
        raise FormError(f"malformed multipart/form-data body ({type(e).__name__})") from None
    out: dict[str, Part] = {}
    for p in parts:
        if p.name in out:
            raise FormError(f"form field {p.name!r} is given more than once", "invalid_field", 422)
        out[p.name] = p
    return out
