"""An agent's run: its tool-calling loop, each model call and each tool call a step.

Round ``N``'s model call is step ``llm-N``; the tools it asks for are steps
``tool-N-1``, ``tool-N-2``, ..., whose results (or errors) the next round's call is
given. ``max_steps`` bounds the rounds. Each step runs in a task of its own, so a
cancel reaches its call in flight.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ledger.orchestration._endings import StepFailed, Terminate
from ledger.orchestration.attempts import StepAttempts
from ledger.orchestration.calls import CallRecorder, as_text, const
from ledger.orchestration.cancellation import Cancellation

__all__ = ["run_agent_loop"]


class _LoopToolCall(msgspec.Struct):
    id: str
    name: str
    arguments: Any = None


class _LoopRound(msgspec.Struct):
    """The output of an agent loop's ``llm-N`` step, as the loop reads it."""

    message: Any
    content: str | None
    json: Any = None
    tool_calls: list[_LoopToolCall] = []


async def run_agent_loop(
    calls: CallRecorder, attempts: StepAttempts, cancellation: Cancellation
) -> Any:
    agent = calls.agent(calls.created.agent_id)
    messages = calls.base_messages(agent, as_text(calls.created.input))
    rounds = 0
    while True:
        cancellation.boundary()
        if rounds >= calls.created.max_steps:
            raise Terminate(
                "max_steps_exceeded",
                f"the model still wanted tools after max_steps={calls.created.max_steps} calls",
            )
        rounds += 1
        llm_id = f"llm-{rounds}"
        snapshot = list(messages)

        async def call(
            attempt: int, inputs: Any, sid: str = llm_id, msgs: list[Any] = snapshot
        ) -> Any:
            r = await calls.llm_call(sid, attempt, agent, msgs)
            out = calls.llm_output(r)
            out["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in r.tool_calls
            ]
            return out

        out = msgspec.convert(
            await cancellation.in_task(
                attempts.run(llm_id, "llm", agent.agent_id, lambda: None, call)
            ),
            _LoopRound,  # it may be a resumed run's recorded output
        )
        messages.append(out.message)
        if not out.tool_calls:
            return {"content": out.content, "json": out.json}
        for i, tc in enumerate(out.tool_calls, start=1):
            cancellation.boundary()
            tool_id = f"tool-{rounds}-{i}"
            inputs = {"tool_call_id": tc.id, "name": tc.name, "arguments": tc.arguments}

            async def invoke(attempt: int, inp: Any, sid: str = tool_id) -> Any:
                return await calls.tool_call(
                    sid,
                    attempt,
                    inp["name"],
                    inp["tool_call_id"],
                    inp["arguments"],
                    granted=agent.tools,
                )

            try:
                result = await cancellation.in_task(
                    attempts.run(tool_id, "tool", agent.agent_id, const(inputs), invoke)
                )
            except StepFailed as f:
                result = {"error": f.error}
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": as_text(result)})
