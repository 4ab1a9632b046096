"""Operations: ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.resources

import yaml
from aiohttp import web

from api.errors import KeyStoreError
from api.metrics import CONTENT_TYPE
from api.routes._common import services
from api.services import METRICS, encode, json_response

__all__ = ["openapi_document", "routes"]

routes = web.RouteTableDef()


@functools.cache
def openapi_document() -> bytes:
    """The packaged ``api/openapi.yaml`` as JSON bytes (parsed once)."""
    text = importlib.resources.files("api").joinpath("openapi.yaml").read_text("utf-8")
    return encode(yaml.safe_load(text))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    s = services(request)
    try:
        # Off the loop: a busy file could make the check wait up to its 1 s timeout.
        await asyncio.to_thread(s.keys.check)
        keys_readable = True
    except KeyStoreError:
        keys_readable = False
    ready = s.log.healthy and keys_readable and not s.shutting_down
    body = {
        "ready": ready,
        "log_healthy": s.log.healthy,
        "keys_readable": keys_readable,
        "tree_size": s.log.size,
    }
    return json_response(body, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")
