"""Tools: an in-process registry of async callables, the built-ins and the ``http`` tool.

Built-ins: ``echo`` (returns its arguments), ``json_extract`` (``{"data": ..., "path":
"a.b[0]"}``), ``calculator`` (``{"expression": "2*(3+4)"}``, a safe parser).

The ``http`` tool POSTs its JSON arguments to a configured URL. SSRF guard: the URL's
host must be in ``allow_hosts``; every address the host resolves to must be public
(``_net.is_public_address``) unless the host is also in ``allow_private_hosts``; the
connection goes to the checked address (the check runs in the resolver, so DNS
rebinding cannot swap it); redirects are followed only to allow-listed hosts, at most 3
times; the response is capped in size and time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
import msgspec

from ledger.orchestration._json import decode_json
from ledger.orchestration._net import GuardedResolver, check_url, is_public_address, read_capped
from ledger.orchestration.calculator import calculate
from ledger.orchestration.errors import SSRFBlockedError, TemplateError, ToolError
from ledger.orchestration.templates import parse_path, resolve_path

__all__ = ["GuardedResolver", "HttpTool", "Tool", "ToolFn", "ToolRegistry", "is_public_address"]

ToolFn = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    fn: ToolFn
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    #: ``True`` if the tool has no effect outside the process and is deterministic; the
    #: engine may then buffer its events rather than write them ahead of the call.
    pure: bool = False

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


async def _echo(args: Any) -> Any:
    return args


async def _json_extract(args: Any) -> Any:
    if not isinstance(args, Mapping) or not isinstance(args.get("path"), str):
        raise ToolError('json_extract takes {"data": ..., "path": "a.b[0]"}')
    try:
        ref = parse_path("input" + ("" if args["path"].startswith("[") else ".") + args["path"])
        return resolve_path(ref, {"input": args.get("data")})
    except TemplateError as e:
        raise ToolError(f"json_extract: path {args['path']!r} does not resolve") from e


async def _calculator(args: Any) -> Any:
    if not isinstance(args, Mapping) or not isinstance(args.get("expression"), str):
        raise ToolError('calculator takes {"expression": "..."}')
    return calculate(args["expression"])


class ToolRegistry:
    """Tools by name. Starts with the built-ins; users add their own async callables."""

    def __init__(self, *, builtins: bool = True) -> None:
        self._tools: dict[str, Tool] = {}
        if builtins:
            self.register("echo", _echo, description="Returns its arguments.", pure=True)
            self.register(
                "json_extract",
                _json_extract,
                description="Extract a value from JSON data by a path like a.b[0].",
                parameters={
                    "type": "object",
                    "properties": {"data": {}, "path": {"type": "string"}},
                    "required": ["data", "path"],
                },
                pure=True,
            )
            self.register(
                "calculator",
                _calculator,
                description="Evaluate an arithmetic expression.",
                parameters={
                    "type": "object",
                    "properties": {"expression": {"type": "string"}},
                    "required": ["expression"],
                },
                pure=True,
            )

    def register(
        self,
        name: str,
        fn: ToolFn,
        *,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        pure: bool = False,
    ) -> Tool:
        if name in self._tools:
            raise ValueError(f"tool {name!r} is already registered")
        tool = Tool(name, fn, description, parameters or {"type": "object"}, pure)
        self._tools[name] = tool
        return tool

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)


class HttpTool:
    """A configured ``http`` tool. Call :meth:`close` (or use the engine, which does)."""

    def __init__(
        self,
        url: str,
        *,
        allow_hosts: list[str] | tuple[str, ...],
        allow_private_hosts: list[str] | tuple[str, ...] = (),
        timeout_seconds: float = 10.0,
        max_response_bytes: int = 1024 * 1024,
        max_redirects: int = 3,
    ) -> None:
        self.url = url
        self.allow_hosts = frozenset(h.lower() for h in allow_hosts)
        private = frozenset(h.lower() for h in allow_private_hosts)
        self._private = private & self.allow_hosts
        self.timeout_seconds = timeout_seconds
        self.max_response_bytes = max_response_bytes
        self.max_redirects = max_redirects
        self._resolver = GuardedResolver(self.allow_hosts, self._private)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, args: Any) -> Any:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=self._resolver, use_dns_cache=False)
            # No cookie jar: one tool serves every tenant's runs (see the engine's).
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
        body = msgspec.json.encode(args)
        url = self.url
        try:
            async with asyncio.timeout(self.timeout_seconds):
                for _ in range(self.max_redirects + 1):
                    check_url(url, self.allow_hosts, self._private)
                    async with self._session.post(
                        url,
                        data=body,
                        headers={"Content-Type": "application/json"},
                        allow_redirects=False,
                    ) as resp:
                        if resp.status in (301, 302, 303, 307, 308):
                            url = urljoin(url, resp.headers.get("Location", ""))
                            continue
                        raw = await read_capped(resp, self.max_response_bytes)
                        status = resp.status
                        break
                else:
                    raise ToolError("too many redirects")
        except TimeoutError:
            raise ToolError(
                f"http tool timed out after {self.timeout_seconds:g}s", transient=True
            ) from None
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, SSRFBlockedError):
                raise e.os_error from None
            raise ToolError(f"http tool connection failed: {e.os_error}", transient=True) from None
        except SSRFBlockedError:
            raise
        except aiohttp.InvalidURL as e:
            # Retrying cannot mend a URL (a redirect's Location, say).
            raise ToolError(f"http tool got an unusable URL: {type(e).__name__}") from None
        except aiohttp.ClientError as e:
            raise ToolError(f"http tool failed: {type(e).__name__}", transient=True) from None
        if raw is None:
            raise ToolError(f"response exceeds {self.max_response_bytes} bytes")
        if status == 429 or status >= 500:
            raise ToolError(f"http tool got HTTP {status}", transient=True)
        if status >= 400:
            raise ToolError(f"http tool got HTTP {status}")
        try:
            return decode_json(raw) if raw else None
        except msgspec.DecodeError:
            return raw.decode("utf-8", "replace")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
