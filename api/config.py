"""Server configuration: one frozen value, from flags with ``MAIP_*`` environment fallbacks.

Precedence: an explicit flag, else the environment variable, else the default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from api.errors import ConfigError
from ledger.cosignature import WitnessKey
from ledger.errors import LedgerError
from ledger.keys import DEFAULT_ORIGIN
from ledger.orchestration import ProviderPolicy
from ledger.witnessing import WitnessEndpoint

__all__ = ["ENV_VARS", "Config"]

#: Each setting's environment variable.
ENV_VARS: dict[str, str] = {
    "data_dir": "MAIP_DATA_DIR",
    "host": "MAIP_HOST",
    "port": "MAIP_PORT",
    "origin": "MAIP_ORIGIN",
    "key_file": "MAIP_KEY_FILE",
    "max_body_bytes": "MAIP_MAX_BODY_BYTES",
    "rate_limit": "MAIP_RATE_LIMIT",
    "rate_burst": "MAIP_RATE_BURST",
    "jwt_hs256_secret": "MAIP_JWT_HS256_SECRET",
    "jwt_eddsa_public_key": "MAIP_JWT_EDDSA_PUBLIC_KEY",
    "jwt_audience": "MAIP_JWT_AUDIENCE",
    "jwt_issuer": "MAIP_JWT_ISSUER",
    "shutdown_grace_seconds": "MAIP_SHUTDOWN_GRACE_SECONDS",
    "header_timeout_seconds": "MAIP_HEADER_TIMEOUT_SECONDS",
    "max_connections": "MAIP_MAX_CONNECTIONS",
    "max_requests_per_tenant": "MAIP_MAX_REQUESTS_PER_TENANT",
    "hash_cache_mib": "MAIP_HASH_CACHE_MIB",
    "receipt_cache_entries": "MAIP_RECEIPT_CACHE_ENTRIES",
    "demo": "MAIP_DEMO",
    "log_level": "MAIP_LOG_LEVEL",
    "provider_hosts": "MAIP_PROVIDER_HOSTS",
    "provider_private_hosts": "MAIP_PROVIDER_PRIVATE_HOSTS",
    "provider_keys": "MAIP_PROVIDER_KEYS",
    "witnesses": "MAIP_WITNESSES",
}

_LEDGER_FILE = "ledger.db"
_KEYS_FILE = "keys.db"
# Derived from the ledger (moved aside and rebuilt if damaged): safe to delete.
_SUMMARIES_FILE = "summaries.db"
# The witnesses' cosignatures (ledger/cosignature_store.py): evidence, not derived.
_COSIGNATURES_FILE = "cosignatures.db"


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8080
    origin: str = DEFAULT_ORIGIN
    key_file: Path | None = None
    #: Largest accepted request body, bytes (413 above).
    max_body_bytes: int = 1 << 20
    #: Per-credential requests per second; 0 turns rate limiting off (the default).
    rate_limit: float = 0.0
    rate_burst: int = 0
    #: Bearer JWTs: HS256 with this shared secret, and/or EdDSA with this public key
    #: (PEM text or a path to a PEM file). Neither set: only API keys are accepted.
    jwt_hs256_secret: str | None = field(default=None, repr=False)
    jwt_eddsa_public_key: str | None = None
    #: When set, a JWT must carry this ``aud`` (and ``iss``): a token the same key
    #: signed for another service is then refused.
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    shutdown_grace_seconds: float = 5.0
    #: A connection must deliver a complete request head (request line and headers)
    #: within this many seconds of opening, or of its previous response; else it is
    #: closed (408 if part of a head arrived). Bounds slowloris and idle keep-alive.
    header_timeout_seconds: float = 20.0
    #: Connections held at once; one more is answered 503 and closed.
    max_connections: int = 1000
    #: Requests one tenant may have in progress at once (streams and waits included);
    #: one more is answered 429. A quarter of the connections by default, so no one
    #: tenant can hold them all (api/tenant_limit.py).
    max_requests_per_tenant: int = 250
    #: Memory for stored tree hashes kept for proofs: 32 bytes a hash, about two hashes
    #: a leaf, so the default holds every hash of a log of about 2M entries; beyond
    #: that, cold proofs read their hashes from SQLite.
    hash_cache_mib: int = 128
    #: Receipts kept for GET /v1/receipts (about 1-2 KB each): those issued recently,
    #: and those fetched. Older ones are rebuilt from the ledger on their next fetch.
    receipt_cache_entries: int = 65_536
    demo: bool = False
    log_level: str = "info"
    #: Where tenants' ``openai`` agents may connect (ledger/orchestration/providers/
    #: policy.py). Comma-separated hosts; unset: any host whose addresses are public.
    provider_hosts: str | None = None
    #: Comma-separated hosts that may be private or loopback (a local vLLM or Ollama).
    provider_private_hosts: str = ""
    #: The only environment variables an agent's API key may come from, each with the
    #: origins it may be sent to (no scheme: ``https``), e.g.
    #: ``OPENAI_API_KEY=https://api.openai.com;LOCAL=http://127.0.0.1:8000``.
    #: Unset: agents send no key.
    provider_keys: str = ""
    #: The witnesses the log submits its checkpoints to, each ``URL=VKEY``: the
    #: witness's add-checkpoint URL and its cosignature/v1 vkey (type 0x04). The
    #: environment variable holds them separated by whitespace.
    witnesses: tuple[str, ...] = ()

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / _LEDGER_FILE

    @property
    def keys_path(self) -> Path:
        return self.data_dir / _KEYS_FILE

    @property
    def summaries_path(self) -> Path:
        return self.data_dir / _SUMMARIES_FILE

    @property
    def cosignatures_path(self) -> Path:
        return self.data_dir / _COSIGNATURES_FILE

    @classmethod
    def load(cls, env: Mapping[str, str], **flags: Any) -> Config:
        """Build from explicit ``flags`` (``None`` = not given) over ``env`` over defaults."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            given = flags.get(f.name)
            if given is None and ENV_VARS.get(f.name) in env:
                given = env[ENV_VARS[f.name]]
            if given is None:
                continue
            values[f.name] = _coerce(f.name, f.type, given)
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # float() takes "nan" and "inf": nan passes every comparison below unnoticed,
            # and inf turns into an OverflowError wherever it meets an int or a timer.
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} ({ENV_VARS[f.name]}) must be a finite number")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        if self.max_body_bytes < 1024:
            raise ConfigError("max body size must be at least 1024 bytes")
        if self.rate_limit < 0 or self.rate_burst < 0:
            raise ConfigError("rate limit and burst must be >= 0")
        if self.shutdown_grace_seconds < 0:
            raise ConfigError("shutdown grace must be >= 0")
        if not self.header_timeout_seconds > 0:
            raise ConfigError("the header timeout must be > 0 seconds")
        if self.max_connections < 1:
            raise ConfigError("max connections must be >= 1")
        if self.max_requests_per_tenant < 1:
            raise ConfigError("max requests per tenant must be >= 1")
        if self.hash_cache_mib < 1:
            raise ConfigError("the hash cache must be at least 1 MiB")
        if self.receipt_cache_entries < 0:
            raise ConfigError("the receipt cache size must be >= 0")
        if self.jwt_hs256_secret is not None and len(self.jwt_hs256_secret.encode()) < 32:
            raise ConfigError("the HS256 JWT secret must be at least 32 bytes")
        self.provider_policy()
        self.witness_endpoints()

    def witness_endpoints(self) -> list[WitnessEndpoint]:
        """The configured witnesses; :class:`ConfigError` for a bad one, one given twice
        (by name or by public key: the cosigned message does not name the witness, so
        one key under two names is one witness), or a log key given as a witness's."""
        endpoints: list[WitnessEndpoint] = []
        for n, entry in enumerate(self.witnesses, 1):
            where = f"witnesses ({ENV_VARS['witnesses']}) #{n}"
            endpoint = _witness_endpoint(entry, where)
            for other in endpoints:
                if endpoint.key.name == other.key.name:
                    raise ConfigError(f"{where}: witness {endpoint.key.name} is given twice")
                if endpoint.key.public_key == other.key.public_key:
                    raise ConfigError(
                        f"{where}: witnesses {other.key.name} and {endpoint.key.name} share "
                        "one public key"
                    )
            endpoints.append(endpoint)
        return endpoints

    def provider_policy(self) -> ProviderPolicy:
        """The policy for tenants' providers; :class:`ConfigError` if a setting is bad."""
        keys: dict[str, list[str]] = {}
        for entry in filter(None, (e.strip() for e in self.provider_keys.split(";"))):
            name, sep, hosts = entry.partition("=")
            name = name.strip()
            if not sep or not _ENV_NAME.fullmatch(name) or not _host_list(hosts):
                raise ConfigError(
                    f"provider_keys ({ENV_VARS['provider_keys']}): {entry!r} is not "
                    "NAME=origin[,origin]"
                )
            if name.startswith("MAIP_"):
                # The server's own settings and secrets live there.
                raise ConfigError(f"provider_keys: {name} is a server setting, not a key")
            keys[name] = _host_list(hosts)
        allowed = self.provider_hosts
        try:
            return ProviderPolicy.of(
                allow_hosts=None if allowed is None else _host_list(allowed),
                allow_private_hosts=_host_list(self.provider_private_hosts),
                keys=keys,
            )
        except ValueError as e:
            raise ConfigError(f"provider_keys ({ENV_VARS['provider_keys']}): {e}") from e


