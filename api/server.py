"""The listening side of ``maip-ledger serve``: aiohttp's HTTP/1.1 protocol with the two
bounds it lacks.

* **Request heads must arrive in time.** aiohttp reads a request line and headers for as
  long as the client cares to send them (only an *idle* connection is closed, after an
  hour), so a client trickling a header byte at a time held a connection and its buffers
  forever (slowloris). Here a connection must deliver a complete request head within
  ``header_timeout`` seconds of opening, and again of each response it was kept open
  for; otherwise it is closed — with a 408 problem+json if part of a head had arrived.
  So an idle kept-alive connection is closed after the same time. Once a head is in, the
  bound stops: bodies have their own (``BODY_READ_TIMEOUT_SECONDS``), and a handler may
  take as long as it takes (``Prefer: wait``, event streams). Each connection keeps a
  deadline, which one sweep per site checks every ``header_timeout / 8`` (at most 1 s):
  a timer armed and cancelled per request went through asyncio's timer heap (Python
  comparisons, a rebuild once half of it is cancelled) on every request.
* **At most ``max_connections`` at once.** One more is answered 503 problem+json and
  closed before anything of its request is read, instead of running the process out of
  file descriptors (which SQLite needs too).

And what aiohttp answers itself, for a request its parser refuses (a garbage request
line, a bad header, an unreadable Content-Length, a head too large), is problem+json
too: 400, 431 for a head too large, or 415 for a body in a content coding it has no
decoder for (br, zstd). aiohttp's own answer was text/plain quoting the offending bytes
back, and it logged a traceback per malformed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadStatusLine,
    ContentEncodingError,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from api.errors import ProblemError
from api.problems import PROBLEM_TYPE_BASE, problem_response, unsupported_coding

__all__ = ["BoundedSite"]


def _raw_problem(status: int, reason: str, slug: str, detail: str, **headers: str) -> bytes:
    """A whole HTTP/1.1 problem response, for when there is no request to answer."""
    body = msgspec.json.encode(
        {"type": PROBLEM_TYPE_BASE + slug, "title": reason, "status": status, "detail": detail}
    )
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/problem+json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


_log = structlog.get_logger("api")
#: llhttp's reason for a refused head, as aiohttp's C parser words its message:
#: "<reason>:\n\n  <the offending bytes>\n  <a caret>". Only the reason is kept.
_PARSER_REASON_RE = re.compile(r"([A-Za-z][A-Za-z' -]{0,79}):\n\n")
#: The content codings aiohttp decodes here; a refusal naming another is a 415.
_DECODED = frozenset({"gzip", "deflate"})


def _coding_named(exc: ContentEncodingError) -> str:
    """The coding aiohttp's refusal is about. It words a body that does not decode as
    "Can not decode content-encoding: gzip" (or just "deflate"), but a coding it has no
    decoder for (br, zstd: their packages are not installed) as "...: brotli (br). Please
    install `Brotli`", raised as the head is parsed."""
    return exc.message.removeprefix("Can not decode content-encoding: ")


def _protocol_problem(exc: HttpProcessingError) -> ProblemError:
    """The problem for a request aiohttp's parser refused, in words of our own: its
    message quotes the request's bytes."""
    if isinstance(exc, LineTooLong) or exc.message.startswith("Too many headers"):
        return ProblemError(
            431,
            "request-header-fields-too-large",
            "Request header fields too large",
            "the request line or a header field is too long, or there are too many headers",
        )
    if isinstance(exc, ContentEncodingError):
        if _coding_named(exc) not in _DECODED:
            return unsupported_coding()
        detail = "the request body does not decode as its Content-Encoding (gzip or deflate)"
        return ProblemError(400, "malformed-body", "Bad request", detail)
    if isinstance(exc, PayloadEncodingError):
        detail = "the request body does not match its Content-Length or chunked framing"
        return ProblemError(400, "malformed-body", "Bad request", detail)
    if isinstance(exc, InvalidURLError):
        detail = "the request target is not a valid URL"
    elif isinstance(exc, BadStatusLine):
        detail = "the request line is not a valid HTTP/1.1 request line"
    else:
        detail = "the request head is not valid HTTP/1.1"
    reason = _PARSER_REASON_RE.match(exc.message)
    if reason:
        detail = f"{detail}: {reason.group(1).lower()}"
    return ProblemError(400, "malformed-request", "Bad request", detail)


