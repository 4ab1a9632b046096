"""The orchestration engine: agents, workflows, execution, events and state by replay.

See ``specs/log-format.md`` §7 (events and the state fold) and ``specs/workflows.md``
(workflow definitions, templates, conditions, providers and tools).
"""

from ledger.orchestration._json import MAX_JSON_NESTING, decode_json
from ledger.orchestration.engine import EXTERNAL_EVENT_TYPES, Engine
from ledger.orchestration.errors import (
    AgentNotFound,
    AgentNotFoundError,
    ConditionError,
    OrchestrationError,
    OrchestrationNotFound,
    OrchestrationNotFoundError,
    OrchestrationStateError,
    ProviderError,
    RedactionPathError,
    SSRFBlockedError,
    TemplateError,
    ToolError,
    WorkflowNotFound,
    WorkflowNotFoundError,
    WorkflowValidationError,
)
from ledger.orchestration.events import ORCHESTRATION_EVENTS, TERMINAL_TYPES
from ledger.orchestration.providers import ProviderPolicy
from ledger.orchestration.redaction import RedactionPolicy, commitment
from ledger.orchestration.registry import AgentRecord, WorkflowRecord
from ledger.orchestration.sqlite_summaries import SQLiteSummaryStore
from ledger.orchestration.state import (
    OrchestrationProjection,
    OrchestrationState,
    StepState,
    apply,
    parse_orchestration_id,
    replay,
)
from ledger.orchestration.summary import OrchestrationSummary
from ledger.orchestration.summary_store import (
    MemorySummaryStore,
    PageQuery,
    SummaryProgress,
    SummaryStore,
)
from ledger.orchestration.tools import HttpTool, Tool, ToolRegistry
from ledger.orchestration.workflow import (
    StepDef,
    WorkflowDefinition,
    definition_hash,
    validate_definition,
)

__all__ = [
    "EXTERNAL_EVENT_TYPES",
    "MAX_JSON_NESTING",
    "ORCHESTRATION_EVENTS",
    "TERMINAL_TYPES",
    "AgentNotFound",
    "AgentNotFoundError",
    "AgentRecord",
    "ConditionError",
    "Engine",
    "HttpTool",
    "MemorySummaryStore",
    "OrchestrationError",
    "OrchestrationNotFound",
    "OrchestrationNotFoundError",
    "OrchestrationProjection",
    "OrchestrationState",
    "OrchestrationStateError",
    "OrchestrationSummary",
    "PageQuery",
    "ProviderError",
    "ProviderPolicy",
    "RedactionPathError",
    "RedactionPolicy",
    "SQLiteSummaryStore",
    "SSRFBlockedError",
    "StepDef",
    "StepState",
    "SummaryProgress",
    "SummaryStore",
    "TemplateError",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "WorkflowDefinition",
    "WorkflowNotFound",
    "WorkflowNotFoundError",
    "WorkflowRecord",
    "WorkflowValidationError",
    "apply",
    "commitment",
    "decode_json",
    "definition_hash",
    "parse_orchestration_id",
    "replay",
    "validate_definition",
]
