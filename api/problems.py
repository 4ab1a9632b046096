"""RFC 9457 problem details (``application/problem+json``) and the error translations.

Every error response is built here. Ledger and engine errors are mapped to statuses
at the boundary (:func:`from_ledger_error`); msgspec validation messages become
``errors: [{"field": "$.x", "message": ...}]``.
"""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from api.errors import ProblemError
from ledger.errors import (
    ConflictError,
    InvalidEventError,
    LedgerError,
    NotFoundError,
    ProofError,
    StorageUnavailableError,
)
from ledger.orchestration.errors import (
    ConditionError,
    OrchestrationStateError,
    TemplateError,
    WorkflowValidationError,
)

__all__ = [
    "PROBLEM_TYPE_BASE",
    "bad_request",
    "forbidden",
    "from_definition_error",
    "from_ledger_error",
    "from_validation_error",
    "not_found",
    "problem_response",
    "unauthorized",
    "unavailable",
    "unprocessable",
    "unsupported_coding",
]

PROBLEM_TYPE_BASE = "https://maip-ledger.dev/problems/"
_CONTENT_TYPE = "application/problem+json"
_AT_RE = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)
_NAMED_FIELD_RE = re.compile(r"Object (?:contains unknown|missing required) field `([^`]*)`")
_DEFINITION = "$.definition"
_encoder = msgspec.json.Encoder()


def problem_response(problem: ProblemError) -> web.Response:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + problem.slug,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    body.update(problem.extra)
    return web.Response(
        status=problem.status,
        body=_encoder.encode(body),
        content_type=_CONTENT_TYPE,
        headers=problem.headers,
    )


def bad_request(
    detail: str, *, slug: str = "bad-request", field: str | None = None
) -> ProblemError:
    errors = [{"field": field, "message": detail}] if field else None
    return ProblemError(400, slug, "Bad request", detail, errors=errors)


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="maip-ledger", ApiKey header="X-API-Key"'},
    )


def forbidden(detail: str) -> ProblemError:
    return ProblemError(403, "forbidden", "Forbidden", detail)


def unavailable(detail: str, retry_after: int = 5) -> ProblemError:
    return ProblemError(
        503, "unavailable", "Service unavailable", detail, headers={"Retry-After": str(retry_after)}
    )


def unsupported_coding() -> ProblemError:
    """415 for a body in a content coding this server does not decode (RFC 9110
    §15.5.16): ``Accept-Encoding`` names the codings it does."""
    return ProblemError(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        "the body's Content-Encoding must be one of gzip, deflate or identity",
        headers={"Accept-Encoding": "gzip, deflate"},
    )


def not_found(detail: str, *, headers: dict[str, str] | None = None) -> ProblemError:
    return ProblemError(404, "not-found", "Not found", detail, headers=headers)


def unprocessable(detail: str, field: str | None = None) -> ProblemError:
    return _validation_failed(detail, field or "$", detail)


def _validation_failed(detail: str, field: str, message: str) -> ProblemError:
    """422 ``validation``: one error, ``message`` at the JSON path ``field``."""
    return ProblemError(
        422,
        "validation",
        "Validation failed",
        detail,
        errors=[{"field": field, "message": message}],
    )


def _named_field(message: str) -> str | None:
    """The field msgspec's "Object contains unknown field `x`" or "Object missing required
    field `x`" names: it sits one level below the object the message is reported at."""
    m = _NAMED_FIELD_RE.match(message)
    return m.group(1) if m else None


def _validation_path(e: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """msgspec's message without its location, and the failing field's path under
    ``prefix`` (where the validated value sits in the request)."""
    m = _AT_RE.match(str(e))
    message = m.group("message") if m else str(e)
    path = (m.group("path") if m else None) or "$"
    if prefix != "$" and path.startswith("$"):
        path = prefix + path[1:]
    named = _named_field(message)
    if named is not None:
        path = f"{path}.{named}"
    return message, path


def from_validation_error(e: msgspec.ValidationError, prefix: str = "$") -> ProblemError:
    """msgspec's message ``"Expected `int`, got `str` - at `$.max_steps`"`` → 422."""
    message, path = _validation_path(e, prefix)
    return _validation_failed(f"{message} at {path}", path, message)


def _step_path(e: WorkflowValidationError) -> str:
    step = f"{_DEFINITION}.steps[{e.step_id}]"
    field = e.field or _named_field(e.detail)
    return f"{step}.{field}" if field else step


def from_definition_error(e: WorkflowValidationError) -> ProblemError:
    """An error in a request's workflow ``definition``: the engine names fields relative
    to the definition, so they are placed under ``$.definition``."""
    if e.step_id is not None:
        path = _step_path(e)
    elif e.field in ("", "definition"):
        path = _DEFINITION
    else:
        path = f"{_DEFINITION}.{e.field}"
    return _validation_failed(str(e), path, e.detail)


def _engine_field(field: str) -> str:
    if not field:
        return "$"
    return "$." + field if not field.startswith("$") else field


def from_ledger_error(e: LedgerError) -> ProblemError:
    """Translate a ledger or engine error into the problem a client should see."""
    if isinstance(e, WorkflowValidationError):
        path = _step_path(e) if e.step_id is not None else _engine_field(e.field)
        return _validation_failed(str(e), path, e.detail)
    if isinstance(e, TemplateError | ConditionError):
        return _validation_failed(str(e), _DEFINITION, str(e))
    if isinstance(e, NotFoundError):
        return not_found(str(e))
    if isinstance(e, OrchestrationStateError) and e.status == "closing":
        return ProblemError(
            503,
            "unavailable",
            "Service unavailable",
            "the server is shutting down",
            headers={"Retry-After": "5"},
        )
    if isinstance(e, OrchestrationStateError):
        return ProblemError(409, "conflict", "Conflict", str(e), extra={"status_now": e.status})
    if isinstance(e, ConflictError):
        return ProblemError(409, "conflict", "Conflict", str(e))
    if isinstance(e, InvalidEventError):
        path = _engine_field(e.field)
        if e.field and isinstance(e.__cause__, msgspec.ValidationError):
            message, path = _validation_path(e.__cause__, path)
            return _validation_failed(str(e), path, message)
        return _validation_failed(str(e), path, str(e))
    if isinstance(e, ProofError):
        return ProblemError(422, "proof", "Proof not available", str(e))
    if isinstance(e, StorageUnavailableError):
        return unavailable("the ledger cannot durably write right now; retry later")
    return ProblemError(
        500, "internal", "Internal server error", "an unexpected ledger error occurred"
    )
