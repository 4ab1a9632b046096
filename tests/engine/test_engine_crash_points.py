"""A process death after every possible number of durable stream writes.

For each orchestration shape below, the first process runs on a log that takes its
first ``k`` stream writes (``Log.submit``) and refuses every later one, as a process
killed right after its ``k``-th commit would leave the file; a fresh engine then opens
the same SQLite file and resumes the run. For every ``k`` short of a whole run:

- the run ends as an undisturbed run does (its results and step statuses), and its
  final state is a fresh replay of its stream;
- ``stream_seq`` is gapless, and each step attempt's events are in causal order;
- no call whose ``tool.completed`` / ``llm.completed`` was durable before the death is
  made again (a non-pure tool, and a real OpenAI-compatible server on loopback); the one
  call in flight at the death is made again at most once.

With a redaction rule on ``llm.completed:message.content`` no call is answered from the
log (``specs/workflows.md`` §2.1), so an interrupted ``llm`` attempt is retried from its
start and may repeat its calls: only completion, replay and the stream's shape are
checked there. The SIGKILL version of one crash point is in test_engine_restart.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from engine_helpers import TENANT, FakeOpenAI, Harness, completion, no_sleep

from ledger.errors import StorageUnavailableError
from ledger.events import Event
from ledger.log import Log
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine, RedactionPolicy, replay
from ledger.orchestration import events as ev
from ledger.orchestration.tools import ToolRegistry
from ledger.sqlite_store import SQLiteEventStore

# One llm step whose model asks for the non-pure `effect` twice (two rounds), then
# answers; a tool step calling `effect`; a decision on what both returned.
WORKFLOW = {
    "steps": [
        {"id": "think", "action": "llm", "agent": "gpt", "prompt": "do it: {{ input.task }}"},
        {
            "id": "act",
            "action": "tool",
            "tool": "effect",
            "depends_on": ["think"],
            "inputs": {"n": 3, "label": "{{ steps.think.output.json.label }}"},
        },
        {
            "id": "decide",
            "action": "decision",
            "depends_on": ["act"],
            "condition": {"eq": ["steps.act.output.label", "finished"]},
        },
    ],
    "output": {
        "answer": "{{ steps.think.output.content }}",
        "effect": "{{ steps.act.output }}",
        "branch": "{{ steps.decide.output.branch }}",
    },
}
REDACTION = ["llm.completed:message.content"]

CASES = ("workflow", "agent_loop", "workflow_redacted")
# Stream writes an undisturbed run makes (checked below): k = 1 .. WRITES-1 are the
# deaths, k = WRITES is the run that completes without dying.
WRITES = {"workflow": 14, "agent_loop": 12, "workflow_redacted": 14}
CRASH_POINTS = [(case, k) for case in CASES for k in range(1, WRITES[case])]


class Dying:
    """The real log for the first ``after`` stream writes; then nothing more is written,
    as after a SIGKILL right behind the ``after``-th commit."""

    def __init__(self, log: Log, after: int) -> None:
        self._log = log
        self.after = after
        self.written = 0
        self.refused = 0

    @property
    def dead(self) -> bool:
        return self.written >= self.after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def submit(self, *args: Any, **kw: Any) -> Any:
        if self.dead:
            self.refused += 1
            raise StorageUnavailableError("the process is gone")
        outcome = await self._log.submit(*args, **kw)
        self.written += 1  # its outcome is the real log's, awaited by the caller as ever
        return outcome


@dataclass
class Calls:
    """Real calls made, in order: (process, key, made after the first process's death)."""

    made: list[tuple[int, Any, bool]] = field(default_factory=list)
    process: int = 1
    dying: Dying | None = None

    def record(self, key: Any) -> None:
        # After its first refused write the first process is gone: a call it made then
        # would be the simulation's, not the engine's.
        dead = self.dying is not None and self.dying.refused > 0 and self.process == 1
        self.made.append((self.process, key, dead))

    def count(self, process: int) -> Counter[Any]:
        return Counter(key for p, key, _ in self.made if p == process)


class Model(FakeOpenAI):
    """A real OpenAI-compatible server on loopback that answers from the request alone
    (how many tool results it holds), so a repeated call gets the same answer."""

    calls: Calls | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        rounds = _tool_results(body["messages"])
        assert self.calls is not None
        self.calls.record(rounds)
        if rounds < 2:
            return web.json_response(
                completion(None, [{"name": "effect", "args": {"n": rounds + 1}}])
            )
        return web.json_response(completion('{"label": "finished"}'))


def _tool_results(messages: Any) -> int:
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")


@dataclass
class Outcome:
    state: Any
    events: list[Event]
    #: The stream as the first process left it (its durable writes).
    before: list[Event]
    llm: Calls
    tools: Calls
    writes: int


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def model() -> AsyncIterator[Model]:
    server = Model()
    await server.start()
    yield server
    await server.stop()


def _tools(calls: Calls) -> ToolRegistry:
    async def effect(args: Any) -> Any:  # "send the e-mail": counted, not repeatable
        calls.record(args["n"])
        return {**args, "sent": True}

    tools = ToolRegistry()
    tools.register("effect", effect, pure=False, parameters={"type": "object"})
    return tools


async def _run(
    case: str, after: int, path: Path, server: Model, session: aiohttp.ClientSession
) -> Outcome:
    """Run ``case`` in a process that dies after ``after`` stream writes, then in a fresh
    one on the same file until it ends."""
    harness = Harness(path)
    llm, tool_calls = Calls(), Calls()
    server.calls = llm
    tools = _tools(tool_calls)
    policy = RedactionPolicy(REDACTION, lambda t: b"salt") if case.endswith("_redacted") else None
    options: dict[str, Any] = {"tools": tools, "session": session, "redaction": policy}

    log = await Log.open(SQLiteEventStore(path), harness.signer, ORCHESTRATION_EVENTS)
    try:
        dying = Dying(log, after)
        llm.dying = tool_calls.dying = dying
        engine = Engine(dying, sleep=no_sleep, **options)
        await engine.start()
        provider = {"kind": "openai", "base_url": server.url}
        agent = await engine.register_agent(
            TENANT, name="gpt", provider=provider, model="m1", tools=["effect"]
        )
        if case == "agent_loop":
            started = await engine.execute(TENANT, agent_id=agent.agent_id, input="do it: now")
        else:
            wf = await engine.register_workflow(TENANT, name="w", definition=WORKFLOW)
            started = await engine.execute(
                TENANT, workflow_id=wf.workflow_id, input={"task": "now"}
            )
        oid = started.orchestration_id
        first = await engine.wait(TENANT, oid, max_wait=20)
        before = [r.event for r in await log.read_stream(TENANT, oid)]
        if dying.refused == 0:  # it ran to the end: nothing to resume
            await engine.close()
            return Outcome(first, before, before, llm, tool_calls, dying.written)
        # The run stopped at the first refused write, and the process is "killed": its
        # engine is never closed (no snapshot, nothing more), its log file is let go.
        assert engine.stalled == 1, f"k={after}: the first process did not stop the run"
    finally:
        await log.close()

    llm.process = tool_calls.process = 2
    try:
        engine = await harness.open(**options)
        state = await engine.wait(TENANT, oid, max_wait=20)
        assert harness.log is not None
        events = [r.event for r in await harness.log.read_stream(TENANT, oid)]
        assert await engine.get_state(TENANT, oid) == state
    finally:
        await harness.close()
    return Outcome(state, events, before, llm, tool_calls, dying.written)


_BASELINES: dict[str, Outcome] = {}


async def _baseline(
    case: str, tmp_path: Path, server: Model, session: aiohttp.ClientSession
) -> Outcome:
    """The run with no death (computed once per case)."""
    if case not in _BASELINES:
        _BASELINES[case] = await _run(case, 10**6, tmp_path / "baseline.db", server, session)
    return _BASELINES[case]


def _dump(events: list[Event]) -> str:
    lines = []
    for e in events:
        p = msgspec.to_builtins(e.payload)
        brief = {
            k: p[k]
            for k in ("step_id", "attempt", "gen_ai_tool_name", "arguments", "error", "retrying")
            if k in p
        }
        if e.type == "llm.requested":
            brief["tool_results"] = _tool_results(p["messages"])
        lines.append(f"  {e.stream_seq:>3} {e.type} {brief}")
    return "\n".join(lines)


def _check_stream(events: list[Event]) -> None:
    """Gapless ``stream_seq``; per step attempt: started, then its calls (each request
    before its completion), then its end; one terminal event, last."""
    assert [e.stream_seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == ev.ORCHESTRATION_CREATED
    assert events[1].type == ev.ORCHESTRATION_STARTED
    terminal = [i for i, e in enumerate(events) if e.type in ev.TERMINAL_TYPES]
    assert terminal == [len(events) - 1]
    started: set[tuple[str, int]] = set()
    ended: set[tuple[str, int]] = set()
    open_calls: dict[tuple[str, int], Any] = {}  # (step, attempt) -> the open request
    orphans = 0  # requests never completed: the call in flight at the death
    for e in events:
        p = e.payload
        if isinstance(p, ev.StepSkipped):
            continue
        if not hasattr(p, "step_id"):
            continue
        if isinstance(p, ev.DecisionMade):
            continue  # its attempt is the decision step's open one
        key = (p.step_id, p.attempt)
        if isinstance(p, ev.StepStarted):
            assert key not in started, f"{key} started twice"
            started.add(key)
            continue
        assert key in started, f"{e.type} of {key} before its step.started"
        assert key not in ended, f"{e.type} of {key} after the attempt ended"
        if isinstance(p, ev.LLMRequested | ev.ToolInvoked):
            if key in open_calls:
                orphans += 1
            open_calls[key] = p
        elif isinstance(p, ev.LLMCompleted | ev.ToolCompleted):
            asked = open_calls.pop(key, None)
            assert asked is not None, f"{e.type} of {key} without its request"
            if isinstance(p, ev.ToolCompleted):
                assert isinstance(asked, ev.ToolInvoked)
                assert (asked.gen_ai_tool_name, asked.gen_ai_tool_call_id) == (
                    p.gen_ai_tool_name,
                    p.gen_ai_tool_call_id,
                )
            else:
                assert isinstance(asked, ev.LLMRequested)
        elif isinstance(p, ev.StepCompleted | ev.StepFailed):
            if key in open_calls:
                # An attempt interrupted while a call was in flight.
                assert isinstance(p, ev.StepFailed), f"{key}: {p}"
                assert p.retrying, f"{key}: {p}"
                del open_calls[key]
                orphans += 1
            ended.add(key)
    assert not open_calls, f"calls never completed: {open_calls}"
    assert started <= ended, f"attempts never ended: {started - ended}"
    assert orphans <= 1, f"{orphans} calls never completed: one death leaves one in flight"


def _completed_calls(events: list[Event]) -> tuple[set[Any], set[Any]]:
    """The keys of the model and tool calls whose completion ``events`` hold."""
    llm: set[Any] = set()
    tools: set[Any] = set()
    asked: dict[tuple[str, int], Any] = {}
    for e in events:
        p = e.payload
        if isinstance(p, ev.LLMRequested | ev.ToolInvoked):
            asked[p.step_id, p.attempt] = p
        elif isinstance(p, ev.LLMCompleted):
            llm.add(_tool_results(asked[p.step_id, p.attempt].messages))
        elif isinstance(p, ev.ToolCompleted):
            tools.add(asked[p.step_id, p.attempt].arguments["n"])
    return llm, tools


def _statuses(state: Any) -> list[tuple[str, str]]:
    return [(s.step_id, s.status) for s in state.steps]


@pytest.mark.parametrize("case", CASES)
async def test_an_undisturbed_run_makes_the_writes_the_sweep_covers(
    case: str, tmp_path: Path, model: Model, session: aiohttp.ClientSession
) -> None:
    base = await _baseline(case, tmp_path, model, session)
    assert (base.state.status, base.state.reason) == ("completed", None), _dump(base.events)
    assert base.writes == WRITES[case], (
        f"update WRITES: the sweep must reach every write\n{_dump(base.events)}"
    )
    assert replay(base.events) == base.state
    _check_stream(base.events)
    assert base.llm.count(1) == Counter({0: 1, 1: 1, 2: 1})
    tools = {1: 1, 2: 1} if case == "agent_loop" else {1: 1, 2: 1, 3: 1}
    assert base.tools.count(1) == Counter(tools)


@pytest.mark.parametrize(("case", "k"), CRASH_POINTS)
async def test_a_death_after_k_writes_resumes_to_the_same_end(
    case: str, k: int, tmp_path: Path, model: Model, session: aiohttp.ClientSession
) -> None:
    base = await _baseline(case, tmp_path, model, session)
    out = await _run(case, k, tmp_path / "ledger.db", model, session)
    story = f"case {case}, death after write {k}; the stream:\n{_dump(out.events)}"

    assert out.writes == k, story
    assert out.state.terminal, story
    assert (out.state.status, out.state.reason) == (base.state.status, base.state.reason), story
    assert replay(out.events) == out.state, story
    assert out.events[: len(out.before)] == out.before, story  # the history is kept as written
    try:
        _check_stream(out.events)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{story}") from None
    # The first process stopped at its first refused write: nothing after it ran.
    assert not [c for c in out.llm.made + out.tools.made if c[2]], story

    if case.endswith("_redacted"):
        return  # calls may be made again from the attempt's start (no journal)
    assert out.state.results == base.state.results, story
    assert _statuses(out.state) == _statuses(base.state), story
    done_llm, done_tools = _completed_calls(out.before)
    for what, calls, done in (("model", out.llm, done_llm), ("tool", out.tools, done_tools)):
        first, second = calls.count(1), calls.count(2)
        repeated = sorted(key for key in second if key in done)
        assert not repeated, f"{what} calls {repeated} made again after they were recorded\n{story}"
        # Each call is made at most once by each process: once more only if in flight.
        assert all(n == 1 for n in first.values()), f"{what}: {first}\n{story}"
        assert all(n == 1 for n in second.values()), f"{what}: {second}\n{story}"
        in_flight = {key for key in first if key not in done}
        assert len(in_flight) <= 1, f"{what}: {in_flight} in flight at once\n{story}"
        assert set(first) | set(second) == set(
            base.llm.count(1) if what == "model" else base.tools.count(1)
        ), story
