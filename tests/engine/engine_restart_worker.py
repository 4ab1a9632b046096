"""A real process running the engine on a SQLite file (driven by test_engine_restart).

usage: engine_restart_worker.py start|start-llm|resume <db> <counter file>
The signer key comes from MAIP_TEST_SKEY so both runs sign as the same log.
``start`` runs a chain of tool steps; ``start-llm`` one ``llm`` step whose model (an
OpenAI-compatible server at MAIP_TEST_OPENAI_URL) asks for the ``effect`` tool.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import msgspec
import structlog

from ledger.log import Log
from ledger.note import NoteSigner
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine
from ledger.sqlite_store import SQLiteEventStore

TENANT = "tenant-restart"
STEPS = 6


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
    engine = Engine(log)

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
    if mode in ("start", "start-llm"):
        if mode == "start":
            provider: dict[str, Any] = {"kind": "scripted", "responses": [{"content": "ok"}]}
            definition, tools = workflow(), []
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
        await asyncio.sleep(3600)  # killed by the test
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
