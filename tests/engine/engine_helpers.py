"""Shared helpers for the engine tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from ledger.bundle import write_bundle
from ledger.errors import StorageUnavailableError
from ledger.events import NewEvent
from ledger.log import Log
from ledger.note import generate_signer
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine
from ledger.orchestration import events as ev
from ledger.orchestration.binding import build_created
from ledger.orchestration.sqlite_summaries import SQLiteSummaryStore
from ledger.sqlite_store import SQLiteEventStore

TENANT = "tenant-a"
OTHER_TENANT = "tenant-b"


async def no_sleep(_: float) -> None:
    return None


def new_created(
    engine: Engine,
    *,
    tenant: str = TENANT,
    workflow_id: str | None = None,
    agent_id: str | None = None,
    agents: list[str] | None = None,
    input: Any = None,
    max_steps: int = 10,
) -> ev.OrchestrationCreated:
    """An engine run's ``orchestration.created``, as ``execute`` would build it."""
    return build_created(
        engine.registry,
        tenant,
        engine.new_orchestration_id(),
        executor="engine",
        workflow_id=workflow_id,
        workflow_version=None,
        agent_id=agent_id,
        agents=agents or [],
        input=input,
        parameters=None,
        model=None,
        max_steps=max_steps,
        timeout_seconds=300.0,
        started_by="test",
        request_shape=None,
    )


async def append_unfinished_run(engine: Engine, log: Log, tenant: str = TENANT) -> str:
    """Write a created and started engine run with no step yet, as a process that
    crashed right after starting it would have left it; its orchestration id."""
    agent = await engine.register_agent(tenant, name="bot", provider=scripted())
    chain = {"steps": [{"id": "a", "action": "llm", "prompt": "hi"}]}
    return await append_run(engine, log, chain, agents=[agent.agent_id], tenant=tenant)


async def append_run(
    engine: Engine,
    log: Log,
    definition: dict[str, Any],
    history: Callable[[str], list[tuple[str, Any]]] = lambda oid: [],
    *,
    max_steps: int = 10,
    agents: list[str] | None = None,
    tenant: str = TENANT,
) -> str:
    """Write an engine run of ``definition`` as a process that crashed after recording
    ``history(orchestration_id)`` (after created and started) would have left it."""
    wf = await engine.register_workflow(tenant, name="w", definition=definition)
    created = new_created(
        engine, tenant=tenant, workflow_id=wf.workflow_id, agents=agents, max_steps=max_steps
    )
    oid = created.orchestration_id
    events = [
        NewEvent(ev.ORCHESTRATION_CREATED, created),
        NewEvent(ev.ORCHESTRATION_STARTED, ev.OrchestrationStarted(orchestration_id=oid)),
        *(NewEvent(t, p) for t, p in history(oid)),
    ]
    await log.append(tenant, oid, 0, events)
    return oid


async def bundle_of(log: Log, oid: str, tenant: str = TENANT) -> bytes:
    """The orchestration's offline bundle (``specs/log-format.md`` §6), as exported."""
    lines: list[bytes] = []

    async def write(line: bytes) -> None:
        lines.append(line)

    await write_bundle(log, tenant, oid, write)
    return b"".join(lines)


def step_started(oid: str, step_id: str, attempt: int = 1, inputs: Any = None) -> tuple[str, Any]:
    payload = ev.StepStarted(
        orchestration_id=oid,
        step_id=step_id,
        agent_id=None,
        action="tool",
        attempt=attempt,
        inputs=inputs,
    )
    return ev.STEP_STARTED, payload


async def crash_with_unfinished_runs(harness: Harness, count: int) -> tuple[Log, list[str]]:
    """Leave ``count`` unfinished engine runs in a crashed process (the engine never
    stops); the log as the next process opens it, and the runs' ids, sorted."""
    engine = await harness.open()
    assert harness.log is not None
    oids = [await append_unfinished_run(engine, harness.log) for _ in range(count)]
    await harness.crash()
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    return log, sorted(oids)


