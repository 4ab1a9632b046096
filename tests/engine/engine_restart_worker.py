"""A real process running the engine on a SQLite file (driven by test_engine_restart).

usage: engine_restart_worker.py start|start-llm|fail|fail-held|resume <db> <counter file>
The signer key comes from MAIP_TEST_SKEY so both runs sign as the same log.
``start`` runs a chain of tool steps; ``start-llm`` one ``llm`` step whose model (an
OpenAI-compatible server at MAIP_TEST_OPENAI_URL) asks for the ``effect`` tool.
``fail`` runs two steps at once, an ``llm`` step whose (scripted) model fails, and a
``tool`` step; it prints the run's final state. ``fail-held`` runs the same on a log
that writes nothing more once a step's final ``step.failed`` is durable (it prints
``held`` then): the test kills the process there, before the run's terminal event.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from ledger.events import NewEvent
from ledger.log import Log
from ledger.note import NoteSigner
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine
from ledger.sqlite_store import SQLiteEventStore

TENANT = "tenant-restart"
STEPS = 6


#: An llm step whose model answers nothing (a provider error that is not transient),
#: and a tool step started beside it, whose write-ahead flush makes that failure
#: durable before the run records its end.
FAILING = {
    "steps": [
        {"id": "think", "action": "llm", "prompt": "go"},
        {"id": "act", "action": "tool", "tool": "effect", "inputs": {"step": "act"}},
    ]
}


class HeldAfterFailure:
    """The real log until a write holding a step's final ``step.failed`` is durable;
    every later write then waits for ever, as in a process killed right there."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.held = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def submit(
        self, tenant_id: str, stream_id: str, expected_seq: int, events: Sequence[NewEvent]
    ) -> asyncio.Future[Any]:
        if self.held:
            await asyncio.Event().wait()
        outcome = await self._log.submit(tenant_id, stream_id, expected_seq, events)
        if any(e.type == "step.failed" and not e.payload.retrying for e in events):
            self.held = True
            outcome.add_done_callback(_announce)
        return outcome


def _announce(outcome: asyncio.Future[Any]) -> None:
    if not outcome.cancelled() and outcome.exception() is None:
        print("held", flush=True)  # durable: the test may kill the process now


def workflow() -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"id": "s0", "action": "llm", "prompt": "go"},
    ]
    for i in range(1, STEPS):
        steps.append(
            {
                "id": f"s{i}",
                "action": "tool",
                "tool": "effect",
                "depends_on": [f"s{i - 1}"],
                "inputs": {"step": f"s{i}"},
            }
        )
    return {"steps": steps}


async def main(mode: str, db: str, counter: str) -> None:
    signer = NoteSigner.from_skey(os.environ["MAIP_TEST_SKEY"])
    log = await Log.open(SQLiteEventStore(db), signer, ORCHESTRATION_EVENTS)
    engine = Engine(HeldAfterFailure(log) if mode == "fail-held" else log)  # type: ignore[arg-type]

    async def effect(args: Any) -> Any:
        # An outside effect: one line per execution, durable before the step completes.
        with open(counter, "a") as f:
            f.write(args["step"] + "\n")
            f.flush()
            os.fsync(f.fileno())
        await asyncio.sleep(0.3)
        return {"done": args["step"]}

    engine.tools.register("effect", effect, pure=False)
    resumed = await engine.start()
    if mode in ("start", "start-llm", "fail", "fail-held"):
        if mode == "start":
            provider: dict[str, Any] = {"kind": "scripted", "responses": [{"content": "ok"}]}
            definition, tools = workflow(), []
        elif mode in ("fail", "fail-held"):
            # Only a response for a prompt that never comes: the model call fails.
            provider = {"kind": "scripted", "responses": [{"when": "never", "content": "x"}]}
            definition, tools = FAILING, []
        else:
            provider = {"kind": "openai", "base_url": os.environ["MAIP_TEST_OPENAI_URL"]}
            definition = {"steps": [{"id": "s0", "action": "llm", "prompt": "go"}]}
            tools = ["effect"]
        agent = await engine.register_agent(
            TENANT, name="a", provider=provider, model="m1", tools=tools
        )
        wf = await engine.register_workflow(TENANT, name="w", definition=definition)
        state = await engine.execute(TENANT, workflow_id=wf.workflow_id, agents=[agent.agent_id])
        print(state.orchestration_id, flush=True)
        if mode != "fail":
            await asyncio.sleep(3600)  # killed by the test
            return
        final = await engine.wait(TENANT, state.orchestration_id)
        sys.stdout.write(msgspec.json.encode(final).decode() + "\n")
        await engine.close()
        await log.close()
        return
    print(msgspec.json.encode({"resumed": resumed}).decode(), flush=True)
    for oid in resumed:
        final = await engine.wait(TENANT, oid)
        sys.stdout.write(msgspec.json.encode(final).decode() + "\n")
    await engine.close()
    await log.close()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
