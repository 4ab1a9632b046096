"""Runs one orchestration: a workflow's DAG (``dag.py``) or an agent's tool-calling loop
(``agent_loop.py``), each step through its attempts (``attempts.py``), until the run ends
completed, failed or cancelled, or the engine stops it.

Replay-based resumption (as in Temporal): the runner is given the stream's events so
far (``history.py``). Every step goes through :meth:`StepAttempts.run` (``attempts.py``),
which first consults that history: a completed step is not run again, a failed one fails
again, one that was in flight when the process died goes on or is retried; a resumed
workflow takes the branches the live run took (``dag.py``).

Bounds: ``max_steps`` (distinct steps started in a workflow; LLM rounds in the agent
loop), ``timeout_seconds`` (measured from ``orchestration.started``), per-step timeouts
and retries with exponential backoff for transient errors. Cancellation and engine
shutdown are observed at step boundaries; cancellation also cancels in-flight calls
(``cancellation.py``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec

from ledger.errors import InvalidEventError
from ledger.events import Event, parse_time
from ledger.orchestration import events as ev
from ledger.orchestration._endings import StepFailed, Stopped, Terminate
from ledger.orchestration.agent_loop import run_agent_loop
from ledger.orchestration.attempts import StepAttempts
from ledger.orchestration.calls import CallRecorder, Collaborators, bounded
from ledger.orchestration.cancellation import Cancellation
from ledger.orchestration.dag import DagRun
from ledger.orchestration.history import INTERRUPTED, StepHistory, read_history
from ledger.orchestration.stream import StreamWriter
from ledger.orchestration.workflow import WorkflowDefinition

__all__ = ["INTERRUPTED", "Runner", "StepHistory", "read_history"]


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
        self._cancellation = Cancellation()
        self._attempts = StepAttempts(self._calls, self.history)

    # -- control ---------------------------------------------------------------------

    def request_cancel(self, reason: str, requested_by: str | None) -> None:
        self._cancellation.request(reason, requested_by)

    def request_stop(self) -> None:
        self._cancellation.stop()

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
            cancel = self._cancellation.requested
            if cancel is not None and t.reason in ("cancelled", "step_failed"):
                reason, by = cancel
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
        await self._cancellation.cancel_steps()
        self._attempts.abort(error)

    async def _body(self) -> Any:
        try:
            if self.created.definition is not None:
                dag = DagRun(self._calls, self._attempts, self._cancellation, self.history)
                return await dag.run(msgspec.convert(self.created.definition, WorkflowDefinition))
            return await run_agent_loop(self._calls, self._attempts, self._cancellation)
        except StepFailed as f:
            if self._cancellation.requested is not None:
                raise Terminate("cancelled", None) from None
            raise Terminate(f.reason, str(f)) from None
