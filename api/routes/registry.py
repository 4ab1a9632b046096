"""Agents and workflows: ``POST``/``GET`` under ``/v1/agents`` and ``/v1/workflows``."""

from __future__ import annotations

from contextlib import suppress

from aiohttp import web

from api.problems import bad_request, from_definition_error
from api.routes._common import convert, decimal, query_param, read_json, services, uuid_param
from api.services import json_response
from api.wire import AgentRequest, WorkflowRequest
from ledger.ids import canonical_uuid
from ledger.orchestration import WorkflowValidationError, validate_definition

__all__ = ["routes"]

routes = web.RouteTableDef()
_READ = ("orchestrations:read", "agents:write", "workflows:write")


@routes.post("/v1/agents")
async def register_agent(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, "agents:write")
    body = convert(await read_json(request), AgentRequest)
    record = await s.engine.register_agent(
        principal.tenant_id,
        name=body.name,
        provider=body.provider,
        model=body.model,
        tools=body.tools,
        instructions=body.instructions,
        agent_id=body.agent_id,
    )
    return json_response(record, status=201, headers={"Location": f"/v1/agents/{record.agent_id}"})


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, *_READ)
    return json_response({"items": s.engine.registry.agents(principal.tenant_id)})


@routes.get("/v1/agents/{agent_id}")
async def get_agent(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, *_READ)
    agent_id = uuid_param(request, "agent_id", "agent")
    return json_response(s.engine.get_agent(principal.tenant_id, agent_id))


@routes.post("/v1/workflows")
async def register_workflow(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, "workflows:write")
    body = convert(await read_json(request), WorkflowRequest)
    try:
        # Checked here as well as in the engine, whose errors name a definition's fields
        # relative to the definition and the request's own ones (name) relative to the
        # body: only here is it known which one failed.
        validate_definition(body.definition)
    except WorkflowValidationError as e:
        raise from_definition_error(e) from e
    latest = None
    if body.workflow_id is not None:
        with suppress(ValueError):  # not a UUID: the engine says so, naming the field
            latest = s.engine.registry.workflow(
                principal.tenant_id, canonical_uuid(body.workflow_id)
            )
    record = await s.engine.register_workflow(
        principal.tenant_id,
        name=body.name,
        definition=body.definition,
        workflow_id=body.workflow_id,
    )
    if latest is not None and record.version == latest.version:
        # An unchanged definition: nothing was written, the latest version is returned.
        return json_response(record)
    return json_response(
        record, status=201, headers={"Location": f"/v1/workflows/{record.workflow_id}"}
    )


@routes.get("/v1/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, *_READ)
    return json_response({"items": s.engine.registry.workflows(principal.tenant_id)})


@routes.get("/v1/workflows/{workflow_id}")
async def get_workflow(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, *_READ)
    raw = query_param(request, "version")
    version = None
    if raw is not None:
        version = decimal(raw, 7)
        if version is None or not 1 <= version <= 1_000_000:
            raise bad_request("version must be an integer in 1..1000000", field="version")
    workflow_id = uuid_param(request, "workflow_id", "workflow")
    record = s.engine.get_workflow(principal.tenant_id, workflow_id, version)
    return json_response(record)
