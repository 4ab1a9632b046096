"""The witness's HTTP shell: ``POST /add-checkpoint`` (C2SP tlog-witness, with the root
as the submission prefix) over the standard library's ``ThreadingHTTPServer``
(``specs/log-format.md`` §9.3).

Statuses: 200 with the cosignature line (``text/plain; charset=utf-8``); 400, 403,
404, 409 (``text/x.tlog.size`` when it reports the witness's size), 422 from the checks;
404 for any other path and 405 for another method; 411 without a ``Content-Length`` (a
chunked body is not read); 413 for a body over the cap, refused before it is read;
500 only for the witness's own faults (its state cannot be read or written), with
nothing cosigned; 503 for a connection beyond ``MAX_CONNECTIONS`` open at once (each
open connection holds a thread: without a cap, idle connections grew them without
bound). A whole request must arrive within ``request_seconds``, or its connection is
shut. Every error body is one line of text saying why.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from verifier._errors import CheckpointRefused
from verifier._text import visible
from verifier._witness import Witness
from verifier._witness_state import StateCorrupt

__all__ = [
    "ADD_CHECKPOINT_PATH",
    "DEFAULT_MAX_BODY",
    "DEFAULT_REQUEST_SECONDS",
    "MAX_CONNECTIONS",
    "WitnessServer",
]

ADD_CHECKPOINT_PATH = "/add-checkpoint"
#: 63 proof lines and a checkpoint with many cosignatures fit in a few KiB.
DEFAULT_MAX_BODY = 64 * 1024
#: Connections served at once (a thread each); the next is answered 503 and closed.
MAX_CONNECTIONS = 64
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 40\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
    b"the witness is serving too many clients\n"
)
#: Seconds a connection may sit idle, or wait for any one read, before it is dropped.
_SOCKET_TIMEOUT = 30.0
#: Seconds a whole request (its line, headers and body) may take to arrive.
DEFAULT_REQUEST_SECONDS = 30.0
_SIZE_TYPE = "text/x.tlog.size"
_TEXT_TYPE = "text/plain; charset=utf-8"


class WitnessServer(ThreadingHTTPServer):
    """A threading HTTP server for one :class:`Witness`."""

    daemon_threads = True
    # socketserver's default listen backlog (5) refuses connections under a burst.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        witness: Witness,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_connections: int = MAX_CONNECTIONS,
        request_seconds: float = DEFAULT_REQUEST_SECONDS,
    ) -> None:
        self.witness = witness
        self.max_body = max_body
        self.request_seconds = request_seconds
        # Requests being read, by handler: when each must have arrived. One reaper
        # thread for all of them: a timer thread each would double the threads that
        # MAX_CONNECTIONS bounds.
        self._deadlines: dict[_Handler, float] = {}
        self._deadlines_lock = threading.Lock()
        reaper = threading.Thread(target=self._reap, name="witness-deadlines", daemon=True)
        reaper.start()
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # On the accepting thread: refuse at once, never wait for a slot (a client that
        # holds connections open must not stop the witness from accepting).
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            sys.stderr.write(f"witness: {client_address[0]} 503 too many connections\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def started(self, handler: _Handler) -> None:
        with self._deadlines_lock:
            self._deadlines[handler] = time.monotonic() + self.request_seconds

    def finished(self, handler: _Handler) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(handler, None)

    def _reap(self) -> None:
        tick = min(1.0, self.request_seconds / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._deadlines_lock:
                late = [h for h, deadline in self._deadlines.items() if deadline <= now]
                for handler in late:
                    del self._deadlines[handler]
            for handler in late:
                handler.cut_off()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as C2SP asks witnesses to support
    server_version = "maip-witness"
    sys_version = ""
    timeout = _SOCKET_TIMEOUT
    server: WitnessServer

    def handle_one_request(self) -> None:
        # The socket timeout bounds each read, not the request: a client sending a byte
        # every few seconds held its connection, and its thread (one of MAX_CONNECTIONS),
        # for as long as it liked. Past the deadline the connection is shut, which ends
        # any read in progress; a request fully read by then is answered as usual.
        self.server.started(self)
        try:
            super().handle_one_request()
        finally:
            self.server.finished(self)

    def cut_off(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)
        self.log_message("request not complete within %.0f s: closed", self.server.request_seconds)

    def _reply(
        self, status: int, body: str, content_type: str = _TEXT_TYPE, *, close: bool = False
    ) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if close:
            # The body was not read: the connection cannot carry another request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _refuse(self, status: int, why: str, *, close: bool = False) -> None:
        self.log_message("%d %s", status, why)
        self._reply(status, visible(why) + "\n", close=close)

    def _not_here(self) -> None:
        # Any body is left unread, so the connection ends with the reply.
        self.close_connection = True
        self.log_message("%s %s: not served", self.command, self.path)
        if self.path == ADD_CHECKPOINT_PATH:
            data = b"add-checkpoint takes POST\n"
            self.send_response(405)
            self.send_header("Allow", "POST")
            self.send_header("Content-Type", _TEXT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        else:
            self._reply(404, "not found: this witness serves POST /add-checkpoint\n", close=True)

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_here  # noqa: N815

    def _read_body(self) -> bytes | None:
        if "Transfer-Encoding" in self.headers:
            self._refuse(411, "a body must be sent with a Content-Length", close=True)
            return None
        declared = self.headers.get_all("Content-Length") or []
        if len(declared) != 1:
            self._refuse(411, "a body must be sent with one Content-Length", close=True)
            return None
        length_text = declared[0].strip()
        if not length_text.isascii() or not length_text.isdigit():
            self._refuse(400, "Content-Length is not a decimal number", close=True)
            return None
        length = int(length_text)
        if length > self.server.max_body:
            self._refuse(413, f"the body is larger than {self.server.max_body} bytes", close=True)
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def do_POST(self) -> None:
        if self.path != ADD_CHECKPOINT_PATH:
            self._not_here()
            return
        body = self._read_body()
        if body is None:
            return
        try:
            line = self.server.witness.add_checkpoint(body)
        except CheckpointRefused as e:
            if e.size is not None:
                self.log_message("%d %s", e.status, e.message)
                self._reply(e.status, f"{e.size}\n", _SIZE_TYPE)
            else:
                self._refuse(e.status, e.message)
            return
        except (StateCorrupt, OSError) as e:
            # Nothing was cosigned; the client may retry once the operator has looked.
            self._refuse(500, f"the witness cannot use its state: {e}")
            return
        self.log_message("200 cosigned a checkpoint")
        self._reply(200, line)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Each reply is logged once, with its reason, by the handler itself.
        pass

    def log_message(self, format: str, *args: Any) -> None:
        # One line per event, escaped: a request line is the client's text.
        sys.stderr.write(visible(f"witness: {self.address_string()} {format % args}") + "\n")
