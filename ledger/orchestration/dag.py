"""A workflow's run: its steps scheduled as their dependencies complete (``specs/workflows.md``).

A step runs once every step it depends on completed or was skipped; one whose
dependencies were all skipped, or that is on a decision's branch not taken, is skipped
(``step.skipped``). A decision's branch is recorded (``decision.made``), and a resumed
run skips the branch not taken from that and the definition, so it takes the same
branches whatever redaction left of the outputs. ``max_steps`` bounds the distinct
steps started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ledger.orchestration import events as ev
from ledger.orchestration._endings import Terminate
from ledger.orchestration.attempts import StepAttempts
from ledger.orchestration.calls import CallRecorder, as_text
from ledger.orchestration.cancellation import Cancellation
from ledger.orchestration.conditions import evaluate
from ledger.orchestration.errors import ProviderError, TemplateError, ToolError
from ledger.orchestration.history import StepHistory
from ledger.orchestration.templates import render
from ledger.orchestration.workflow import StepDef, WorkflowDefinition

__all__ = ["MAX_TOOL_ROUNDS_PER_STEP", "DagRun"]

MAX_TOOL_ROUNDS_PER_STEP = 8


class DagRun:
    def __init__(
        self,
        calls: CallRecorder,
        attempts: StepAttempts,
        cancellation: Cancellation,
        history: Mapping[str, StepHistory],
    ) -> None:
        self._calls = calls
        self._created = calls.created
        self._oid = calls.oid
        self._attempts = attempts
        self._cancellation = cancellation
        self._history = history
        #: Steps counted against ``max_steps``: those the history shows started, and
        #: each new one when it is scheduled (a resumed run counts as the live one did).
        self._steps_started = sum(1 for h in history.values() if h.attempts > 0)

    def _context(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "input": self._created.input,
            "parameters": self._created.parameters,
            "steps": {sid: {"output": out} for sid, out in outputs.items()},
        }

    async def run(self, definition: WorkflowDefinition) -> Any:
        status: dict[str, str] = {s.id: "pending" for s in definition.steps}
        outputs: dict[str, Any] = {}
        branch_skipped: set[str] = set()
        running: dict[asyncio.Task[Any], StepDef] = {}
        ready: list[StepDef] = []
        cancellation = self._cancellation
        try:
            while True:
                cancellation.boundary_unless_stopping(running)
                progressed = True
                while progressed:
                    progressed = False
                    for step in definition.steps:
                        if status[step.id] != "pending":
                            continue
                        deps = [status[d] for d in step.depends_on]
                        if any(d not in ("completed", "skipped") for d in deps):
                            continue
                        if step.id in branch_skipped or (
                            deps and all(d == "skipped" for d in deps)
                        ):
                            self._skip(step.id, branch_skipped)
                            status[step.id] = "skipped"
                            progressed = True
                            continue
                        if cancellation.stopping or cancellation.requested is not None:
                            continue
                        h = self._history.get(step.id)
                        if h is None or h.attempts == 0:
                            # Counted now, not when it starts: the steps of one pass
                            # start later, each in its own task, and must all fit.
                            if self._steps_started >= self._created.max_steps:
                                raise Terminate(
                                    "max_steps_exceeded",
                                    f"step {step.id!r} would exceed "
                                    f"max_steps={self._created.max_steps}",
                                )
                            self._steps_started += 1
                        status[step.id] = "running"
                        ready.append(step)
                        progressed = True
                finished: list[tuple[StepDef, Any]] = []
                if len(ready) == 1 and not running:
                    # A chain, the common shape: the one runnable step runs in this
                    # task, with no task of its own to create, schedule and wait for.
                    step = ready.pop()
                    finished.append(
                        (step, await cancellation.inline(self._step(step, dict(outputs))))
                    )
                else:
                    for step in ready:
                        task = asyncio.ensure_future(self._step(step, dict(outputs)))
                        running[task] = step
                        cancellation.tasks.add(task)
                    ready.clear()
                    if not running:
                        break
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        step = running.pop(task)
                        cancellation.tasks.discard(task)
                        if not task.cancelled():
                            finished.append((step, task.result()))  # raises StepFailed
                for step, output in finished:
                    status[step.id] = "completed"
                    outputs[step.id] = output
                    if step.action == "decision":
                        branch_skipped.update(self._not_taken(step, output))
            cancellation.boundary()
        finally:
            for task in running:
                task.cancel()
        if definition.output is not None:
            try:
                return render(definition.output, self._context(outputs))
            except TemplateError as e:
                raise Terminate("step_failed", f"output: {e}") from None
        return outputs

    def _not_taken(self, step: StepDef, output: Any) -> Sequence[str]:
        """The steps of the branch a completed decision did not take."""
        h = self._history.get(step.id)
        if h is not None and h.status == "completed" and h.branch is not None:
            # Resumed: from the recorded branch and the definition, never from the
            # recorded output, whose fields a redaction may have replaced.
            branch: Any = h.branch
        elif isinstance(output, dict):
            branch = output.get("branch")
        else:
            return ()
        return step.else_ if branch == "then" else step.then if branch == "else" else ()

    def _skip(self, step_id: str, branch_skipped: set[str]) -> None:
        h = self._history.get(step_id)
        if h is not None and h.status == "skipped":
            return
        reason = "branch not taken" if step_id in branch_skipped else "every dependency was skipped"
        self._calls.emit(
            ev.STEP_SKIPPED,
            ev.StepSkipped(orchestration_id=self._oid, step_id=step_id, reason=reason),
        )

    async def _step(self, step: StepDef, outputs: dict[str, Any]) -> Any:
        ctx = self._context(outputs)
        agent_id = step.agent or self._created.agent_id
        if step.action == "llm":

            def make_inputs() -> Any:
                prompt = (
                    render(step.prompt, ctx) if step.prompt is not None else self._created.input
                )
                return {"prompt": as_text(prompt)}

            async def run_llm(attempt: int, inputs: Any) -> Any:
                agent = self._calls.agent(agent_id)
                messages = self._calls.base_messages(agent, inputs["prompt"])
                for _ in range(MAX_TOOL_ROUNDS_PER_STEP):
                    r = await self._calls.llm_call(step.id, attempt, agent, messages)
                    if not r.tool_calls:
                        return self._calls.llm_output(r)
                    messages.append(r.message)
                    for call in r.tool_calls:
                        try:
                            result = await self._calls.tool_call(
                                step.id,
                                attempt,
                                call.name,
                                call.id,
                                call.arguments,
                                granted=agent.tools,
                            )
                        except ToolError as e:
                            result = {"error": str(e)}
                        messages.append(
                            {"role": "tool", "tool_call_id": call.id, "content": as_text(result)}
                        )
                raise ProviderError(
                    f"model asked for tools more than {MAX_TOOL_ROUNDS_PER_STEP} times",
                    transient=False,
                )

            fn: Callable[[int, Any], Awaitable[Any]] = run_llm
        elif step.action == "tool":

            def make_inputs() -> Any:
                return render(step.inputs, ctx) if step.inputs is not None else {}

            async def run_tool(attempt: int, inputs: Any) -> Any:
                assert step.tool is not None
                return await self._calls.tool_call(step.id, attempt, step.tool, None, inputs)

            fn = run_tool
        else:

            def make_inputs() -> Any:
                return None

            async def run_decision(attempt: int, inputs: Any) -> Any:
                values: dict[str, Any] = {}
                chosen = evaluate(step.condition, ctx, values)
                branch = "then" if chosen else "else"
                skipped = step.else_ if chosen else step.then
                self._calls.emit(
                    ev.DECISION_MADE,
                    ev.DecisionMade(
                        orchestration_id=self._oid,
                        step_id=step.id,
                        condition=step.condition,
                        values=values,
                        branch=branch,
                        skipped=skipped,
                        attempt=attempt,
                    ),
                )
                return {"branch": branch, "result": chosen, "skipped": list(skipped)}

            fn = run_decision
        return await self._attempts.run(
            step.id,
            step.action,
            agent_id,
            make_inputs,
            fn,
            max_attempts=step.max_attempts,
            backoff=step.backoff_seconds,
            step_timeout=step.timeout_seconds,
            # Only the model's answer ends the loop; one that asks for tools leaves the
            # rest of the loop to a retry.
            settle=(lambda r: None if r.tool_calls else self._calls.llm_output(r))
            if step.action == "llm"
            else None,
        )
