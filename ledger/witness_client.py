"""The log's side of C2SP ``tlog-witness`` ``add-checkpoint``
(https://c2sp.org/tlog-witness; ``specs/log-format.md`` §9.3 and §9.6): the request body,
what each answer means, and one POST with a timeout and a cap on the answer's size.

Request body: ``old <size>\\n``, one base64 consistency-proof hash a line (from ``old``
to the checkpoint's size), an empty line, then the signed checkpoint note.

Answers:

- 200: one or more signature lines, the witness's cosignature among them;
- 409 with ``Content-Type: text/x.tlog.size``: ``old`` is not the size the witness last
  cosigned, which the body gives (``<size>\\n``): retry with a proof from it. A 409 of any
  other type is a refusal (the witness holds another tree of that size: a fork);
- anything else (400, 403, 404, 422, 5xx): a refusal, reported and backed off from.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import aiohttp
import msgspec

from ledger.errors import LedgerError

__all__ = [
    "Conflict",
    "Cosigned",
    "Post",
    "Refused",
    "WitnessUnreachableError",
    "add_checkpoint_body",
    "http_post",
    "read_reply",
]

_SIZE_TYPE = "text/x.tlog.size"
_SIZE = re.compile(r"(0|[1-9][0-9]{0,19})\n?")
_MAX_SIZE = (1 << 64) - 1
#: A witness answers one line of about 150 bytes; a few KiB leaves room for several.
MAX_REPLY_BYTES = 16 * 1024
#: Seconds one submission may take, connecting included.
TIMEOUT_SECONDS = 10.0


class WitnessUnreachableError(LedgerError):
    """The witness could not be asked or did not answer (network, timeout, a reply too
    large): retried after a backoff."""


class Cosigned(msgspec.Struct, frozen=True):
    lines: tuple[str, ...]  # signature lines, without their newlines


class Conflict(msgspec.Struct, frozen=True):
    size: int  # the size the witness last cosigned


class Refused(msgspec.Struct, frozen=True):
    status: int
    reason: str  # the witness's first line, shortened


#: ``(url, body) -> (status, content type, body)``: one HTTP POST (injectable).
Post = Callable[[str, bytes], Awaitable[tuple[int, str, bytes]]]


def add_checkpoint_body(old: int, proof: Sequence[bytes], note: str) -> bytes:
    lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    return f"old {old}\n{lines}\n{note}".encode()


def read_reply(status: int, content_type: str, body: bytes) -> Cosigned | Conflict | Refused:
    """What a witness's answer means (pure)."""
    media = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", errors="replace")
    if status == 200:
        lines = tuple(line for line in text.split("\n") if line)
        return Cosigned(lines) if lines else Refused(status, "an empty 200 answer")
    if status == 409 and media == _SIZE_TYPE:
        match = _SIZE.fullmatch(text)
        if match and int(match.group(1)) <= _MAX_SIZE:
            return Conflict(int(match.group(1)))
        return Refused(status, "a 409 whose body is not a tree size")
    first = text.split("\n", 1)[0]
    reason = "".join(c if c.isprintable() else "?" for c in first[:200])
    return Refused(status, reason or f"HTTP {status}")


def http_post(session: aiohttp.ClientSession) -> Post:
    """A :data:`Post` over ``session``: a total timeout of ``TIMEOUT_SECONDS`` and at most
    ``MAX_REPLY_BYTES`` of answer read."""

    async def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        try:
            async with session.post(
                url,
                data=body,
                timeout=timeout,
                allow_redirects=False,
                headers={"Content-Type": "text/plain; charset=utf-8"},
            ) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), await _capped(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise WitnessUnreachableError(_redacted(f"{type(e).__name__}: {e}", url)) from e

    return post


def _redacted(message: str, url: str) -> str:
    """``message`` without the URL's user and password: aiohttp quotes a URL it refuses
    whole, and the message ends up in a log line."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password, parts.username]
    except ValueError:
        return "the witness URL is not a valid URL"
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


async def _capped(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused past ``MAX_REPLY_BYTES`` without reading the rest."""
    if (resp.content_length or 0) > MAX_REPLY_BYTES:
        raise WitnessUnreachableError(f"the answer is larger than {MAX_REPLY_BYTES} bytes")
    chunks: list[bytes] = []
    total = 0
    while chunk := await resp.content.read(MAX_REPLY_BYTES + 1 - total):
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_REPLY_BYTES:
            raise WitnessUnreachableError(f"the answer is larger than {MAX_REPLY_BYTES} bytes")
    return b"".join(chunks)
