"""Authentication (API key or Bearer JWT), tenant matching, scopes and rate limits.

Order of checks (issue #4 §3): credentials first (401), then the tenant header and
scope (403). A resource of another tenant is reported by the route as 404.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import jwt
import msgspec
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from api.config import Config
from api.errors import ConfigError, KeyStoreError, ProblemError
from api.keys import KeyRecord, KeyStore
from api.problems import bad_request, forbidden, unauthorized, unavailable

__all__ = ["Authenticator", "Principal", "RateLimiter", "single_header"]

_log = structlog.get_logger()

_HEADER_KEY = "X-API-Key"
_HEADER_TENANT = "X-Tenant-ID"
_JWT_LEEWAY_SECONDS = 5


def single_header(request: web.Request, name: str) -> str | None:
    """The header ``name``, or ``None``; 400 naming it if it is given more than once.

    Not ``headers.get``, which takes the first and ignores the rest: a gateway that adds
    its own (a tenant, a key) would expect its value to be the one read.
    """
    values = request.headers.getall(name, ())
    if len(values) > 1:
        raise bad_request(f"the {name} header is given more than once", field=name)
    return values[0] if values else None


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: their tenant, scopes, and a stable id for rate limits and audit."""

    tenant_id: str
    scopes: frozenset[str]
    subject: str  # "key:<key_id>" or "jwt:<sub>"
    #: A JWT's ``exp`` (Unix seconds); ``None`` for an API key, which lasts until revoked.
    expires: int | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class RateLimiter:
    """A token bucket per credential: ``rate`` tokens per second, ``burst`` capacity."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 100_000,
    ) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1, math.ceil(rate)))
        self._clock = clock
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def check(self, subject: str) -> float | None:
        """``None`` if allowed, else the seconds until the next token."""
        if self._rate <= 0:
            return None
        now = self._clock()
        tokens, last = self._buckets.get(subject, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[subject] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[subject] = (tokens - 1.0, now)
        self._buckets.move_to_end(subject)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return None


def _load_eddsa_key(value: str) -> Ed25519PublicKey:
    text = value
    if "-----BEGIN" not in value:
        try:
            text = Path(value).read_text(encoding="ascii")
        except OSError as e:
            raise ConfigError(f"cannot read the EdDSA JWT public key {value}: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"the EdDSA JWT public key {value} is not a PEM public key: it is not ASCII text"
            ) from e
    try:
        key = load_pem_public_key(text.encode("ascii"))
    except ValueError as e:
        raise ConfigError(f"the EdDSA JWT public key is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("the EdDSA JWT public key must be an Ed25519 key")
    return key


class Authenticator:
    def __init__(
        self, config: Config, keys: KeyStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._hs256 = config.jwt_hs256_secret
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer
        self._eddsa = (
            _load_eddsa_key(config.jwt_eddsa_public_key) if config.jwt_eddsa_public_key else None
        )
        self._clock = clock
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst)
        self._rechecked = False
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}

    def _recheck_keys(self) -> bool:
        """Whether this request must look for key changes made by other processes.

        Once per turn of the event loop: a key created or revoked by ``keys create`` or
        ``keys revoke`` counts for every request authenticated from the loop's next turn
        on, so at most one turn (well under a millisecond to a few ms) after its commit.
        Checking per request gave up the interpreter lock on the loop thread for every
        request, which then waited behind the ledger's reader thread.
        """
        if self._rechecked:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True  # no loop, no turns: check every time
        self._rechecked = True
        loop.call_soon(self._next_turn)  # runs in the loop's next turn, not this one
        return True

    def _next_turn(self) -> None:
        self._rechecked = False

    def authenticate(self, request: web.Request) -> Principal:
        """The caller's principal; raises a 401 :class:`ProblemError`."""
        for name in (_HEADER_KEY, "Authorization"):
            if len(request.headers.getall(name, ())) > 1:
                raise unauthorized(f"give one {name} header, not several")
        api_key = request.headers.get(_HEADER_KEY)
        if api_key is not None:
            try:
                record = self._keys.authenticate(api_key.strip(), recheck=self._recheck_keys())
            except KeyStoreError as e:
                _log.error("auth.key_store_unreadable", error=str(e))
                raise unavailable("API keys cannot be checked right now; retry later") from e
            if record is None:
                raise unauthorized("the API key is not valid (unknown, malformed or revoked)")
            cached = self._principals.get(record.key_id)
            if cached is not None and cached[0] is record:
                return cached[1]
            principal = Principal(
                record.tenant_id, frozenset(record.scopes), f"key:{record.key_id}"
            )
            if len(self._principals) >= 4096:
                self._principals.clear()
            self._principals[record.key_id] = (record, principal)
            return principal
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthorized("the Authorization header must be 'Bearer <JWT>'")
            return self._jwt(token.strip())
        raise unauthorized("credentials are required: an X-API-Key header or a Bearer JWT")

    def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        key: str | Ed25519PublicKey
        if alg == "EdDSA" and self._eddsa is not None:
            key = self._eddsa
        elif alg == "HS256" and self._hs256 is not None:
            key = self._hs256
        else:
            raise unauthorized(f"JWT algorithm {alg!r} is not accepted here")
        # RFC 8725 §3.9/§3.10: with an audience (and issuer) configured, a token minted
        # for another service under the same key is refused here.
        required = ["exp"]
        if self._audience is not None:
            required.append("aud")
        if self._issuer is not None:
            required.append("iss")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": required, "verify_aud": self._audience is not None},
                leeway=_JWT_LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the JWT has expired") from None
        except jwt.PyJWTError as e:
            raise unauthorized(f"the JWT is not valid: {e}") from None
        tenant = claims.get("tenant")
        scope = claims.get("scope")
        if not isinstance(tenant, str) or not tenant:
            raise unauthorized("the JWT has no 'tenant' claim")
        if isinstance(scope, str):
            scopes = frozenset(scope.split())
        elif isinstance(scope, list) and all(isinstance(s, str) for s in scope):
            scopes = frozenset(scope)
        else:
            raise unauthorized("the JWT has no 'scope' claim (a space-separated string or list)")
        sub = claims.get("sub")
        return Principal(
            tenant,
            scopes,
            f"jwt:{tenant}:{sub if isinstance(sub, str) else ''}",
            expires=int(claims["exp"]),  # as PyJWT read it: any size, or a numeric string
        )

    def still_authorized(self, request: web.Request, principal: Principal, scope: str) -> bool:
        """Whether the credential of a request that outlives its authorization (an event
        stream) still grants ``principal`` its tenant and ``scope``: an API key may have
        been revoked since, a JWT may have expired.

        Cheap enough to ask before every event: a key is checked against the rows in
        memory (see :meth:`_recheck_keys`), and a JWT, whose signature and claims cannot
        change, only against the clock (verifying it again costs ~0.1 ms). No rate-limit
        token is spent.
        """
        if principal.expires is not None:
            return self._clock() < principal.expires + _JWT_LEEWAY_SECONDS
        try:
            now = self.authenticate(request)
        except ProblemError:
            return False
        return now.tenant_id == principal.tenant_id and now.allows(scope)

    def authorize(self, request: web.Request, *scopes: str) -> Principal:
        """401 for credentials, then 400/403 for the tenant header, 403 unless the caller
        has one of ``scopes``, and 429 when the caller's rate limit is spent."""
        principal = self.authenticate(request)
        tenant = single_header(request, _HEADER_TENANT)
        if not tenant:  # an empty one names no tenant either: it is missing, not wrong
            raise bad_request(
                "the X-Tenant-ID header is required", slug="missing-tenant", field="X-Tenant-ID"
            )
        if tenant != principal.tenant_id:
            raise forbidden("the credential does not belong to the tenant in X-Tenant-ID")
        if principal.scopes.isdisjoint(scopes) and "admin" not in principal.scopes:
            raise forbidden(f"the credential lacks the {' or '.join(scopes)} scope")
        wait = self.limiter.check(principal.subject)
        if wait is not None:
            raise ProblemError(
                429,
                "rate-limited",
                "Too many requests",
                "the rate limit for this credential is spent",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return principal
