"""A run's cancel and stop requests: observed at step boundaries, and a cancel reaching
the steps in flight.

A cancel (:meth:`Cancellation.request`) ends the run ``cancelled`` at the next step
boundary and cancels the step tasks in flight, so their calls are cancelled too; a stop
(engine shutdown, :meth:`Cancellation.stop`) only ends the run at a step boundary,
leaving it to be resumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

from ledger.orchestration._endings import Stopped, Terminate

__all__ = ["Cancellation"]


class Cancellation:
    def __init__(self) -> None:
        #: The cancel's reason and who asked for it, once asked.
        self.requested: tuple[str, str | None] | None = None
        self.stopping = False
        #: The step tasks in flight, which a cancel cancels.
        self.tasks: set[asyncio.Task[Any]] = set()
        #: The task running a step inline (:meth:`inline`), and whether
        #: :meth:`request` has cancelled it.
        self._inline: asyncio.Task[Any] | None = None
        self._inline_cancelled = False

    def request(self, reason: str, requested_by: str | None) -> None:
        if self.requested is None:
            self.requested = (reason, requested_by)
        for t in self.tasks:
            t.cancel()
        if self._inline is not None and not self._inline_cancelled:
            self._inline_cancelled = True
            self._inline.cancel()

    def stop(self) -> None:
        self.stopping = True

    def boundary(self) -> None:
        if self.requested is not None:
            raise Terminate("cancelled", None)
        if self.stopping:
            raise Stopped

    def boundary_unless_stopping(self, running: Mapping[Any, Any]) -> None:
        if self.requested is not None:
            raise Terminate("cancelled", None)
        if self.stopping and not running:
            raise Stopped

    async def cancel_steps(self) -> None:
        """Cancel the step tasks in flight, and wait for them to end."""
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks)
        self.tasks.clear()

    async def inline(self, step: Awaitable[Any]) -> Any:
        """Run a workflow step in the orchestration's own task. :meth:`request`
        reaches its in-flight call by cancelling this task, and only that cancellation
        becomes ``cancelled``: a timeout's or the engine's passes through as before."""
        task = asyncio.current_task()
        assert task is not None
        self._inline = task
        try:
            return await step
        except asyncio.CancelledError:
            if self._inline_cancelled and task.uncancel() == 0:
                raise Terminate("cancelled", None) from None
            raise
        finally:
            self._inline = None
            self._inline_cancelled = False

    async def in_task(self, coro: Awaitable[Any]) -> Any:
        """Run one step as a task, so cancellation can reach an in-flight call."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        try:
            await asyncio.wait({task})
        except BaseException:
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            self.tasks.discard(task)
        if task.cancelled():
            self.boundary()
            raise asyncio.CancelledError
        return task.result()
