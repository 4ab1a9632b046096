"""Runs one orchestration: the DAG scheduler and the agent tool-calling loop.

Replay-based resumption (as in Temporal): the runner is given the stream's events so
far. Every step goes through :meth:`Runner._step`, which first consults that history:
a completed step returns its recorded output without running again, a step that ended
in failure fails again with its recorded error (ending the run with the reason its
``kind`` records, as the live run ended), a tool step whose call completed (its
``tool.completed`` written, its ``step.completed`` or ``step.failed`` not) ends that
attempt as the live run did, with the recorded result or error (retried only if the
error was transient), the call not made again; an ``llm`` step whose loop completed
calls goes on with the same attempt, answering those calls from the log
(``journal.py``); and a step that was in flight when the
process died is recorded as interrupted and retried (``step.failed`` with
``retrying=true``) while its attempts last, else it fails. A decision's branch is
recorded (``decision.made``), and a resumed run skips the branch not taken from that and
the definition, so it takes the same branches whatever redaction left of the outputs.
Likewise a step timeout that fires after a tool step's call completed (while its outcome
is being made durable) ends the attempt with that outcome, not with a retry; so does one
that fires after an ``llm`` step's model call returned an error, or an answer that ends
its loop (one asking for tools leaves the loop unfinished: the attempt timed out).

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

from ledger.errors import InvalidEventError, LedgerError
from ledger.events import Event, parse_time
from ledger.orchestration import events as ev
from ledger.orchestration._endings import Ending, StepFailed, Stopped, Terminate
from ledger.orchestration.calls import CallRecorder, Collaborators, as_text, bounded, const
from ledger.orchestration.conditions import evaluate
from ledger.orchestration.errors import (
    ConditionError,
    ProviderError,
    TemplateError,
    ToolError,
)
from ledger.orchestration.history import (
    INTERRUPTED,
    StepHistory,
    ends_as,
    read_history,
    retried_at_once,
)
from ledger.orchestration.journal import CallJournal, CallsDiverged
from ledger.orchestration.providers.base import LLMResponse, retry_after_of
from ledger.orchestration.stream import StreamWriter
from ledger.orchestration.templates import render
from ledger.orchestration.workflow import StepDef, WorkflowDefinition

__all__ = ["INTERRUPTED", "Runner", "StepHistory", "read_history"]

_log = structlog.get_logger()

MAX_TOOL_ROUNDS_PER_STEP = 8
MAX_BACKOFF_SECONDS = 30.0


def _backoff(backoff: float, attempt: int) -> float:
    """The wait after ``attempt`` failed transiently, before the next one."""
    return min(backoff * 2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS)


def _retry_delay(action: ev.Action, backoff: float, attempt: int, error: str | None) -> float:
    """The wait after ``attempt`` failed transiently with the recorded ``error``: the
    backoff, or longer if the provider said when to come back (``Retry-After``)."""
    asked = retry_after_of(error) if action == "llm" else 0.0
    return max(_backoff(backoff, attempt), asked)


def _settled(
    reply: LLMResponse | ProviderError, settle: Callable[[LLMResponse], Any] | None
) -> Any:
    """The step's output from its last model call's outcome (``None``: the step's loop
    had more to do), or that call's error raised, as the live call raised it."""
    if isinstance(reply, ProviderError):
        raise reply
    assert settle is not None  # a reply is only read for a step that can settle
    return settle(reply)