class _BoundedRequestHandler(web.RequestHandler):
    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._header_timeout = header_timeout
        self._max_connections = max_connections
        #: When the awaited request head is due (loop time), or None while none is.
        self._head_deadline: float | None = None
        self._answered = 0
        self._partial_head = False

    # aiohttp counts the request heads it has parsed in _request_count; a request head
    # is awaited whenever every parsed request has been answered.

    def _awaiting_head(self) -> bool:
        return self._answered >= self._request_count

    def _arm(self) -> None:
        self._partial_head = False
        self._head_deadline = self._loop.time() + self._header_timeout

    def _disarm(self) -> None:
        self._head_deadline = None

    def check_head(self, now: float) -> None:
        """Close the connection if the request head it owes is overdue at ``now``."""
        deadline = self._head_deadline
        if deadline is None or now < deadline:
            return
        self._head_deadline = None
        if not self._awaiting_head() or self.transport is None:
            return
        if self._partial_head:
            self.transport.write(
                _raw_problem(
                    408,
                    "Request Timeout",
                    "request-timeout",
                    f"the request head did not arrive within {self._header_timeout:g} s",
                )
            )
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self._server.connections) > self._max_connections:
            if self.transport is not None:
                self.transport.write(
                    _raw_problem(
                        503,
                        "Service Unavailable",
                        "too-many-connections",
                        f"the server holds its limit of {self._max_connections} connections",
                        Retry_After="1",
                    )
                )
            self.force_close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm()
        elif data and self._head_deadline is not None:
            self._partial_head = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's answer for what never reached the app: a request its parser refused
        # (status 400, exc the parser's error), or a handler error past the middleware.
        if not isinstance(exc, HttpProcessingError):
            super().handle_error(request, status, exc, message)  # logs; refuses if sent
            try:
                title = HTTPStatus(status).phrase.capitalize()
            except ValueError:
                title = "Error"
            problem = ProblemError(
                status,
                "internal" if status >= 500 else "http-error",
                title,
                "an unexpected error occurred" if status >= 500 else title,
            )
        else:
            if request.writer.output_size > 0:
                raise ConnectionError("a response is already under way; cannot send another")
            problem = _protocol_problem(exc)
            # A client's malformed request is not a server fault: one line, no traceback.
            _log.info(
                "request.malformed",
                status=problem.status,
                error=type(exc).__name__,
                detail=problem.detail,
            )
        response = problem_response(problem)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp drains an unread body after the answer; a body that broke off or did
        # not decompress fails that read, and it logs a traceback. The client was
        # answered (400 if the handler read the body) and the connection is closed.
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            cause = kw["exc_info"].__cause__
            _log.info("request.body_unreadable", error=type(cause or kw["exc_info"]).__name__)
            return
        super().log_exception(*args, **kw)

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            # The response is written: a kept-alive connection owes the next head in time.
            self._answered += 1
            if self._awaiting_head() and self.transport is not None:
                self._arm()


class BoundedSite(web.BaseSite):
    """A TCP site whose connections get :class:`_BoundedRequestHandler`'s bounds."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        header_timeout: float,
        max_connections: int,
        reuse_address: bool = True,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._header_timeout = header_timeout
        self._max_connections = max_connections
        self._reuse_address = reuse_address
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def protocol() -> _BoundedRequestHandler:
            return _BoundedRequestHandler(
                server,
                loop=loop,
                access_log=None,
                header_timeout=self._header_timeout,
                max_connections=self._max_connections,
            )

        self._server = await loop.create_server(
            protocol, self._host, self._port, reuse_address=self._reuse_address
        )
        self._sweeper = asyncio.create_task(self._sweep(server), name="http-head-deadlines")

    async def _sweep(self, server: web.Server) -> None:
        loop = asyncio.get_running_loop()
        tick = min(1.0, max(0.01, self._header_timeout / 8))  # a floor: never a busy loop
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for handler in list(server.connections):
                if isinstance(handler, _BoundedRequestHandler):
                    handler.check_head(now)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await super().stop()
