"""``serve --demo``: seed tenant ``demo`` (idempotently) and explain how to call it.

On every start: a ``scripted`` agent ``demo-agent`` and a workflow ``demo-triage``
(llm → tool → decision) exist once, and a fresh API key for ``demo`` is issued (the
previous demo key is revoked, so only the key printed last works).
"""

from __future__ import annotations

import shlex
from typing import Any

import msgspec

from api.keys import ALL_SCOPES
from api.services import Services

__all__ = ["DEMO_TENANT", "DemoInfo", "demo_instructions", "seed_demo"]

DEMO_TENANT = "demo"
DEMO_AGENT = "demo-agent"
DEMO_WORKFLOW = "demo-triage"
_KEY_LABEL = "serve --demo"

DEMO_DEFINITION: dict[str, Any] = {
    "steps": [
        {
            "id": "classify",
            "action": "llm",
            "agent": DEMO_AGENT,
            "prompt": 'Classify this ticket: {{ parameters.text ?? "(no text)" }}',
        },
        {
            "id": "extract",
            "action": "tool",
            "tool": "json_extract",
            "depends_on": ["classify"],
            "inputs": {"data": "{{ steps.classify.output.json }}", "path": "label"},
        },
        {
            "id": "route",
            "action": "decision",
            "depends_on": ["extract"],
            "condition": {"eq": ["steps.extract.output", "urgent"]},
        },
    ]
}
DEMO_PROVIDER: dict[str, Any] = {
    "kind": "scripted",
    "responses": [{"content": '{"label": "urgent"}'}],
}


class DemoInfo(msgspec.Struct, frozen=True):
    tenant_id: str
    agent_id: str
    workflow_id: str
    api_key: str


async def seed_demo(services: Services) -> DemoInfo:
    engine = services.engine
    agent = engine.registry.agent_by_name(DEMO_TENANT, DEMO_AGENT)
    if agent is None:
        agent = await engine.register_agent(
            DEMO_TENANT,
            name=DEMO_AGENT,
            provider=DEMO_PROVIDER,
            instructions='Answer with a JSON object {"label": ...}.',
        )
    workflow = next(
        (w for w in engine.registry.workflows(DEMO_TENANT) if w.name == DEMO_WORKFLOW), None
    )
    if workflow is None:
        workflow = await engine.register_workflow(
            DEMO_TENANT, name=DEMO_WORKFLOW, definition=DEMO_DEFINITION
        )
    for old in services.keys.list_keys(DEMO_TENANT):
        if old.label == _KEY_LABEL and old.active:
            services.keys.revoke(old.key_id)
    key = services.keys.create(DEMO_TENANT, ALL_SCOPES[:2], label=_KEY_LABEL)
    return DemoInfo(DEMO_TENANT, agent.agent_id, workflow.workflow_id, key.api_key)


def demo_instructions(info: DemoInfo, base_url: str) -> str:
    body = msgspec.json.encode(
        {
            "workflow_id": info.workflow_id,
            "agents": [info.agent_id],
            "parameters": {"text": "The checkout page is down for every customer"},
        }
    ).decode()
    auth = f"-H {shlex.quote('X-API-Key: ' + info.api_key)} -H 'X-Tenant-ID: {info.tenant_id}'"
    pick = "import json,sys; print(chr(10).join(json.load(sys.stdin)['receipts']))"
    return (
        f"MAIP Ledger demo: tenant {info.tenant_id!r}, agent {DEMO_AGENT!r} "
        f"({info.agent_id}), workflow {DEMO_WORKFLOW!r} ({info.workflow_id})\n"
        f"API key for tenant {info.tenant_id!r} (shown once): {info.api_key}\n\n"
        "Execute the demo workflow and fetch every receipt:\n\n"
        f"curl -s -X POST {base_url}/v1/orchestrations/execute {auth} "
        f"-H 'Content-Type: application/json' -H 'Prefer: wait=10' "
        f"-d {shlex.quote(body)} \\\n"
        f"  | python3 -c {shlex.quote(pick)} \\\n"
        f"  | xargs -I{{}} curl -s {base_url}/v1/receipts/{{}} {auth}\n\n"
        f"Verify offline: curl -s {base_url}/v1/log/key ; maip-verify --help\n"
    )
