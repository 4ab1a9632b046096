"""Shared helpers for the API tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from api.keys import ALL_SCOPES, KeyStore
from ledger.keys import DEFAULT_ORIGIN, KEY_FILE
from ledger.note import generate_signer

HS256_SECRET = "test-secret-0123456789-abcdefghijklmnop"
EDDSA_KEY = Ed25519PrivateKey.generate()
EDDSA_PUBLIC_PEM = (
    EDDSA_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
)

THREE_STEP: dict[str, Any] = {
    "steps": [
        {"id": "classify", "action": "llm", "prompt": "Classify: {{ parameters.text ?? input }}"},
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


def scripted(content: str = '{"label": "urgent"}', delay: float = 0.0) -> dict[str, Any]:
    response: dict[str, Any] = {"content": content}
    if delay:
        response["delay_seconds"] = delay
    return {"kind": "scripted", "responses": [response]}


@dataclass
class Tenant:
    tenant_id: str
    api_key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "X-Tenant-ID": self.tenant_id}


def new_tenant(keys: KeyStore, tenant_id: str, scopes: tuple[str, ...] = ALL_SCOPES) -> Tenant:
    key = keys.create(tenant_id, scopes)
    return Tenant(tenant_id, key.api_key, key.key_id)


def hs256_token(tenant: str, scope: str, *, exp_in: float = 300, secret: str = HS256_SECRET) -> str:
    return jwt.encode(
        {"tenant": tenant, "scope": scope, "exp": int(time.time() + exp_in), "sub": "t"},
        secret,
        algorithm="HS256",
    )


def eddsa_token(tenant: str, scope: str, key: Ed25519PrivateKey = EDDSA_KEY) -> str:
    return jwt.encode(
        {"tenant": tenant, "scope": scope, "exp": int(time.time() + 300)}, key, algorithm="EdDSA"
    )


async def json_ok(client: TestClient, method: str, path: str, status: int, **kw: Any) -> Any:
    resp = await client.request(method, path, **kw)
    body = await resp.text()
    assert resp.status == status, (resp.status, body)
    return await resp.json(content_type=None)


async def setup_workflow(
    client: TestClient, tenant: Tenant, *, delay: float = 0.0, name: str = "bot"
) -> tuple[str, str]:
    """Register a scripted agent and the 3-step workflow; (agent_id, workflow_id)."""
    agent = await json_ok(
        client,
        "POST",
        "/v1/agents",
        201,
        json={"name": name, "provider": scripted(delay=delay)},
        headers=tenant.headers,
    )
    wf = await json_ok(
        client,
        "POST",
        "/v1/workflows",
        201,
        json={"name": f"{name}-triage", "definition": THREE_STEP},
        headers=tenant.headers,
    )
    return agent["agent_id"], wf["workflow_id"]


async def external_orchestration(client: TestClient, tenant: Tenant) -> str:
    """A scripted agent and an orchestration the caller executes itself; its id."""
    agent, _ = await setup_workflow(client, tenant)
    created = await json_ok(
        client,
        "POST",
        "/v1/orchestrations",
        202,
        json={"executor": "external", "agent_id": agent, "input": None},
        headers=tenant.headers,
    )
    return str(created["orchestration_id"])


def write_signing_key(data_dir: Path, origin: str = DEFAULT_ORIGIN) -> str:
    """Pre-create the log's signing key; returns its vkey."""
    signer = generate_signer(origin)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(signer.skey + "\n")
    return signer.verifier.vkey


async def read_sse(resp: Any, limit: int | None = None) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    while limit is None or len(messages) < limit:
        line = await resp.content.readline()
        if not line:
            break
        text = line.decode().rstrip("\n")
        if not text:
            if current:
                messages.append(current)
                current = {}
            continue
        if text.startswith(":"):
            continue
        name, _, value = text.partition(": ")
        current[name] = value
    return messages
