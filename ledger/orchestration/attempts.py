"""One step's attempts: its retries with exponential backoff for transient errors, its
timeout, and, in a resumed run, going on from what its history recorded.

Every step of a run goes through :meth:`StepAttempts.run`, which first consults the
run's history (``history.py``): a completed step returns its recorded output without
running again, a step that ended in failure fails again with its recorded error (ending
the run with the reason its ``kind`` records, as the live run ended), a tool step whose
call completed (its ``tool.completed`` written, its ``step.completed`` or
``step.failed`` not) ends that attempt as the live run did, with the recorded result or
error (retried only if the error was transient), the call not made again; an ``llm``
step whose loop completed calls goes on with the same attempt, answering those calls
from the log (``journal.py``); and a step that was in flight when the process died is
recorded as interrupted and retried (``step.failed`` with ``retrying=true``) while its
attempts last, else it fails.
Likewise a step timeout that fires after a tool step's call completed (while its outcome
is being made durable) ends the attempt with that outcome, not with a retry; so does one
that fires after an ``llm`` step's model call returned an error, or an answer that ends
its loop (one asking for tools leaves the loop unfinished: the attempt timed out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ledger.errors import InvalidEventError, LedgerError
from ledger.events import parse_time
from ledger.orchestration import events as ev
from ledger.orchestration._endings import Ending, StepFailed
from ledger.orchestration.calls import CallRecorder, bounded
from ledger.orchestration.errors import ConditionError, ProviderError, TemplateError, ToolError
from ledger.orchestration.history import INTERRUPTED, StepHistory, ends_as, retried_at_once
from ledger.orchestration.journal import CallJournal, CallsDiverged
from ledger.orchestration.providers.base import LLMResponse, retry_after_of

__all__ = ["MAX_BACKOFF_SECONDS", "StepAttempts"]

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


class StepAttempts:
    """A run's step attempts, and those it leaves open (in flight, or waiting for a
    retry) until each ends or the run does (:meth:`abort`)."""

    def __init__(self, calls: CallRecorder, history: Mapping[str, StepHistory]) -> None:
        self._calls = calls
        self._oid = calls.oid
        self._writer = calls.writer
        self._deps = calls.deps
        self._history = history
        self._inflight: dict[str, int] = {}
        #: Attempts the history leaves open (in flight when the process stopped, or
        #: failed with a retry promised); each is closed by :meth:`run` when its step
        #: runs again, or when the run ends.
        self._interrupted = {
            sid: h.attempts
            for sid, h in history.items()
            if h.status in ("running", "retrying") and h.attempts > 0
        }

    def abort(self, error: str | None) -> None:
        """Record each open attempt as failed (if ``error``), and forget them."""
        if error is not None:
            for step_id, attempt in sorted((self._interrupted | self._inflight).items()):
                self._failed(step_id, attempt, error, retrying=False, kind="aborted")
            self._interrupted.clear()
        self._inflight.clear()

    async def run(
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
        h = self._history.get(step_id)
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
                            orchestration_id=self._oid,
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
                            orchestration_id=self._oid,
                            step_id=step_id,
                            attempt=attempt,
                            output=output,
                        ),
                    )
                except InvalidEventError as e:  # too large, say: no retry would change that
                    error = f"output: {e}"
                else:
                    self._inflight.pop(step_id, None)
                    await self._writer.flush_if_large()
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
                await self._deps.sleep(delay)
        raise StepFailed(step_id, "no attempts left")

    async def _rest_of_backoff(
        self, step_id: str, action: ev.Action, h: StepHistory, backoff: float
    ) -> None:
        """Wait what remains of the backoff the live run was waiting out when the
        process stopped, counted from its ``step.failed``'s recorded time: the delay
        is the provider's or the tool's to ask for, and a crash must not cut it short."""
        if h.failed_at is None or retried_at_once(action, h.error):
            return
        gone = (self._deps.now() - parse_time(h.failed_at)).total_seconds()
        rest = _retry_delay(action, backoff, h.attempts, h.error) - gone
        if rest > 0:
            # As live: the run ending during the wait records the retry as abandoned.
            self._inflight[step_id] = h.attempts
            await self._deps.sleep(rest)

    def _continuation(
        self, step_id: str, h: StepHistory, make_inputs: Callable[[], Any]
    ) -> tuple[Any] | None:
        """The inputs with which an interrupted llm attempt goes on from its journal of
        completed calls; ``None`` if it has none, or if redaction may have changed what
        the log holds of them (the journal must hold the calls as they were made)."""
        if any(self._writer.redacts(t) for t in ev.CALL_TYPES):
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
                orchestration_id=self._oid,
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
                orchestration_id=self._oid,
                step_id=step_id,
                attempt=attempt,
                error=bounded(error),
                retrying=retrying,
                kind=kind,
            ),
        ).error
