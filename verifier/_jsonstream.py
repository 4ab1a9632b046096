"""A small streaming JSON (RFC 8259) parser for the bundle's state trailer (§6 item 4).

The trailer's ``state.receipts`` holds one id per event: 1,000,000 events make a
~40 MB line. To keep the verifier's memory flat, a trailer longer than the line limit
is parsed from chunks; the array at ``receipts_path`` is not built but handed to
``on_item`` element by element, and appears in the result as :data:`STREAMED`.
Everything else is built as ``msgspec.json.decode`` would build it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from verifier._errors import MalformedInput

__all__ = ["STREAMED", "parse_stream"]

STREAMED: Any = msgspec.UNSET
_MAX_TOKEN = 8 << 20
_MAX_DEPTH = 200
_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"')
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_BYTES = frozenset(b"0123456789+-.eE")
_LITERALS = {b"t": (b"true", True), b"f": (b"false", False), b"n": (b"null", None)}
# Fast path for arrays of plain strings (no escapes): a run of items each followed by a
# comma, then one item and the separator after it.
_PLAIN_RUN = re.compile(rb'(?:[ \t\n\r]*"[^"\\\x00-\x1f]*"[ \t\n\r]*,)+')
_NOT_PLAIN = bytes(range(0x20)) + b"\\"
_PLAIN_ITEM = re.compile(rb'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*([,\]])')


class _Parser:
    def __init__(
        self,
        chunks: Iterator[bytes],
        receipts_path: tuple[str, ...],
        on_item: Callable[[object], None],
        on_plain: Callable[[list[bytes]], None],
    ) -> None:
        self.chunks = chunks
        self.on_plain = on_plain
        self.buf = b""
        self.pos = 0
        self.eof = False
        self.receipts_path = receipts_path
        self.on_item = on_item

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        if len(self.buf) > _MAX_TOKEN:
            raise MalformedInput(f"a JSON token in the state trailer exceeds {_MAX_TOKEN} bytes")
        return True

    def _match(self, regex: re.Pattern[bytes]) -> re.Match[bytes] | None:
        while True:
            m = regex.match(self.buf, self.pos)
            if m is not None and (m.end() < len(self.buf) or self.eof):
                return m
            if not self._fill():
                return regex.match(self.buf, self.pos)

    def _compact_run(self) -> list[bytes] | None:
        """What ``_PLAIN_RUN`` matches at ``pos`` when it is in msgspec's compact layout
        (``"a","b",`` up to the buffer's last ``",``), found with bytes operations, which
        cost a third of the regex on a large receipts list; None if there is no such run.

        The region is a run of plain strings exactly when, split at ``","``, it holds two
        quotes per item (so no item has one) and no backslash or control character.
        """
        buf, pos = self.buf, self.pos
        end = buf.rfind(b'",', pos) + 2
        if end < pos + 3 or buf[pos] != 34:  # 34: '"'
            return None
        region = buf[pos:end]
        items = region[1:-2].split(b'","')
        plain = len(region.translate(None, _NOT_PLAIN)) == len(region)
        if not plain or region.count(b'"') != 2 * len(items):
            return None
        self.pos = end
        return items

    def _peek(self) -> bytes:
        """The next non-whitespace byte (not consumed), reading chunks as needed."""
        while True:
            ws = _WS.match(self.buf, self.pos)
            if ws is not None:
                self.pos = ws.end()
            if self.pos < len(self.buf):
                return self.buf[self.pos : self.pos + 1]
            if not self._fill():
                raise MalformedInput("state trailer ends in the middle of a JSON value")

    def _expect(self, char: bytes) -> None:
        if self._peek() != char:
            raise MalformedInput(f"state trailer: expected {char.decode()!r} in JSON")
        self.pos += 1

    def _number(self) -> re.Match[bytes] | None:
        # A number is complete only when a byte that cannot continue it follows (or EOF).
        while True:
            m = _NUMBER.match(self.buf, self.pos)
            if m is not None and (
                self.eof or (m.end() < len(self.buf) and self.buf[m.end()] not in _NUMBER_BYTES)
            ):
                return m
            if not self._fill():
                return _NUMBER.match(self.buf, self.pos)

    def _token(self, regex: re.Pattern[bytes], what: str) -> Any:
        m = self._number() if regex is _NUMBER else self._match(regex)
        if m is None:
            raise MalformedInput(f"state trailer: invalid JSON {what}")
        self.pos = m.end()
        try:
            return msgspec.json.decode(m.group(0))
        except (msgspec.DecodeError, ValueError) as e:
            raise MalformedInput(f"state trailer: invalid JSON {what}") from e

    def value(self, path: tuple[str, ...], depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise MalformedInput(f"state trailer nests deeper than {_MAX_DEPTH} levels")
        c = self._peek()
        if c == b"{":
            self.pos += 1
            obj: dict[str, Any] = {}
            if self._peek() == b"}":
                self.pos += 1
                return obj
            while True:
                if self._peek() != b'"':
                    raise MalformedInput("state trailer: a JSON object key must be a string")
                key = self._token(_STRING, "string")
                self._expect(b":")
                obj[key] = self.value((*path, key), depth + 1)
                c = self._peek()
                self.pos += 1
                if c == b"}":
                    return obj
                if c != b",":
                    raise MalformedInput("state trailer: expected ',' or '}' in a JSON object")
        if c == b"[":
            self.pos += 1
            streamed = path == self.receipts_path
            items: list[Any] = []
            if self._peek() == b"]":
                self.pos += 1
                return STREAMED if streamed else items
            while True:
                if streamed:
                    compact = self._compact_run()
                    if compact is not None:
                        self.on_plain(compact)
                        continue
                    run = _PLAIN_RUN.match(self.buf, self.pos)
                    if run is not None:
                        # Complete items only, so a run may end at the buffer's end.
                        self.on_plain(run.group(0).split(b'"')[1::2])
                        self.pos = run.end()
                        continue
                    m = self._match(_PLAIN_ITEM)
                    if m is not None:
                        self.on_plain([m.group(1)])
                        self.pos = m.end()
                        if m.group(2) == b"]":
                            return STREAMED
                        continue
                    self.on_item(self.value((*path, "[]"), depth + 1))
                else:
                    items.append(self.value((*path, "[]"), depth + 1))
                c = self._peek()
                self.pos += 1
                if c == b"]":
                    return STREAMED if streamed else items
                if c != b",":
                    raise MalformedInput("state trailer: expected ',' or ']' in a JSON array")
        if c == b'"':
            return self._token(_STRING, "string")
        if c in _LITERALS:
            word, val = _LITERALS[c]
            while len(self.buf) - self.pos < len(word) and self._fill():
                pass
            if self.buf[self.pos : self.pos + len(word)] != word:
                raise MalformedInput("state trailer: invalid JSON literal")
            self.pos += len(word)
            return val
        return self._token(_NUMBER, "number")

    def finish(self) -> None:
        while True:
            ws = _WS.match(self.buf, self.pos)
            if ws is not None:
                self.pos = ws.end()
            if self.pos < len(self.buf):
                raise MalformedInput("state trailer has data after its JSON value")
            if not self._fill():
                return


def parse_stream(
    chunks: Iterator[bytes],
    receipts_path: tuple[str, ...],
    on_item: Callable[[object], None],
    on_plain: Callable[[list[bytes]], None],
) -> Any:
    """Parse one JSON value from ``chunks``; the array at ``receipts_path`` is streamed:
    plain string items go to ``on_plain`` as raw bytes, in batches; others to ``on_item``."""
    parser = _Parser(chunks, receipts_path, on_item, on_plain)
    result = parser.value((), 0)
    parser.finish()
    return result
