"""Errors of the orchestration engine; all derive from :class:`ledger.errors.LedgerError`."""

from __future__ import annotations

from ledger.errors import ConflictError, LedgerError, NotFoundError

__all__ = [
    "AgentNotFound",
    "AgentNotFoundError",
    "ConditionError",
    "OrchestrationError",
    "OrchestrationNotFound",
    "OrchestrationNotFoundError",
    "OrchestrationStateError",
    "ProviderError",
    "RedactionPathError",
    "SSRFBlockedError",
    "TemplateError",
    "ToolError",
    "WorkflowNotFound",
    "WorkflowNotFoundError",
    "WorkflowValidationError",
]


class OrchestrationError(LedgerError):
    """Root of the engine's own errors."""


class WorkflowValidationError(OrchestrationError, ValueError):
    """A workflow or agent definition is invalid; names the step and the field."""

    def __init__(self, message: str, *, step_id: str | None = None, field: str = "") -> None:
        parts = ([f"step {step_id!r}"] if step_id is not None else []) + (
            [f"field {field!r}"] if field else []
        )
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)
        self.step_id = step_id
        self.field = field
        self.detail = message


class TemplateError(OrchestrationError, ValueError):
    """A template is malformed, or a reference in it does not resolve (names the reference)."""

    def __init__(self, message: str, *, reference: str | None = None) -> None:
        super().__init__(message)
        self.reference = reference


class ConditionError(OrchestrationError, ValueError):
    """A decision condition is malformed or cannot be evaluated over the values it read."""


class RedactionPathError(OrchestrationError, ValueError):
    """A redaction path is malformed, or addresses nothing or a value that a string
    commitment cannot replace (names the path and why)."""


class ProviderError(OrchestrationError):
    """An LLM provider call failed. ``transient`` errors (429, 5xx, timeouts) are retried."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class ToolError(OrchestrationError):
    """A tool call failed. ``transient`` errors are retried."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class SSRFBlockedError(ToolError):
    """The http tool refused a destination (host not allow-listed, or a private address)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class OrchestrationNotFoundError(NotFoundError):
    """No such orchestration for this tenant."""


class AgentNotFoundError(NotFoundError):
    """No such agent for this tenant."""


class WorkflowNotFoundError(NotFoundError):
    """No such workflow (or version) for this tenant."""


class OrchestrationStateError(ConflictError):
    """The orchestration is not in a state that allows the operation (e.g. already ended)."""

    def __init__(self, orchestration_id: str, status: str, operation: str) -> None:
        LedgerError.__init__(
            self, f"orchestration {orchestration_id} is {status}; cannot {operation}"
        )
        self.stream_id = orchestration_id
        self.expected_seq = -1
        self.actual_seq = -1
        self.pending_seq: int | None = None
        self.status = status


#: Short aliases (the names the HTTP layer was promised).
OrchestrationNotFound = OrchestrationNotFoundError
AgentNotFound = AgentNotFoundError
WorkflowNotFound = WorkflowNotFoundError
