"""Payload Structs of the orchestration event types (``specs/log-format.md`` §7).

Every payload is a frozen msgspec Struct that rejects unknown fields. Fields that record
LLM and tool calls use the OpenTelemetry GenAI names, spelled with dots on the wire
(``gen_ai.request.model``); in Python they are the same names with underscores.
Payloads never omit fields: an absent value is an explicit ``null``, so the verifier's
fold (§7.3) reads the same keys whatever the engine left empty.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from ledger.events import EventCatalog

__all__ = [
    "AGENT_REGISTERED",
    "DECISION_MADE",
    "LLM_COMPLETED",
    "LLM_REQUESTED",
    "ORCHESTRATION_CANCELLED",
    "ORCHESTRATION_COMPLETED",
    "ORCHESTRATION_CREATED",
    "ORCHESTRATION_EVENTS",
    "ORCHESTRATION_FAILED",
    "ORCHESTRATION_STARTED",
    "STEP_COMPLETED",
    "STEP_FAILED",
    "STEP_SKIPPED",
    "STEP_STARTED",
    "TERMINAL_TYPES",
    "TOOL_COMPLETED",
    "TOOL_INVOKED",
    "WORKFLOW_REGISTERED",
    "Action",
    "AgentRegistered",
    "DecisionMade",
    "FailureKind",
    "FailureReason",
    "LLMCompleted",
    "LLMRequested",
    "OrchestrationCancelled",
    "OrchestrationCompleted",
    "OrchestrationCreated",
    "OrchestrationFailed",
    "OrchestrationStarted",
    "StepCompleted",
    "StepFailed",
    "StepSkipped",
    "StepStarted",
    "ToolCompleted",
    "ToolInvoked",
    "WorkflowRegistered",
]

Action = Literal["llm", "tool", "decision"]
FailureReason = Literal[
    "step_failed", "max_steps_exceeded", "timed_out", "provider_error", "interrupted"
]
#: What ended a step attempt (``step.failed``'s ``kind``, §7.2): the reason a run that
#: this failure ends ends with, or ``aborted`` for an attempt the run's end cut short.
FailureKind = Literal["step_failed", "provider_error", "interrupted", "aborted"]

AGENT_REGISTERED: Final = "agent.registered"
WORKFLOW_REGISTERED: Final = "workflow.registered"
ORCHESTRATION_CREATED: Final = "orchestration.created"
ORCHESTRATION_STARTED: Final = "orchestration.started"
STEP_STARTED: Final = "step.started"
LLM_REQUESTED: Final = "llm.requested"
LLM_COMPLETED: Final = "llm.completed"
TOOL_INVOKED: Final = "tool.invoked"
TOOL_COMPLETED: Final = "tool.completed"
DECISION_MADE: Final = "decision.made"
STEP_COMPLETED: Final = "step.completed"
STEP_FAILED: Final = "step.failed"
STEP_SKIPPED: Final = "step.skipped"
ORCHESTRATION_COMPLETED: Final = "orchestration.completed"
ORCHESTRATION_FAILED: Final = "orchestration.failed"
ORCHESTRATION_CANCELLED: Final = "orchestration.cancelled"

TERMINAL_TYPES: Final = frozenset(
    {ORCHESTRATION_COMPLETED, ORCHESTRATION_FAILED, ORCHESTRATION_CANCELLED}
)
#: The events that record a model or tool call.
CALL_TYPES: Final = (LLM_REQUESTED, LLM_COMPLETED, TOOL_INVOKED, TOOL_COMPLETED)


class _Payload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class AgentRegistered(_Payload, frozen=True, forbid_unknown_fields=True):
    agent_id: str
    name: str
    provider: dict[str, Any]
    model: str | None
    tools: tuple[str, ...]
    instructions: str | None


class WorkflowRegistered(_Payload, frozen=True, forbid_unknown_fields=True):
    workflow_id: str
    name: str
    version: int
    version_hash: str
    definition: dict[str, Any]


class OrchestrationCreated(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    executor: Literal["engine", "external"]
    workflow_id: str | None
    workflow_version: int | None
    workflow_hash: str | None
    agent_id: str | None
    agents: tuple[str, ...]
    input: Any
    parameters: dict[str, Any]
    model: str | None
    max_steps: int
    timeout_seconds: float
    started_by: str
    request_shape: str
    #: The workflow definition the orchestration runs (§7.2), so a replay needs no
    #: registry lookup; ``null`` in agent-loop and external orchestrations.
    definition: dict[str, Any] | None = None
    #: Each of ``agents`` by the registration it runs as (the agent stream's sequence
    #: number), so a run resumed after the agent was re-registered still runs as the
    #: agent it started with. ``null`` in leaves written before it was recorded.
    agent_revisions: dict[str, int] | None = None


class OrchestrationStarted(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str


class StepStarted(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    agent_id: str | None
    action: Action
    attempt: int
    inputs: Any


class LLMRequested(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    attempt: int
    gen_ai_operation_name: str = msgspec.field(name="gen_ai.operation.name")
    gen_ai_provider_name: str = msgspec.field(name="gen_ai.provider.name")
    gen_ai_request_model: str | None = msgspec.field(name="gen_ai.request.model")
    messages: tuple[Any, ...] = ()
    tools: tuple[Any, ...] = ()
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class LLMCompleted(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    attempt: int
    gen_ai_response_model: str | None = msgspec.field(name="gen_ai.response.model")
    gen_ai_response_id: str | None = msgspec.field(name="gen_ai.response.id")
    gen_ai_response_finish_reasons: tuple[str, ...] = msgspec.field(
        name="gen_ai.response.finish_reasons"
    )
    gen_ai_usage_input_tokens: int | None = msgspec.field(name="gen_ai.usage.input_tokens")
    gen_ai_usage_output_tokens: int | None = msgspec.field(name="gen_ai.usage.output_tokens")
    message: Any
    latency_ms: float
    error: str | None
    #: Whether ``error`` is one the step's retry policy retries, so a resumed run that
    #: reuses this call decides as the live run did; ``false`` in older leaves.
    transient: bool = False


class ToolInvoked(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    attempt: int
    gen_ai_tool_name: str = msgspec.field(name="gen_ai.tool.name")
    gen_ai_tool_call_id: str | None = msgspec.field(name="gen_ai.tool.call.id")
    arguments: Any = None


class ToolCompleted(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    attempt: int
    gen_ai_tool_name: str = msgspec.field(name="gen_ai.tool.name")
    gen_ai_tool_call_id: str | None = msgspec.field(name="gen_ai.tool.call.id")
    result: Any = None
    error: str | None = None
    latency_ms: float = 0.0
    #: Whether ``error`` is one the step's retry policy retries, so a resumed run
    #: decides as the live run did; ``false`` in leaves written before it was recorded.
    transient: bool = False


class DecisionMade(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    condition: Any
    values: dict[str, Any]
    branch: str
    skipped: tuple[str, ...]
    #: The attempt that decided, as in the step's other events; ``null`` in leaves
    #: written before it was recorded.
    attempt: int | None = None


class StepCompleted(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    attempt: int
    output: Any


class StepFailed(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    attempt: int
    error: str
    retrying: bool
    #: What ended the attempt, so a run resumed after its step's last failure was
    #: recorded ends with the reason the live run gave; ``null`` in leaves written
    #: before it was recorded (a resumed run then ends ``step_failed``, as it did).
    kind: FailureKind | None = None


class StepSkipped(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    step_id: str
    reason: str


class OrchestrationCompleted(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    results: Any


class OrchestrationFailed(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    reason: FailureReason
    error: str | None


class OrchestrationCancelled(_Payload, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    reason: str
    requested_by: str | None


ORCHESTRATION_EVENTS: Final = EventCatalog(
    {
        AGENT_REGISTERED: AgentRegistered,
        WORKFLOW_REGISTERED: WorkflowRegistered,
        ORCHESTRATION_CREATED: OrchestrationCreated,
        ORCHESTRATION_STARTED: OrchestrationStarted,
        STEP_STARTED: StepStarted,
        LLM_REQUESTED: LLMRequested,
        LLM_COMPLETED: LLMCompleted,
        TOOL_INVOKED: ToolInvoked,
        TOOL_COMPLETED: ToolCompleted,
        DECISION_MADE: DecisionMade,
        STEP_COMPLETED: StepCompleted,
        STEP_FAILED: StepFailed,
        STEP_SKIPPED: StepSkipped,
        ORCHESTRATION_COMPLETED: OrchestrationCompleted,
        ORCHESTRATION_FAILED: OrchestrationFailed,
        ORCHESTRATION_CANCELLED: OrchestrationCancelled,
    }
)
