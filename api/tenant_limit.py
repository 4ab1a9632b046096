"""How many requests each tenant may have in progress at once.

The connection cap (api/server.py) protects the process; this protects tenants from
one another. Requests that are held open on purpose (an SSE stream, ``Prefer: wait``,
``GET ...?wait=``) cost next to nothing each, so one tenant could otherwise hold every
connection the server allows and leave the others 503s. A tenant at its limit gets
429 problem+json with ``Retry-After``; other tenants are untouched.

A request is counted from the moment its credential is accepted (only then is its
tenant known) until its handler returns, which for a stream is when the stream ends;
a stream whose client left ends within about a second (api/routes/orchestrations.py).
"""

from __future__ import annotations

from aiohttp import web

from api.errors import ProblemError

__all__ = ["TenantRequests"]

_HELD: web.RequestKey[str] = web.RequestKey("tenant_request_held", str)


class TenantRequests:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight: dict[str, int] = {}

    def enter(self, request: web.Request, tenant_id: str) -> None:
        """Count ``request`` against ``tenant_id``; 429 if the tenant is at its limit.
        A request that is already counted (authorized twice) is not counted again."""
        if _HELD in request:
            return
        held = self._in_flight.get(tenant_id, 0)
        if held >= self._limit:
            raise ProblemError(
                429,
                "tenant-busy",
                "Too many requests",
                f"the tenant has {held} requests in progress, its limit "
                "(max_requests_per_tenant); retry when one ends",
                headers={"Retry-After": "1"},
            )
        self._in_flight[tenant_id] = held + 1
        request[_HELD] = tenant_id

    def leave(self, request: web.Request) -> None:
        """Uncount ``request``, if it was counted; called once its handler is done."""
        tenant_id = request.get(_HELD)
        if tenant_id is None:
            return
        del request[_HELD]
        held = self._in_flight[tenant_id] - 1
        if held:
            self._in_flight[tenant_id] = held
        else:
            del self._in_flight[tenant_id]

    def in_flight(self, tenant_id: str) -> int:
        return self._in_flight.get(tenant_id, 0)
