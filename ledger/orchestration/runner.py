"""Runs one orchestration: the DAG scheduler and the agent tool-calling loop.

Replay-based resumption (as in Temporal): the runner is given the stream's events so
far (``history.py``). Every step goes through :meth:`StepAttempts.run` (``attempts.py``),
which first consults that history: a completed step is not run again, a failed one fails
again, one that was in flight when the process died goes on or is retried. A decision's
branch is recorded (``decision.made``), and a resumed run skips the branch not taken from
that and the definition, so it takes the same branches whatever redaction left of the
outputs.

Bounds: ``max_steps`` (distinct steps started in a workflow; LLM rounds in the agent
loop), ``timeout_seconds`` (measured from ``orchestration.started``), per-step timeouts
and retries with exponential backoff for transient errors. Cancellation and engine
shutdown are observed at step boundaries; cancellation also cancels in-flight calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
import structlog

from ledger.errors import InvalidEventError
from ledger.events import Event, parse_time
from ledger.orchestration import events as ev
from ledger.orchestration._endings import StepFailed, Stopped, Terminate
from ledger.orchestration.attempts import StepAttempts
from ledger.orchestration.calls import CallRecorder, Collaborators, as_text, bounded, const
from ledger.orchestration.conditions import evaluate
from ledger.orchestration.errors import (
    ProviderError,
    TemplateError,
    ToolError,
)
from ledger.orchestration.history import (
    INTERRUPTED,
    StepHistory,
    read_history,
)
from ledger.orchestration.stream import StreamWriter
from ledger.orchestration.templates import render
from ledger.orchestration.workflow import StepDef, WorkflowDefinition

__all__ = ["INTERRUPTED", "Runner", "StepHistory", "read_history"]

_log = structlog.get_logger()

MAX_TOOL_ROUNDS_PER_STEP = 8


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


class Runner:
    def __init__(
        self,
        writer: StreamWriter,
        created: ev.OrchestrationCreated,
        history: list[Event],
        deps: Collaborators,
        *,
        started_at: datetime | None = None,
    ) -> None:
        self.writer = writer
        self.created = created
        self.oid = created.orchestration_id
        self.deps = deps
        self._calls = CallRecorder(writer, created, deps)
        self.history, self._was_started, self.was_terminal = read_history(history)
        self._started_at: datetime | None = None
        for e in history:
            if isinstance(e.payload, ev.OrchestrationStarted):
                self._started_at = parse_time(e.occurred_at)
        if started_at is not None:
            self._was_started, self._started_at = True, started_at
        self._cancel: tuple[str, str | None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The task running a step inline (:meth:`_inline_step`), and whether
        #: :meth:`request_cancel` has cancelled it.
        self._inline: asyncio.Task[Any] | None = None
        self._inline_cancelled = False
        #: Steps counted against ``max_steps``: those the history shows started, and
        #: each new one when it is scheduled (a resumed run counts as the live one did).
        self._steps_started = sum(1 for h in self.history.values() if h.attempts > 0)
        self._attempts = StepAttempts(self._calls, self.history)

    # -- control ---------------------------------------------------------------------

    def request_cancel(self, reason: str, requested_by: str | None) -> None:
        if self._cancel is None:
            self._cancel = (reason, requested_by)
        for t in self._tasks:
            t.cancel()
        if self._inline is not None and not self._inline_cancelled:
            self._inline_cancelled = True
            self._inline.cancel()

    def request_stop(self) -> None:
        self._stopping = True

    def _boundary(self) -> None:
        if self._cancel is not None:
            raise Terminate("cancelled", None)
        if self._stopping:
            raise Stopped

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> None:
        if self.was_terminal:
            return
        if not self._was_started:
            self._calls.emit(
                ev.ORCHESTRATION_STARTED, ev.OrchestrationStarted(orchestration_id=self.oid)
            )
            await self.writer.flush()
            self._started_at = self.deps.now()
        assert self._started_at is not None
        elapsed = (self.deps.now() - self._started_at).total_seconds()
        remaining = self.created.timeout_seconds - elapsed
        timer = asyncio.timeout(max(remaining, 0.0))
        try:
            try:
                async with timer:
                    if remaining <= 0:
                        await asyncio.sleep(0)  # let the expired timer fire
                    results = await self._body()
            except TimeoutError:
                if not timer.expired():
                    raise
                await self._abort_steps("timed out")
                raise Terminate(
                    "timed_out", f"exceeded timeout_seconds={self.created.timeout_seconds:g}"
                ) from None
            except InvalidEventError as e:
                # An event the writer refused (it buffers none it cannot write): the run
                # ends failed rather than crashing and staying "running" for ever.
                raise Terminate("step_failed", f"an event cannot be recorded: {e}") from None
            except msgspec.ValidationError as e:
                # A resumed run reads its definition and outputs back from the log; one
                # it cannot decode (written by another version, say) would crash the run
                # on every start, leaving it "running" for ever.
                raise Terminate(
                    "step_failed", f"the recorded history cannot be read back: {e}"
                ) from None
            try:
                self._calls.emit(
                    ev.ORCHESTRATION_COMPLETED,
                    ev.OrchestrationCompleted(orchestration_id=self.oid, results=results),
                )
            except InvalidEventError as e:
                raise Terminate("step_failed", f"results: {e}") from None
        except Terminate as t:
            await self._abort_steps(t.reason if t.reason != "cancelled" else "cancelled")
            if self._cancel is not None and t.reason in ("cancelled", "step_failed"):
                reason, by = self._cancel
                self._end(
                    ev.ORCHESTRATION_CANCELLED,
                    ev.OrchestrationCancelled(
                        orchestration_id=self.oid, reason=reason, requested_by=by
                    ),
                )
            else:
                self._end(
                    ev.ORCHESTRATION_FAILED,
                    ev.OrchestrationFailed(
                        orchestration_id=self.oid,
                        reason=t.reason,  # type: ignore[arg-type]
                        error=bounded(t.error) if t.error is not None else None,
                    ),
                )
        except Stopped:
            pass
        except asyncio.CancelledError:
            await self._abort_steps(None)
            await self.writer.flush()
            raise
        await self.writer.flush()

    def _end(self, event_type: str, payload: msgspec.Struct) -> None:
        """Record the terminal event, or, if it cannot be written (a cancel reason too
        large for a leaf, say), a failure saying so: a run always ends."""
        try:
            self._calls.emit(event_type, payload)
        except InvalidEventError as e:
            self._calls.emit(
                ev.ORCHESTRATION_FAILED,
                ev.OrchestrationFailed(
                    orchestration_id=self.oid,
                    reason="step_failed",
                    error=bounded(f"{event_type} cannot be recorded: {e}"),
                ),
            )

    async def _abort_steps(self, error: str | None) -> None:
        """Cancel in-flight step tasks; record each in-flight step as failed (if ``error``)."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        self._attempts.abort(error)

    async def _body(self) -> Any:
        try:
            if self.created.definition is not None:
                return await self._run_dag(
                    msgspec.convert(self.created.definition, WorkflowDefinition)
                )
            return await self._run_loop()
        except StepFailed as f:
            if self._cancel is not None:
                raise Terminate("cancelled", None) from None
            raise Terminate(f.reason, str(f)) from None

    async def _inline_step(self, step: StepDef, outputs: dict[str, Any]) -> Any:
        """Run a workflow step in the orchestration's own task. :meth:`request_cancel`
        reaches its in-flight call by cancelling this task, and only that cancellation
        becomes ``cancelled``: a timeout's or the engine's passes through as before."""
        task = asyncio.current_task()
        assert task is not None
        self._inline = task
        try:
            return await self._dag_step(step, dict(outputs))
        except asyncio.CancelledError:
            if self._inline_cancelled and task.uncancel() == 0:
                raise Terminate("cancelled", None) from None
            raise
        finally:
            self._inline = None
            self._inline_cancelled = False

    async def _in_task(self, coro: Awaitable[Any]) -> Any:
        """Run one step as a task, so cancellation can reach an in-flight call."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        try:
            await asyncio.wait({task})
        except BaseException:
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            self._tasks.discard(task)
        if task.cancelled():
            self._boundary()
            raise asyncio.CancelledError
        return task.result()

    # -- actions ---------------------------------------------------------------------

    # -- workflow mode ---------------------------------------------------------------

    def _context(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "input": self.created.input,
            "parameters": self.created.parameters,
            "steps": {sid: {"output": out} for sid, out in outputs.items()},
        }

    async def _run_dag(self, definition: WorkflowDefinition) -> Any:
        status: dict[str, str] = {s.id: "pending" for s in definition.steps}
        outputs: dict[str, Any] = {}
        branch_skipped: set[str] = set()
        running: dict[asyncio.Task[Any], StepDef] = {}
        ready: list[StepDef] = []
        try:
            while True:
                self._boundary_unless_stopping(running)
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
                        if self._stopping or self._cancel is not None:
                            continue
                        h = self.history.get(step.id)
                        if h is None or h.attempts == 0:
                            # Counted now, not when it starts: the steps of one pass
                            # start later, each in its own task, and must all fit.
                            if self._steps_started >= self.created.max_steps:
                                raise Terminate(
                                    "max_steps_exceeded",
                                    f"step {step.id!r} would exceed "
                                    f"max_steps={self.created.max_steps}",
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
                    finished.append((step, await self._inline_step(step, outputs)))
                else:
                    for step in ready:
                        task = asyncio.ensure_future(self._dag_step(step, dict(outputs)))
                        running[task] = step
                        self._tasks.add(task)
                    ready.clear()
                    if not running:
                        break
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        step = running.pop(task)
                        self._tasks.discard(task)
                        if not task.cancelled():
                            finished.append((step, task.result()))  # raises StepFailed
                for step, output in finished:
                    status[step.id] = "completed"
                    outputs[step.id] = output
                    if step.action == "decision":
                        branch_skipped.update(self._not_taken(step, output))
            self._boundary()
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
        h = self.history.get(step.id)
        if h is not None and h.status == "completed" and h.branch is not None:
            # Resumed: from the recorded branch and the definition, never from the
            # recorded output, whose fields a redaction may have replaced.
            branch: Any = h.branch
        elif isinstance(output, dict):
            branch = output.get("branch")
        else:
            return ()
        return step.else_ if branch == "then" else step.then if branch == "else" else ()

    def _boundary_unless_stopping(self, running: Mapping[Any, Any]) -> None:
        if self._cancel is not None:
            raise Terminate("cancelled", None)
        if self._stopping and not running:
            raise Stopped

    def _skip(self, step_id: str, branch_skipped: set[str]) -> None:
        h = self.history.get(step_id)
        if h is not None and h.status == "skipped":
            return
        reason = "branch not taken" if step_id in branch_skipped else "every dependency was skipped"
        self._calls.emit(
            ev.STEP_SKIPPED,
            ev.StepSkipped(orchestration_id=self.oid, step_id=step_id, reason=reason),
        )

    async def _dag_step(self, step: StepDef, outputs: dict[str, Any]) -> Any:
        ctx = self._context(outputs)
        agent_id = step.agent or self.created.agent_id
        if step.action == "llm":

            def make_inputs() -> Any:
                prompt = render(step.prompt, ctx) if step.prompt is not None else self.created.input
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
                        orchestration_id=self.oid,
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

    # -- agent loop mode -------------------------------------------------------------

    async def _run_loop(self) -> Any:
        agent = self._calls.agent(self.created.agent_id)
        messages = self._calls.base_messages(agent, as_text(self.created.input))
        rounds = 0
        while True:
            self._boundary()
            if rounds >= self.created.max_steps:
                raise Terminate(
                    "max_steps_exceeded",
                    f"the model still wanted tools after max_steps={self.created.max_steps} calls",
                )
            rounds += 1
            llm_id = f"llm-{rounds}"
            snapshot = list(messages)

            async def call(
                attempt: int, inputs: Any, sid: str = llm_id, msgs: list[Any] = snapshot
            ) -> Any:
                r = await self._calls.llm_call(sid, attempt, agent, msgs)
                out = self._calls.llm_output(r)
                out["tool_calls"] = [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in r.tool_calls
                ]
                return out

            out = msgspec.convert(
                await self._in_task(
                    self._attempts.run(llm_id, "llm", agent.agent_id, lambda: None, call)
                ),
                _LoopRound,  # it may be a resumed run's recorded output
            )
            messages.append(out.message)
            if not out.tool_calls:
                return {"content": out.content, "json": out.json}
            for i, tc in enumerate(out.tool_calls, start=1):
                self._boundary()
                tool_id = f"tool-{rounds}-{i}"
                inputs = {"tool_call_id": tc.id, "name": tc.name, "arguments": tc.arguments}

                async def invoke(attempt: int, inp: Any, sid: str = tool_id) -> Any:
                    return await self._calls.tool_call(
                        sid,
                        attempt,
                        inp["name"],
                        inp["tool_call_id"],
                        inp["arguments"],
                        granted=agent.tools,
                    )

                try:
                    result = await self._in_task(
                        self._attempts.run(tool_id, "tool", agent.agent_id, const(inputs), invoke)
                    )
                except StepFailed as f:
                    result = {"error": f.error}
                messages.append({"role": "tool", "tool_call_id": tc.id, "content": as_text(result)})
