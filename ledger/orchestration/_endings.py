"""How a run, or one of its steps, ends early: the exceptions that carry it from the
step where it happens to :class:`~ledger.orchestration.runner.Runner`, which records it.

Control flow only: none of them escapes the runner.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Ending", "StepFailed", "Stopped", "Terminate"]

#: How a step's failure of its own ends the run: the ``kind`` its ``step.failed``
#: records, and the reason of the ``orchestration.failed`` that follows if it is final.
Ending = Literal["step_failed", "provider_error", "interrupted"]


class Terminate(Exception):  # noqa: N818 — control flow, never escapes the runner
    def __init__(self, reason: str, error: str | None):
        super().__init__(error or reason)
        self.reason = reason
        self.error = error


class StepFailed(Exception):  # noqa: N818 — control flow, never escapes the runner
    def __init__(self, step_id: str, error: str, reason: Ending = "step_failed"):
        super().__init__(f"step {step_id!r} failed: {error}")
        self.step_id = step_id
        self.error = error
        #: The reason the run ends with if this failure ends it.
        self.reason = reason


class Stopped(Exception):  # noqa: N818 — control flow: engine shutdown at a step boundary
    pass
