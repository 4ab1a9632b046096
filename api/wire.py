"""Wire types: request bodies (frozen, unknown fields rejected) and response shapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "AgentRequest",
    "CancelRequest",
    "CreateOrchestrationRequest",
    "EventOut",
    "ExecuteAgentRequest",
    "ExecuteWorkflowRequest",
    "LeafPayload",
    "ReceiptOut",
    "StepEventIn",
    "StepsRequest",
    "WorkflowRequest",
]

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
Uuid = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
MaxSteps = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class _Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ExecuteWorkflowRequest(_Body, frozen=True, forbid_unknown_fields=True):
    """The first documented shape: run a workflow with these agents."""

    workflow_id: Uuid
    agents: list[Uuid]
    parameters: dict[str, Any] = {}


class ExecuteAgentRequest(_Body, frozen=True, forbid_unknown_fields=True):
    """The second documented shape: run an agent (optionally on a workflow) on an input."""

    agent_id: Uuid
    input: Any
    workflow_id: Uuid | None = None
    model: ModelName | None = None
    max_steps: MaxSteps = 10
    timeout_seconds: Timeout = 300


class CreateOrchestrationRequest(_Body, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/orchestrations``: ``external`` records steps run elsewhere."""

    executor: Literal["external", "engine"]
    agent_id: Uuid | None = None
    workflow_id: Uuid | None = None
    agents: list[Uuid] = []
    input: Any = None
    parameters: dict[str, Any] = {}
    model: ModelName | None = None
    max_steps: MaxSteps | None = None
    timeout_seconds: Timeout | None = None


class StepEventIn(_Body, frozen=True, forbid_unknown_fields=True):
    type: Annotated[str, msgspec.Meta(max_length=64)]
    payload: dict[str, Any]


class StepsRequest(_Body, frozen=True, forbid_unknown_fields=True):
    events: Annotated[list[StepEventIn], msgspec.Meta(min_length=1, max_length=256)]


class CancelRequest(_Body, frozen=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] = "cancelled"


class AgentRequest(_Body, frozen=True, forbid_unknown_fields=True):
    name: Name
    provider: dict[str, Any]
    model: ModelName | None = None
    tools: list[Annotated[str, msgspec.Meta(max_length=64)]] = []
    instructions: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None
    agent_id: Uuid | None = None


class WorkflowRequest(_Body, frozen=True, forbid_unknown_fields=True):
    name: Name
    definition: dict[str, Any]
    workflow_id: Uuid | None = None


# -- responses -----------------------------------------------------------------------


class LeafPayload(msgspec.Struct, frozen=True):
    """Reads only the payload out of stored leaf bytes, as the raw JSON it is."""

    payload: msgspec.Raw


class EventOut(msgspec.Struct, frozen=True):
    event_id: str
    stream_seq: int
    type: str
    occurred_at: str
    payload: msgspec.Raw
    leaf_index: int
    receipt_id: str
    tree_size: int
    leaf: bytes


class ReceiptOut(msgspec.Struct, frozen=True):
    receipt_id: str
    orchestration_id: str
    event_id: str
    leaf_index: int
    leaf_hash: bytes
    tree_size: int
    inclusion_proof: list[bytes]
    checkpoint: str