def _outcome(call: ev.ToolCompleted) -> Any:
    """A recorded call's result, or its recorded error raised as the live call raised it."""
    if call.error is not None:
        raise ToolError(call.error, transient=call.transient)
    return call.result


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
        self._inflight: dict[str, int] = {}
        #: Steps counted against ``max_steps``: those the history shows started, and
        #: each new one when it is scheduled (a resumed run counts as the live one did).
        self._steps_started = sum(1 for h in self.history.values() if h.attempts > 0)
        #: Attempts the history leaves open (in flight when the process stopped, or
        #: failed with a retry promised); each is closed by :meth:`_step` when its step
        #: runs again, or when the run ends.
        self._interrupted = {
            sid: h.attempts
            for sid, h in self.history.items()
            if h.status in ("running", "retrying") and h.attempts > 0
        }

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
        if error is not None:
            for step_id, attempt in sorted((self._interrupted | self._inflight).items()):
                self._failed(step_id, attempt, error, retrying=False, kind="aborted")
            self._interrupted.clear()
        self._inflight.clear()

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

    # -- one step with history, retries and timeouts ---------------------------------

    async def _step(
        self,
        step_id: str,
        action: ev.Action,
        agent_id: str | None,
        make_inputs: Callable[[], Any],
        fn: Callable[[int, Any], Awaitable[Any]],
        *,
        max_attempts: int = 3,
        backoff: float = 0.5,
        step_timeout: float | None = None,
        settle: Callable[[LLMResponse], Any] | None = None,
    ) -> Any:
        """Run a step's attempts. ``settle``: for an llm step, its output if the model's
        response, the attempt's last call, ends it (else ``None``), for a step timeout
        that fires while that response is being made durable."""
        h = self.history.get(step_id)
        first = 1
        #: The open attempt's call, completed before the process stopped.
        resumed: ev.ToolCompleted | None = None
        #: The open attempt's inputs, if it goes on from its journal.
        continued: tuple[Any] | None = None
        if h is not None:
            if h.status == "completed":
                return h.output
            if h.status == "failed":
                # As the live run ended when this failure was recorded (its kind): a
                # process may die between a step's last step.failed and the run's end.
                raise StepFailed(step_id, h.error or "failed", ends_as(h.kind))
            first = h.attempts + 1
            self._interrupted.pop(step_id, None)
            if h.status == "running":
                call = h.tool_call
                if action == "tool" and call is not None and call.attempt == h.attempts:
                    # A tool step is its one call, and that call completed: calling again
                    # would repeat its effect (a non-pure tool's tool.completed is written
                    # at once, its step.completed or step.failed later). The attempt ends
                    # as it did live: completed with the recorded result, or failed with
                    # the recorded error, retried only if that error was transient.
                    resumed, first = call, h.attempts
                elif action == "llm" and (continued := self._continuation(step_id, h, make_inputs)):
                    # An llm step's loop completed calls before the process stopped: the
                    # attempt goes on, answering them from the log (journal.py).
                    first = h.attempts
                else:
                    retrying = h.attempts < max_attempts
                    self._calls.emit(
                        ev.STEP_FAILED,
                        ev.StepFailed(
                            orchestration_id=self.oid,
                            step_id=step_id,
                            attempt=h.attempts,
                            error=INTERRUPTED,
                            retrying=retrying,
                            kind="interrupted",
                        ),
                    )
                    if not retrying:
                        raise StepFailed(step_id, INTERRUPTED, "interrupted")
            elif h.status == "retrying" and first <= max_attempts:
                await self._rest_of_backoff(step_id, action, h, backoff)
        for attempt in range(first, max_attempts + 1):
            if continued is not None:
                (inputs,), continued = continued, None
                self._inflight[step_id] = attempt
            elif resumed is None:
                try:
                    inputs = self._started(step_id, agent_id, action, attempt, make_inputs())
                except (TemplateError, InvalidEventError) as e:
                    error = str(e) if isinstance(e, TemplateError) else f"inputs: {e}"
                    self._started(step_id, agent_id, action, attempt, None)
                    error = self._failed(
                        step_id, attempt, error, retrying=False, kind="step_failed"
                    )
                    raise StepFailed(step_id, error) from None
            transient = False
            kind: Ending = "step_failed"
            timer = asyncio.timeout(step_timeout)
            try:
                if resumed is not None:
                    call, resumed = resumed, None
                    output = _outcome(call)
                else:
                    try:
                        async with timer:
                            output = await fn(attempt, inputs)
                    except TimeoutError:
                        call = (
                            self._calls.recorded_call(step_id, attempt)
                            if action == "tool"
                            else None
                        )
                        reply = self._calls.recorded_reply(step_id, attempt) if settle else None
                        if not timer.expired():
                            raise
                        # The timer fired after the call completed (while its outcome
                        # was being made durable): the call is not made again, as a
                        # resumed run would not make it; its outcome is the attempt's.
                        if call is not None:
                            output = _outcome(call)
                        elif reply is None or (output := _settled(reply, settle)) is None:
                            self._calls.cut_off(
                                step_id, attempt, f"step timed out after {step_timeout:g}s"
                            )
                            raise
                    finally:
                        self._calls.recorded_call(step_id, attempt)
                        if action == "llm":
                            self._calls.recorded_reply(step_id, attempt)
                        self._calls.cut_off(step_id, attempt, None)
                        self._calls.journals.pop((step_id, attempt), None)
            except TimeoutError:
                if not timer.expired():
                    raise
                error, transient = f"step timed out after {step_timeout:g}s", True
            except ProviderError as e:
                error, transient, kind = str(e), e.transient, "provider_error"
            except ToolError as e:
                error, transient = str(e), e.transient
            except (ConditionError, TemplateError) as e:
                error = str(e)
            except CallsDiverged as e:
                error, transient, kind = f"interrupted: {e}", True, "interrupted"
            except LedgerError as e:
                error = f"{type(e).__name__}: {e}"
            else:
                try:
                    completed = self._calls.emit(
                        ev.STEP_COMPLETED,
                        ev.StepCompleted(
                            orchestration_id=self.oid,
                            step_id=step_id,
                            attempt=attempt,
                            output=output,
                        ),
                    )
                except InvalidEventError as e:  # too large, say: no retry would change that
                    error = f"output: {e}"
                else:
                    self._inflight.pop(step_id, None)
                    await self.writer.flush_if_large()
                    # As recorded, so later steps read what a resumed run would read.
                    return completed.output
            retrying = transient and attempt < max_attempts
            recorded = self._failed(step_id, attempt, error, retrying=retrying, kind=kind)
            if not retrying:
                # The recorded text, not the live one: the agent loop feeds it to the
                # model, and a resumed run, which reads it back, must ask the same. A
                # diverged attempt ends as an interrupted one without recorded calls.
                raise StepFailed(step_id, recorded, kind)
            delay = (
                0.0 if kind == "interrupted" else _retry_delay(action, backoff, attempt, recorded)
            )
            if delay:
                # Until the next attempt starts, the run ending (cancelled, timed out)
                # must record this retry as abandoned, or the step stays running.
                self._inflight[step_id] = attempt
                await self.deps.sleep(delay)
        raise StepFailed(step_id, "no attempts left")

    async def _rest_of_backoff(
        self, step_id: str, action: ev.Action, h: StepHistory, backoff: float
    ) -> None:
        """Wait what remains of the backoff the live run was waiting out when the
        process stopped, counted from its ``step.failed``'s recorded time: the delay
        is the provider's or the tool's to ask for, and a crash must not cut it short."""
        if h.failed_at is None or retried_at_once(action, h.error):
            return
        gone = (self.deps.now() - parse_time(h.failed_at)).total_seconds()
        rest = _retry_delay(action, backoff, h.attempts, h.error) - gone
        if rest > 0:
            # As live: the run ending during the wait records the retry as abandoned.
            self._inflight[step_id] = h.attempts
            await self.deps.sleep(rest)

    def _continuation(
        self, step_id: str, h: StepHistory, make_inputs: Callable[[], Any]
    ) -> tuple[Any] | None:
        """The inputs with which an interrupted llm attempt goes on from its journal of
        completed calls; ``None`` if it has none, or if redaction may have changed what
        the log holds of them (the journal must hold the calls as they were made)."""
        if any(self.writer.redacts(t) for t in ev.CALL_TYPES):
            return None
        journal = CallJournal(h.calls)
        if not journal:
            return None
        try:
            inputs = make_inputs()
        except (TemplateError, InvalidEventError):
            return None
        self._calls.journals[step_id, h.attempts] = journal
        return (inputs,)

    def _started(
        self, step_id: str, agent_id: str | None, action: ev.Action, attempt: int, inputs: Any
    ) -> Any:
        """Record the attempt's start; its inputs as recorded."""
        recorded = self._calls.emit(
            ev.STEP_STARTED,
            ev.StepStarted(
                orchestration_id=self.oid,
                step_id=step_id,
                agent_id=agent_id,
                action=action,
                attempt=attempt,
                inputs=inputs,
            ),
        )
        self._inflight[step_id] = attempt
        return recorded.inputs

    def _failed(
        self, step_id: str, attempt: int, error: str, *, retrying: bool, kind: ev.FailureKind
    ) -> str:
        """Record the attempt's failure; its error as recorded."""
        self._inflight.pop(step_id, None)
        return self._calls.emit(
            ev.STEP_FAILED,
            ev.StepFailed(
                orchestration_id=self.oid,
                step_id=step_id,
                attempt=attempt,
                error=bounded(error),
                retrying=retrying,
                kind=kind,
            ),
        ).error

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
        return await self._step(
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
                await self._in_task(self._step(llm_id, "llm", agent.agent_id, lambda: None, call)),
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
                        self._step(tool_id, "tool", agent.agent_id, const(inputs), invoke)
                    )
                except StepFailed as f:
                    result = {"error": f.error}
                messages.append({"role": "tool", "tool_call_id": tc.id, "content": as_text(result)})
