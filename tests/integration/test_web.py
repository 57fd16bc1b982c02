"""The REST API of ``faceveil serve`` (in-process through Starlette's test client): the round trip,
every error code, the limits, and that uploads and passwords never reach the disk or the logs."""

from __future__ import annotations

import io
import json
import logging
import tempfile

import numpy as np
import pytest
from PIL import Image

from faceveil.web import ServeConfig, create_app

from .conftest import GROUP_JPG, TWO_FACE_REGION

fastapi_testclient = pytest.importorskip("fastapi.testclient")

PASSWORD = "web ☂ correct horse"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def two_faces() -> np.ndarray:
    with Image.open(GROUP_JPG) as im:
        return np.asarray(im.convert("RGB").crop(TWO_FACE_REGION))


@pytest.fixture(scope="module")
def client():
    with fastapi_testclient.TestClient(create_app(ServeConfig())) as c:
        yield c


@pytest.fixture(scope="module")
def protected(client, two_faces) -> bytes:
    r = client.post("/api/protect", files={"image": ("two.png", _png(two_faces), "image/png")},
                    data={"password": PASSWORD, "veil": "pixelate"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-faceveil-faces"] == "2"
    assert r.headers["content-disposition"] == 'attachment; filename="two.veiled.png"'
    assert r.headers["cache-control"] == "no-store"
    return r.content


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert body["message"] and "\n" not in body["message"]
    return body


def test_health_page_and_veils(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="protect-file"', 'id="password2"', 'id="recover-btn"', "/static/app.js"):
        assert element in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    v = client.get("/api/veils").json()
    names = {x["name"] for x in v["veils"]}
    assert {"blur", "pixelate", "median"} <= names and v["default"] in names
    assert v["strength"] == {"min": 0.25, "max": 4.0, "default": 1.0}


def test_round_trip(client, two_faces, protected):
    veiled = _decode(protected)
    assert veiled.shape == two_faces.shape
    veiled_db = _psnr(veiled, two_faces)
    assert veiled_db < 30  # the faces are veiled
    r = client.post("/api/recover", files={"image": ("two.veiled.png", protected, "image/png")},
                    data={"password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="two.recovered.png"'
    assert r.headers["x-faceveil-modified"] == "false"
    back = _decode(r.content)
    # the format-2 default recovers real faces at 24-28 dB each (README); the rest is bit-exact
    assert _psnr(back, two_faces) > max(27.0, veiled_db + 3)
    record = client.post("/api/inspect", files={"image": ("p.png", protected, "image/png")}).json()
    assert len(record["faces"]) == 2
    assert PASSWORD not in json.dumps(record)
    # everything outside the crops comes back bit for bit
    outside = np.ones(two_faces.shape[:2], bool)
    for f in record["faces"]:
        x0, y0, x1, y1 = f["crop"]
        outside[y0:y1, x0:x1] = False
    assert outside.any() and np.array_equal(back[outside], two_faces[outside])


def test_wrong_password_is_403(client, protected):
    r = client.post("/api/recover", files={"image": ("p.png", protected, "image/png")},
                    data={"password": PASSWORD + "x"})
    _error(r, 403, "wrong_password")


def test_boxes_choose_the_faces(client, two_faces):
    det = client.post("/api/detect", files={"image": ("t.png", _png(two_faces), "image/png")}).json()
    assert det["width"] == two_faces.shape[1] and len(det["faces"]) == 2 and not det["protected"]
    # none ticked: nothing changes
    r = client.post("/api/protect", files={"image": ("t.png", _png(two_faces), "image/png")},
                    data={"password": PASSWORD, "boxes": "[]"})
    assert r.status_code == 200 and r.headers["x-faceveil-faces"] == "0"
    assert np.array_equal(_decode(r.content), two_faces)
    # one ticked: the other face's box is untouched
    keep, veil = det["faces"][0]["box"], det["faces"][1]["box"]
    r = client.post("/api/protect", files={"image": ("t.png", _png(two_faces), "image/png")},
                    data={"password": PASSWORD, "boxes": json.dumps([veil])})
    assert r.status_code == 200 and r.headers["x-faceveil-faces"] == "1"
    out = _decode(r.content)
    x0, y0, x1, y1 = (int(round(v)) for v in keep)
    assert np.array_equal(out[y0:y1, x0:x1], two_faces[y0:y1, x0:x1])


def test_strength_scales_the_veil(client, two_faces):
    blocks = {}
    for s in ("1", "2"):
        r = client.post("/api/protect", files={"image": ("t.png", _png(two_faces), "image/png")},
                        data={"password": PASSWORD, "veil": "pixelate", "strength": s})
        rec = client.post("/api/inspect", files={"image": ("p.png", r.content, "image/png")}).json()
        blocks[s] = [f["veil"]["params"]["block"] for f in rec["faces"]]
    assert all(abs(b2 - 2 * b1) <= 1 for b1, b2 in zip(blocks["1"], blocks["2"])), blocks


@pytest.mark.parametrize("data,files,status,code", [
    ({"password": "x"}, {"note": ("n.txt", b"x", "text/plain")}, 422, "invalid_field"),  # no image
    ({"password": "x"}, None, 415, "unsupported_media_type"),                           # not multipart
    ({}, {"image": ("a.png", b"\x89PNG", "image/png")}, 415, "not_an_image"),         # no password, bad image first
    ({"password": ""}, "group", 422, "invalid_field"),                                 # empty password
    ({"password": "x"}, {"image": ("a.png", b"hello world", "image/png")}, 415, "not_an_image"),
    ({"password": "x", "veil": "nope"}, "group", 422, "invalid_field"),
    ({"password": "x", "strength": "abc"}, "group", 422, "invalid_field"),
    ({"password": "x", "strength": "9"}, "group", 422, "invalid_field"),
    ({"password": "x", "strength": "nan"}, "group", 422, "invalid_field"),
    ({"password": "x", "boxes": "[[1,2,3]]"}, "group", 422, "invalid_field"),
    ({"password": "x", "boxes": "{"}, "group", 422, "invalid_field"),
    ({"password": "x", "boxes": "[[10,10,5,5]]"}, "group", 422, "invalid_field"),
    ({"password": "x" * 2000}, "group", 422, "invalid_field"),
    ({"password": ["x", "y"]}, "group", 422, "invalid_field"),                       # a field twice
    ({"password": "x", "veil": ""}, "group", 422, "invalid_field"),                    # present but empty
    ({"password": "x", "strength": ""}, "group", 422, "invalid_field"),
    ({"password": "x", "boxes": ""}, "group", 422, "invalid_field"),
    ({"password": "x", "boxes": ["[]", "[[1,1,9,9]]"]}, "group", 422, "invalid_field"),
])
def test_protect_bad_fields(client, data, files, status, code):
    if files == "group":
        files = {"image": ("g.jpg", GROUP_JPG.read_bytes(), "image/jpeg")}
    _error(client.post("/api/protect", data=data, files=files), status, code)


def test_truncated_and_protected_inputs(client, two_faces, protected):
    png = _png(two_faces)
    _error(client.post("/api/protect", files={"image": ("t.png", png[: len(png) // 2], "image/png")},
                       data={"password": "x"}), 422, "bad_image")
    _error(client.post("/api/protect", files={"image": ("p.png", protected, "image/png")},
                       data={"password": "x"}), 400, "bad_request")
    _error(client.post("/api/recover", files={"image": ("t.png", png, "image/png")},
                       data={"password": "x"}), 422, "not_protected")
    _error(client.post("/api/inspect", files={"image": ("t.png", png, "image/png")}), 422, "not_protected")


def test_transport_errors(client):
    _error(client.post("/api/protect", content=b"{}", headers={"content-type": "application/json"}),
           415, "unsupported_media_type")
    _error(client.post("/api/protect", content=b"garbage",
                       headers={"content-type": "multipart/form-data; boundary=XYZ"}), 400, "bad_request")
    _error(client.post("/api/protect", content=b"x",
                       headers={"content-type": "multipart/form-data"}), 400, "bad_request")
    _error(client.get("/api/nothing-here"), 404, "not_found")
    _error(client.get("/api/protect"), 405, "method_not_allowed")


def test_limits():
    cfg = ServeConfig(max_upload_bytes=200_000, max_pixels=300_000)
    with fastapi_testclient.TestClient(create_app(cfg)) as c:
        big = np.zeros((400, 400, 3), np.uint8)
        big[::2] = 255
        _error(c.post("/api/protect", files={"image": ("b.bmp", b"\0" * 300_000, "image/bmp")},
                      data={"password": "x"}), 413, "too_large")
        _error(c.post("/api/protect", files={"image": ("b.png", _png(np.zeros((800, 800, 3), np.uint8)),
                                                       "image/png")}, data={"password": "x"}),
               413, "image_too_large")


def test_busy_gives_503(client, two_faces):
    admitted = client.app.state.admitted
    cfg = client.app.state.config
    saved = admitted["n"]
    admitted["n"] = cfg.max_pending
    try:
        r = client.post("/api/protect", files={"image": ("t.png", _png(two_faces), "image/png")},
                        data={"password": "x"})
        _error(r, 503, "busy")
        assert int(r.headers["retry-after"]) > 0
    finally:
        admitted["n"] = saved
    assert client.get("/healthz").status_code == 200


def test_uploads_and_passwords_never_reach_disk_or_logs(client, monkeypatch, caplog):
    """A > 1 MiB upload (Starlette would spool it to a temporary file) and a recover: no temporary
    file is opened, and the password appears in no log record."""
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)
    with Image.open(GROUP_JPG) as im:
        noisy[100:600, 100:600] = np.asarray(im.convert("RGB").crop((140, 60, 640, 560)))
    upload = _png(noisy)
    assert len(upload) > 1024 * 1024

    def refuse(*a, **k):
        raise AssertionError("a temporary file was created during a request")

    import starlette.formparsers

    for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    secret = "never-log-me-7f3a"
    with caplog.at_level(logging.DEBUG):
        r = client.post("/api/protect", files={"image": ("n.png", upload, "image/png")},
                        data={"password": secret})
        assert r.status_code == 200, r.text
        assert int(r.headers["x-faceveil-faces"]) >= 1
        r2 = client.post("/api/recover", files={"image": ("n.png", r.content, "image/png")},
                         data={"password": secret + "!"})
        assert r2.status_code == 403
    assert secret not in caplog.text
    assert secret not in r2.text


def test_serve_command_errors_are_one_line(cli):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cli("serve", "--port", port).assert_one_error_line("cannot listen", str(port))
    cli("serve", "--port", "70000").assert_one_error_line("--port")
    cli("serve", "--workers", "0").assert_one_error_line("--workers")
    cli("serve", "--host", "no-such-host.invalid").assert_one_error_line("cannot listen")
