"""Template injection: workflow inputs are data, never templates; a definition cannot
reach outside its own context."""

from __future__ import annotations

import os
import resource

import pytest
from aiohttp.test_utils import TestClient

from api.services import SERVICES

Ctx = tuple[TestClient, dict[str, str], dict[str, str]]
INJECTED = "{{ env.HOME }} {{ steps.classify.output }} {{ __class__.__mro__ }} {% x %} ${HOME}"


async def test_hostile_template_syntax_in_inputs_is_rendered_literally(hostile: Ctx) -> None:
    client, headers, ids = hostile
    body = {
        "workflow_id": ids["workflow_id"],
        "agents": [ids["agent_id"]],
        "parameters": {"text": INJECTED},
    }
    resp = await client.post(
        "/v1/orchestrations/execute", json=body, headers={**headers, "Prefer": "wait=10"}
    )
    assert resp.status == 200, await resp.text()
    state = await resp.json()
    assert state["status"] == "completed"
    got = await client.get(
        f"/v1/orchestrations/{state['orchestration_id']}/events", headers=headers
    )
    events = (await got.json())["events"]
    requested = next(e for e in events if e["type"] == "llm.requested")
    prompt = requested["payload"]["messages"][0]["content"]
    assert prompt == f"Classify this ticket: {INJECTED}"
    home = os.environ.get("HOME")
    if home:
        assert all(home not in str(e["payload"]) for e in events)


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ env.HOME }}",
        "{{ __class__.__mro__ }}",
        "{{ os.system }}",
        # Regression: a fallback literal nested past the JSON decoder's depth raised
        # RecursionError, which registration did not take for a bad template.
        "{{ input.x ?? " + "[" * 2000 + "]" * 2000 + " }}",
    ],
)
async def test_hostile_template_outside_its_context_in_a_definition_is_422(
    hostile: Ctx, prompt: str
) -> None:
    client, headers, _ = hostile
    before = client.app[SERVICES].log.size
    definition = {"steps": [{"id": "a", "action": "llm", "prompt": prompt}]}
    resp = await client.post(
        "/v1/workflows", json={"name": "evil", "definition": definition}, headers=headers
    )
    assert resp.status == 422, (await resp.text())[:500]
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["errors"][0]["field"] == "$.definition.steps[a].prompt"
    assert client.app[SERVICES].log.size == before


async def test_regression_a_template_cannot_render_to_more_than_a_leaf_holds(
    hostile: Ctx,
) -> None:
    """A step's inputs were rendered whole before their size was checked (when recorded,
    at most a leaf): a 40 KiB definition whose placeholders repeat an earlier step's
    240 KiB output built a string of hundreds of MiB, and its JSON once more, so a few
    such runs could take the server's memory. Rendering now stops a few leaves on."""
    client, headers, _ = hostile
    definition = {
        "steps": [
            {"id": "grow", "action": "tool", "tool": "echo", "inputs": {"t": "{{input}}" * 30}},
            {
                "id": "blow",
                "action": "tool",
                "tool": "echo",
                "depends_on": ["grow"],
                "inputs": {"t": "{{steps.grow.output.t}}" * 800},
            },
        ]
    }
    wf = await client.post(
        "/v1/workflows", json={"name": "amplify", "definition": definition}, headers=headers
    )
    assert wf.status == 201, await wf.text()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    resp = await client.post(
        "/v1/orchestrations",
        json={
            "executor": "engine",
            "workflow_id": (await wf.json())["workflow_id"],
            "input": "x" * 8000,
        },
        headers={**headers, "Prefer": "wait=30"},
    )
    assert resp.status == 200, await resp.text()
    state = await resp.json()
    assert state["status"] == "failed"
    blow = state["steps"][1]
    assert (blow["step_id"], blow["status"]) == ("blow", "failed")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown < 64 * 1024, f"peak memory grew by {grown} KiB"