class GatedRead:
    """The real log, except that calls of its ``method`` wait until ``gate`` opens."""

    def __init__(self, log: Log, method: str) -> None:
        self._log = log
        self._method = method
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return self._gated if name == self._method else getattr(self._log, name)

    async def _gated(self, *args: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await getattr(self._log, self._method)(*args)


_S = TypeVar("_S")


class DyingLog:
    """The real log until ``dead`` is set: then nothing more is written, as after a
    SIGKILL."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.dead = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def submit(self, *args: Any, **kw: Any) -> Any:
        if self.dead:
            raise StorageUnavailableError("the process is gone")
        return await self._log.submit(*args, **kw)


class Harness:
    """A log and an engine over one SQLite file; close + open simulates a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Where the engine keeps orchestration summaries, beside the ledger as a server does.
        self.summaries_path = path.with_name(path.stem + ".summaries.db")
        self.signer = generate_signer("maip-ledger.test/log")
        self.log: Log | None = None
        self.engine: Engine | None = None

    async def open(self, **engine_options: Any) -> Engine:
        self.log = await Log.open(SQLiteEventStore(self.path), self.signer, ORCHESTRATION_EVENTS)
        engine_options.setdefault("sleep", no_sleep)
        engine_options.setdefault("summaries", SQLiteSummaryStore(self.summaries_path))
        self.engine = Engine(self.log, **engine_options)
        await self.engine.start()
        return self.engine

    async def open_on(self, seam: Callable[[Log], _S], **engine_options: Any) -> tuple[_S, Engine]:
        """Like :meth:`open`, with the engine on ``seam(log)``: the real log behind a
        wrapper that stalls, fails or observes it at one point."""
        self.log = await Log.open(SQLiteEventStore(self.path), self.signer, ORCHESTRATION_EVENTS)
        wrapped = seam(self.log)
        engine_options.setdefault("sleep", no_sleep)
        engine_options.setdefault("summaries", SQLiteSummaryStore(self.summaries_path))
        self.engine = Engine(wrapped, **engine_options)  # type: ignore[arg-type]
        await self.engine.start()
        return wrapped, self.engine

    async def crash(self) -> None:
        """The process dies: the files close, and the engine never stops (what it held
        in memory, such as summaries not written yet, is lost)."""
        assert self.log is not None
        assert self.engine is not None
        await self.engine.summaries.store.close()
        await self.log.close()
        self.log, self.engine = None, None

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
            self.engine = None
        if self.log is not None:
            await self.log.close()
            self.log = None


def scripted(*responses: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "scripted", "responses": list(responses) or [{"content": "hello"}]}


def completion(
    content: str | None = "ok",
    tool_calls: list[dict[str, Any]] | None = None,
    *,
    model: str = "m1",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {
                    "name": c["name"],
                    "arguments": msgspec.json.encode(c["args"]).decode(),
                },
            }
            for i, c in enumerate(tool_calls)
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


async def send_in_two_writes(request: web.Request, body: bytes) -> web.StreamResponse:
    """Answer with ``body`` split across two writes, so a reader sees it arrive in parts."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    await asyncio.sleep(0.05)
    await resp.write(body[len(body) // 2 :])
    await resp.write_eof()
    return resp


@dataclass
class FakeOpenAI:
    """A real OpenAI-compatible HTTP server on loopback. ``script`` is consumed one item
    per request: a dict (JSON 200 body), an int (that HTTP status), ``("sleep", s)``,
    ``("raw", bytes)``, ``("chunked", bytes)`` (sent in two writes, a pause between),
    ``("status", code, bytes)`` or ``("status", code, bytes, headers)``, ``("gzip", bytes)``
    (sent gzip-compressed, ``Content-Encoding: gzip``) or an :class:`asyncio.Event`
    (answered ``completion("late")`` once set). When empty, it answers
    ``completion("done")``."""

    script: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        item = self.script.pop(0) if self.script else completion("done")
        if isinstance(item, int):
            return web.json_response({"error": {"message": "nope"}}, status=item)
        if isinstance(item, asyncio.Event):
            await item.wait()
            return web.json_response(completion("late"))
        if isinstance(item, tuple) and item[0] == "sleep":
            await asyncio.sleep(item[1])
            return web.json_response(completion("late"))
        if isinstance(item, tuple) and item[0] == "raw":
            return web.Response(body=item[1], content_type="application/json")
        if isinstance(item, tuple) and item[0] == "status":
            headers = dict(item[3]) if len(item) > 3 else {}
            content_type = headers.pop("Content-Type", "application/json")
            return web.Response(
                status=item[1], body=item[2], content_type=content_type, headers=headers
            )
        if isinstance(item, tuple) and item[0] == "gzip":
            return web.Response(
                body=gzip.compress(item[1]),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        if isinstance(item, tuple) and item[0] == "chunked":
            return await send_in_two_writes(request, item[1])
        return web.json_response(item)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


Check = Callable[[list[Any]], None]
