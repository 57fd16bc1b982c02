"""Many clients at once on loopback: 50 concurrent protect requests against a real uvicorn server.
With room for all of them every one succeeds; with a small admission limit the excess is turned
away with 503 + Retry-After (never a 500, never a hang), and the server stays healthy either way.
The measured version, with latency percentiles and peak memory, is benchmarks/serve_load.py."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from faceveil.web import ServeConfig, background_server

from .conftest import GROUP_JPG

httpx = pytest.importorskip("httpx")

N = 50


def _small_face_png() -> bytes:
    with Image.open(GROUP_JPG) as im:
        crop = im.convert("RGB").crop((190, 120, 340, 290))  # one face, 150×170
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    return buf.getvalue()


async def _storm(url: str, body: bytes, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        async def one(i: int) -> int:
            r = await client.post("/api/protect", files={"image": (f"{i}.png", body, "image/png")},
                                  data={"password": f"load {i}", "veil": "pixelate"})
            if r.status_code == 200:
                assert r.headers["content-type"] == "image/png" and r.headers["x-faceveil-faces"] == "1"
            elif r.status_code == 503:
                assert r.json()["code"] == "busy" and int(r.headers["retry-after"]) > 0
            return r.status_code

        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=300)


@pytest.mark.parametrize("max_pending", [64, 4])
def test_fifty_concurrent_protects(max_pending):
    body = _small_face_png()
    with background_server(ServeConfig(workers=1, max_pending=max_pending)) as url:
        codes = asyncio.run(_storm(url, body, N))
        health = httpx.get(url + "/healthz", timeout=10)
    assert health.status_code == 200
    assert set(codes) <= {200, 503}, codes
    if max_pending >= N:
        assert codes.count(200) == N
    else:
        assert codes.count(503) > 0 and codes.count(200) >= max_pending
