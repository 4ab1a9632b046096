"""The ``api`` package's exception hierarchy: one root, :class:`ApiError`.

Ledger and engine errors are translated to :class:`ProblemError` at the HTTP boundary
(:mod:`api.problems`); the CLI turns :class:`ApiError` into one line on stderr.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "ConfigError", "KeyStoreError", "ProblemError"]


class ApiError(Exception):
    """Root of every error the ``api`` package raises."""


class ConfigError(ApiError, ValueError):
    """A setting (flag or ``MAIP_*`` variable) is invalid."""


class KeyStoreError(ApiError):
    """The API key store cannot be read or written, or a key request is invalid."""


class ProblemError(ApiError):
    """An RFC 9457 problem: raised by handlers, rendered by the error middleware."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}
