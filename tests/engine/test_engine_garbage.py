"""The engine's hot path leaves no reference cycles behind.

``ledger.runtime`` runs the cyclic collector rarely (``GC_THRESHOLDS``), which is free
only while executions leave nothing for it: what reference counting cannot free waits
for a collection. So an orchestration must not leave a cycle behind.
"""

from __future__ import annotations

import gc
from typing import Any

from engine_helpers import TENANT

# The benchmark's workflow (llm -> tool -> decision): the hot path this guards.
from bench.engine import WORKFLOW
from ledger.orchestration import Engine


async def test_completed_orchestrations_leave_no_cyclic_garbage(
    engine: Engine, make_agent: Any
) -> None:
    agent_id = await make_agent({"content": '{"label": "spam"}'})
    wf = await engine.register_workflow(TENANT, name="triage", definition=WORKFLOW)

    async def one() -> None:
        started = await engine.execute(
            TENANT, workflow_id=wf.workflow_id, agents=[agent_id], input={"text": "win"}
        )
        state = await engine.wait(TENANT, started.orchestration_id)
        assert state.status == "completed", state

    await one()  # first use fills caches (providers, templates) that live on
    gc.collect()
    gc.disable()
    try:
        for _ in range(40):
            await one()
        unreachable = gc.collect()
    finally:
        gc.enable()
    # A cycle per orchestration would be 40 or more; what is left is the test's own.
    assert unreachable < 40, unreachable
