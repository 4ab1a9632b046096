"""Schemathesis against specs/openapi.yaml and a live `maip-ledger serve` on loopback:
no 5xx, and every response conforms to the documented schema. Examples are bounded
(the CI machine is small)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from api_helpers import THREE_STEP, scripted, write_signing_key
from api_server import ROOT, Server, admin_key_headers
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

MAX_EXAMPLES = 12


class _NonConformingError(Exception):
    """A check failed; the failure text is in the shared list."""


def _conformance_test(
    operation: Any, base_url: str, headers: dict[str, str], failures: list[str]
) -> Any:
    """A Hypothesis test of one operation; returns how many requests it made."""
    calls = 0

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy())
    def check(case: Any) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        try:
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
        except AssertionError as e:
            failures.append(f"{operation.label}: {response.status_code} {e}")
            raise _NonConformingError from e

    def run() -> int:
        check()
        return calls

    return run


@pytest.mark.slow
def test_openapi_conformance(tmp_path: Path) -> None:
    write_signing_key(tmp_path)
    headers = admin_key_headers(tmp_path, "fuzz")
    server = Server(tmp_path)
    try:
        # Real resources, so generated requests reach more than 404s.
        server.json(
            "POST", "/v1/agents", 201, body={"name": "a", "provider": scripted()}, headers=headers
        )
        server.json(
            "POST",
            "/v1/workflows",
            201,
            body={"name": "w", "definition": THREE_STEP},
            headers=headers,
        )
        schema = schemathesis.openapi.from_path(str(ROOT / "specs" / "openapi.yaml"))
        failures: list[str] = []
        calls = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            test = _conformance_test(operation, server.url, headers, failures)
            try:
                calls += test()
            except _NonConformingError:
                continue
        assert calls > 100
        assert not failures, "\n".join(failures[:10])
    finally:
        server.stop()
