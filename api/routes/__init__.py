"""HTTP routes, one module per resource family."""

from __future__ import annotations

from aiohttp import web

from api.routes import log, operations, orchestrations, receipts, registry

__all__ = ["register_routes"]


def register_routes(app: web.Application) -> None:
    for module in (operations, log, orchestrations, receipts, registry):
        app.router.add_routes(module.routes)
