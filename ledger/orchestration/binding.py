"""Binding a start request to an ``orchestration.created`` payload (pure).

Validates the limits, checks every agent exists for the tenant, takes the exact
workflow version, and resolves each step's ``agent`` (an id or a name, preferring the
orchestration's own ``agents``) to an agent id, so the recorded definition says who ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ledger.orchestration import events as ev
from ledger.orchestration.errors import (
    AgentNotFoundError,
    WorkflowNotFoundError,
    WorkflowValidationError,
)
from ledger.orchestration.registry import Registry

__all__ = ["build_created", "resolve_agent"]


def resolve_agent(registry: Registry, tenant_id: str, ref: str, given: Sequence[str]) -> str | None:
    """An agent reference (id or name), preferring the orchestration's own agents."""
    if ref in given and registry.agent(tenant_id, ref):
        return ref
    for agent_id in given:
        record = registry.agent(tenant_id, agent_id)
        if record is not None and record.name == ref:
            return agent_id
    if registry.agent(tenant_id, ref):
        return ref
    record = registry.agent_by_name(tenant_id, ref)
    return record.agent_id if record else None


def build_created(
    registry: Registry,
    tenant_id: str,
    orchestration_id: str,
    *,
    executor: str,
    workflow_id: str | None,
    workflow_version: int | None,
    agent_id: str | None,
    agents: Sequence[str],
    input: Any,
    parameters: Mapping[str, Any] | None,
    model: str | None,
    max_steps: int,
    timeout_seconds: float,
    started_by: str,
    request_shape: str | None,
) -> ev.OrchestrationCreated:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= 1000:
        raise WorkflowValidationError("must be an integer in 1..1000", field="max_steps")
    if (
        isinstance(timeout_seconds, bool)
        or not isinstance(timeout_seconds, int | float)
        or not 0 < timeout_seconds <= 86_400
    ):
        raise WorkflowValidationError("must be in (0, 86400]", field="timeout_seconds")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise WorkflowValidationError("must be an object", field="parameters")
    given = list(dict.fromkeys(agents))
    for i, a in enumerate(given):
        if registry.agent(tenant_id, a) is None:
            raise AgentNotFoundError(f"no agent {a!r} (agents[{i}])")
    if agent_id is not None and registry.agent(tenant_id, agent_id) is None:
        raise AgentNotFoundError(f"no agent {agent_id!r}")
    default_agent = agent_id or (given[0] if given else None)
    definition: dict[str, Any] | None = None
    version = digest = None
    if workflow_id is not None:
        wf = registry.workflow(tenant_id, workflow_id, workflow_version)
        if wf is None:
            what = f"workflow {workflow_id!r}" + (
                f" version {workflow_version}" if workflow_version else ""
            )
            raise WorkflowNotFoundError(f"no {what}")
        version, digest = wf.version, wf.version_hash
        definition = msgspec.convert(wf.definition, dict[str, Any])
        bound = []
        for raw_step in definition["steps"]:
            step = dict(raw_step)
            ref = step.get("agent")
            if ref is not None:
                resolved = resolve_agent(registry, tenant_id, ref, given)
                if resolved is None:
                    # The stored definition is not the request's to change: what the
                    # caller chose is the workflow (the step is named in the text).
                    raise WorkflowValidationError(
                        f"step {step['id']!r} of this workflow runs as agent {ref!r},"
                        " which is not registered",
                        field="workflow_id",
                    )
                step["agent"] = resolved
            elif step["action"] == "llm":
                if default_agent is None:
                    # What is missing is the request's agent, so the error names the
                    # request's field (the step, a stored definition's, only in the text).
                    field = "agent_id" if request_shape == "agent" else "agents"
                    raise WorkflowValidationError(
                        f"step {step['id']!r} is an llm step and needs an agent:"
                        f" name one on the step or pass {field}",
                        field=field,
                    )
                step["agent"] = default_agent
            if step.get("agent") and step["agent"] not in given:
                given.append(step["agent"])
            bound.append(step)
        definition["steps"] = bound
    elif executor == "engine" and default_agent is None:
        raise WorkflowValidationError(
            "agent_id is required when no workflow_id is given", field="agent_id"
        )
    if default_agent is not None and default_agent not in given:
        given.insert(0, default_agent)
    if request_shape is None:
        request_shape = "workflow" if workflow_id else "agent"
    return ev.OrchestrationCreated(
        orchestration_id=orchestration_id,
        executor=executor,  # type: ignore[arg-type]
        workflow_id=workflow_id,
        workflow_version=version,
        workflow_hash=digest,
        agent_id=default_agent,
        agents=tuple(given),
        input=input,
        parameters=dict(parameters or {}),
        model=model,
        max_steps=max_steps,
        timeout_seconds=float(timeout_seconds),
        started_by=started_by,
        request_shape=request_shape,
        definition=definition,
        agent_revisions={a: _revision(registry, tenant_id, a) for a in given},
    )


def _revision(registry: Registry, tenant_id: str, agent_id: str) -> int:
    record = registry.agent(tenant_id, agent_id)
    if record is None:  # every agent in ``given`` was resolved through the registry
        raise AgentNotFoundError(f"no agent {agent_id!r}")
    return record.revision
