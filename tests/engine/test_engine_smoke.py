from __future__ import annotations

from typing import Any

from engine_helpers import TENANT

from ledger.orchestration import Engine


async def test_agent_loop_completes_with_scripted_answer(engine: Engine, make_agent: Any) -> None:
    agent_id = await make_agent({"content": "hi there"})
    state = await engine.execute(TENANT, agent_id=agent_id, input="hello?")
    assert state.status == "running"
    final = await engine.wait(TENANT, state.orchestration_id)
    assert final.status == "completed", final
    assert final.results == {"content": "hi there", "json": None}
    assert [s.step_id for s in final.steps] == ["llm-1"]
    assert engine.live_state(TENANT, state.orchestration_id) == final