def _witness_endpoint(entry: str, where: str) -> WitnessEndpoint:
    """``URL=VKEY``. A URL may hold ``=`` (a query) and a key name may too, so each ``=``
    is tried in turn: the key ID, derived from the name, matches for one split only."""
    first_error = "expected URL=VKEY"
    at = entry.find("=")
    while at >= 0:
        url, vkey = entry[:at], entry[at + 1 :]
        try:
            key = WitnessKey.from_vkey(vkey)
        except LedgerError as e:
            if first_error == "expected URL=VKEY":
                first_error = f"expected URL=VKEY: {e}"
            at = entry.find("=", at + 1)
            continue
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ConfigError(f"{where}: the witness URL is not an http(s) URL with a host")
        return WitnessEndpoint(url, key)
    raise ConfigError(f"{where}: {first_error}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _host_list(text: str) -> list[str]:
    return [h.strip() for h in text.split(",") if h.strip()]


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _coerce(name: str, annotation: object, value: object) -> Any:
    text = str(annotation)
    if text.startswith("tuple"):
        # A repeated flag's list, or the variable's whitespace-separated values.
        if isinstance(value, str):
            return tuple(value.split())
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        return value
    if not isinstance(value, str):
        return value
    invalid = ConfigError(f"{name} ({ENV_VARS.get(name, name)}): invalid value {value!r}")
    try:
        if "Path" in text:
            return Path(value)
        if text == "int":
            return int(value)
        if text == "float":
            return float(value)
    except ValueError:
        raise invalid from None
    if text == "bool":
        lowered = value.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise invalid
        return lowered in _TRUE
    return value
