"""The monitor's :data:`~verifier._monitor.Fetcher` over HTTP(S), with the standard
library (``maip-verify monitor --url``), and the check of the base URL it is given.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request

from verifier._cli_args import UsageError
from verifier._errors import FetchFailed
from verifier._monitor import Fetcher

__all__ = ["urllib_fetcher"]

_FETCH_TIMEOUT = 10.0
_MAX_RESPONSE = 1 << 20


def _base_url(base_url: str) -> str:
    """``--url``, checked before any request: urllib raises ValueError and
    http.client.InvalidURL for what it cannot parse, and appends paths blindly."""
    bad = (
        "--url must be an http(s) base URL (ASCII, with no spaces, query or user info), "
        f"not {base_url!r}"
    )
    if not base_url.isascii() or any(c.isspace() or not c.isprintable() for c in base_url):
        raise UsageError(bad)
    try:
        parts = urllib.parse.urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        # The idna codec rejects empty and over-long labels, which urllib only finds
        # when it resolves the name.
        (parts.hostname or "").encode("idna")
    except ValueError as e:
        raise UsageError(f"{bad}: {e}") from e
    if (
        parts.scheme not in {"http", "https"}
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise UsageError(bad)
    return base_url.rstrip("/")


def urllib_fetcher(base_url: str, timeout: float = _FETCH_TIMEOUT) -> Fetcher:
    """A :data:`Fetcher` over HTTP(S) with the standard library."""
    base = _base_url(base_url)

    def fetch(path: str) -> bytes:
        url = base + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
                body: bytes = resp.read(_MAX_RESPONSE + 1)
        except urllib.error.HTTPError as e:
            raise FetchFailed(f"GET {url}: HTTP {e.code}", status=e.code) from e
        # urllib wraps only OSError; a reply that is not HTTP (HTTPException) and a
        # redirect to a URL that does not parse (ValueError) come through bare.
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise FetchFailed(f"GET {url}: {e}") from e
        if len(body) > _MAX_RESPONSE:
            raise FetchFailed(f"GET {url}: response larger than {_MAX_RESPONSE} bytes")
        return body

    return fetch
