"""The lines of a bundle (``specs/log-format.md`` §6: JSON Lines, each ended by LF),
exactly as :func:`~verifier._bundle.verify_bundle` reads them: in large blocks, so that
memory does not grow with the bundle, and with a line longer than :data:`LINE_LIMIT`
(only the state trailer may be that long) handed out in chunks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO

from verifier._bundle_report import STEP_PARSE
from verifier._errors import MalformedInput

__all__ = ["LINE_LIMIT", "bundle_lines"]

LINE_LIMIT = 1 << 20
_BLOCK = 1 << 20


def _lines(stream: IO[bytes]) -> Iterator[bytes | Iterator[bytes]]:
    """Lines (without their newline) of at most LINE_LIMIT bytes, read in large blocks.

    A longer line is yielded as an iterator of its chunks; the caller must consume it
    before asking for the next line (the rest of the block is handed back through
    ``leftover``).
    """
    buf = b""
    leftover: list[bytes] = []

    def long_line(first: bytes) -> Iterator[bytes]:
        chunk = first
        while True:
            nl = chunk.find(b"\n")
            if nl >= 0:
                yield chunk[:nl]
                leftover.append(chunk[nl + 1 :])
                return
            yield chunk
            chunk = stream.read(_BLOCK)
            if not chunk:
                return

    while True:
        if leftover:
            block = leftover.pop()
        else:
            block = stream.read(_BLOCK)
            if not block:
                if buf:
                    yield buf
                return
        # bytes.find is memchr; bytes.split compares byte by byte, which on 2 KiB event
        # lines cost about as much as decoding them.
        find = block.find
        nl = find(b"\n")
        if nl < 0:
            buf += block
        else:
            yield buf + block[:nl] if buf else block[:nl]
            start = nl + 1
            nl = find(b"\n", start)
            while nl >= 0:
                yield block[start:nl]
                start = nl + 1
                nl = find(b"\n", start)
            buf = block[start:]
        if len(buf) > LINE_LIMIT:
            rest, buf = buf, b""
            yield long_line(rest)


def bundle_lines(bundle: bytes | str | IO[bytes]) -> Iterator[bytes | Iterator[bytes]]:
    """The lines of ``bundle`` exactly as :func:`verify_bundle` reads them (see ``_lines``).

    A line ends at LF only: a CR is JSON whitespace inside a line (§6), so anything that
    shows a bundle's lines must split them here, or it could show lines other than the
    ones verified.
    """
    return _lines(_open(bundle))


def _open(bundle: bytes | str | IO[bytes]) -> IO[bytes]:
    if isinstance(bundle, str):
        try:
            return io.BytesIO(bundle.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise MalformedInput("bundle text is not valid Unicode").at_step(STEP_PARSE) from e
    if isinstance(bundle, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(bundle))
    if hasattr(bundle, "readline"):
        return bundle
    raise MalformedInput("a bundle must be bytes, text or a binary file").at_step(STEP_PARSE)
