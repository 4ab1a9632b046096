"""API keys and idempotency records, in their own SQLite file (``keys.db``).

A key is ``mlk_<key_id>_<secret>``: ``key_id`` is 16 hex digits (public, the row's
primary key), ``secret`` is 32 random bytes, URL-safe base64. Only SHA-256 of the
secret is stored — the secret is high-entropy, so a fast hash is enough — and it is
compared with :func:`hmac.compare_digest`. The plaintext key is returned once, at
creation, and never stored or logged.

The file is WAL-mode SQLite, so ``maip-ledger keys create|revoke`` may write it while
the server runs, and a new or revoked key takes effect on the very next request: the
server keeps the key rows it has read in memory, but asks SQLite on every request
whether any other connection has committed to the file since (``PRAGMA data_version``,
a read of the WAL index) and drops them all if so; its own writes drop them directly,
since data_version does not count a connection's own commits. The secret is hashed and
compared in constant time on every request, cached row or not.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from api.errors import KeyStoreError
from ledger.errors import StorageUnavailableError
from ledger.pagecache import WritebackWatch, forget_cached_pages

__all__ = [
    "ALL_SCOPES",
    "IdempotencyRecord",
    "KeyRecord",
    "KeyStore",
    "NewKey",
    "check_tenant_id",
    "parse_scopes",
]

ALL_SCOPES = (
    "orchestrations:write",
    "orchestrations:read",
    "workflows:write",
    "agents:write",
    "admin",
)
_PREFIX = "mlk"
#: Key rows kept in memory (known key ids only, so random ids cannot grow it).
_CACHE_ROWS = 4096
_KEY_RE = re.compile(r"^mlk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,199}\Z")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys(
    key_id      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    label       TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys(tenant_id);
CREATE TABLE IF NOT EXISTS idempotency(
    tenant_id        TEXT NOT NULL,
    route            TEXT NOT NULL,
    idem_key         TEXT NOT NULL,
    body_hash        BLOB NOT NULL,
    orchestration_id TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, route, idem_key)
);
"""


class KeyRecord(msgspec.Struct, frozen=True):
    key_id: str
    tenant_id: str
    scopes: tuple[str, ...]
    label: str | None
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class NewKey(msgspec.Struct, frozen=True):
    api_key: str
    key_id: str
    tenant_id: str
    scopes: tuple[str, ...]


class IdempotencyRecord(msgspec.Struct, frozen=True):
    body_hash: bytes
    orchestration_id: str


def check_tenant_id(tenant_id: str) -> str:
    if not _TENANT_RE.match(tenant_id):
        raise KeyStoreError(
            f"tenant id {tenant_id!r} must be 1-200 characters of [A-Za-z0-9._:@/+-], "
            "starting with a letter or digit"
        )
    return tenant_id


def parse_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    items = scopes.replace(",", " ").split() if isinstance(scopes, str) else list(scopes)
    if not items:
        raise KeyStoreError(f"at least one scope is required (one of {', '.join(ALL_SCOPES)})")
    for s in items:
        if s not in ALL_SCOPES:
            raise KeyStoreError(f"unknown scope {s!r} (known: {', '.join(ALL_SCOPES)})")
    return tuple(dict.fromkeys(items))


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _now_text(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KeyStore:
    """The key and idempotency tables. Thread-safe; every call is a short transaction."""

    def __init__(
        self,
        path: str | Path,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._path = Path(path)
        self._now = now
        self._token = token_bytes
        self._lock = threading.Lock()
        self._files = [self._path, self._path.with_name(self._path.name + "-wal")]
        # key_id -> (secret hash, the active record or None if revoked)
        self._rows: dict[str, tuple[bytes, KeyRecord | None]] = {}
        self._version = -1
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            forget_cached_pages(self._files)  # see _writing
            self._db = sqlite3.connect(
                self._path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._watch = WritebackWatch(self._path)
        except (sqlite3.Error, OSError) as e:
            raise KeyStoreError(f"cannot open the key store {self._path}: {e}") from e

    def check(self) -> None:
        """Raise :class:`KeyStoreError` unless the file opens and reads as the key store,
        through a connection of its own: the server's long-lived one answers from pages
        it cached, and would not notice the file replaced or unreadable."""
        try:
            conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=1.0)
            try:
                conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise KeyStoreError(f"cannot read the key store {self._path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._watch.failed():
                forget_cached_pages(self._files)
            self._watch.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write under the lock. After a failed write, or a checkpoint SQLite ran and
        failed silently, drop the file's cached pages before the next write, or a later
        one could be written through pages the device never took and be lost at the next
        crash despite a successful fsync (``ledger/pagecache.py``)."""
        with self._lock:
            # Every write drops the cached key rows (see authenticate).
            self._rows.clear()
            try:
                yield
            except sqlite3.OperationalError:
                forget_cached_pages(self._files)
                raise
            if self._watch.failed():
                forget_cached_pages(self._files)

    # -- keys --------------------------------------------------------------------------

    def create(
        self, tenant_id: str, scopes: str | Iterable[str], label: str | None = None
    ) -> NewKey:
        check_tenant_id(tenant_id)
        parsed = parse_scopes(scopes)
        key_id = self._token(8).hex()
        secret = base64.urlsafe_b64encode(self._token(32)).decode("ascii").rstrip("=")
        try:
            with self._writing():
                self._db.execute(
                    "INSERT INTO api_keys(key_id, tenant_id, scopes, secret_hash, label,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        key_id,
                        tenant_id,
                        " ".join(parsed),
                        _hash(secret),
                        label,
                        _now_text(self._now()),
                    ),
                )
        except sqlite3.Error as e:
            raise KeyStoreError(f"cannot store the key: {e}") from e
        return NewKey(f"{_PREFIX}_{key_id}_{secret}", key_id, tenant_id, parsed)

    def authenticate(self, api_key: str, *, recheck: bool = True) -> KeyRecord | None:
        """The active key record for a presented key, else ``None`` (constant-time check).

        ``recheck=False`` trusts the rows in memory as of the last check for changes by
        other connections (``keys create``/``revoke``); the server checks once per
        event-loop turn (``api.auth``).
        """
        m = _KEY_RE.match(api_key)
        if m is None:
            return None
        key_id, secret = m.groups()
        try:
            with self._lock:
                entry = self._cached(key_id, recheck)
        except sqlite3.Error as e:
            raise KeyStoreError(f"cannot read the key store: {e}") from e
        # Hash and compare even when the id is unknown, so the secret's check costs the
        # same either way. (Whether an id's row is in memory may show in the timing; ids
        # are public, secrets are not.)
        stored, record = entry if entry is not None else (b"\0" * 32, None)
        if not hmac.compare_digest(_hash(secret), stored) or record is None:
            return None
        return record

    def _cached(self, key_id: str, recheck: bool = True) -> tuple[bytes, KeyRecord | None] | None:
        """The row for ``key_id`` as (secret hash, active record or None), read through the
        in-memory rows; ``None`` if there is no such key. Call with the lock held."""
        if recheck:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._rows.clear()
                self._version = version
        entry = self._rows.get(key_id)
        if entry is not None:
            return entry
        row = self._db.execute(
            "SELECT key_id, tenant_id, scopes, label, created_at, revoked_at, secret_hash"
            " FROM api_keys WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        entry = (bytes(row[6]), self._record(row) if row[5] is None else None)
        if len(self._rows) >= _CACHE_ROWS:
            self._rows.clear()
        self._rows[key_id] = entry
        return entry

    @staticmethod
    def _record(row: tuple[object, ...]) -> KeyRecord:
        return KeyRecord(
            key_id=str(row[0]),
            tenant_id=str(row[1]),
            scopes=tuple(str(row[2]).split()),
            label=None if row[3] is None else str(row[3]),
            created_at=str(row[4]),
            revoked_at=None if row[5] is None else str(row[5]),
        )

    def list_keys(self, tenant_id: str | None = None) -> list[KeyRecord]:
        query = "SELECT key_id, tenant_id, scopes, label, created_at, revoked_at FROM api_keys"
        args: tuple[str, ...] = ()
        if tenant_id is not None:
            query += " WHERE tenant_id = ?"
            args = (tenant_id,)
        try:
            with self._lock:
                rows = self._db.execute(query + " ORDER BY created_at, key_id", args).fetchall()
        except sqlite3.Error as e:
            raise KeyStoreError(f"cannot read the key store: {e}") from e
        return [self._record(r) for r in rows]

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke by key id (or a whole key); revoking twice keeps the first time."""
        m = _KEY_RE.match(key_id)
        if m:
            key_id = m.group(1)
        try:
            with self._writing():
                self._db.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                    (_now_text(self._now()), key_id),
                )
                row = self._db.execute(
                    "SELECT key_id, tenant_id, scopes, label, created_at, revoked_at"
                    " FROM api_keys WHERE key_id = ?",
                    (key_id,),
                ).fetchone()
        except sqlite3.Error as e:
            raise KeyStoreError(f"cannot revoke the key: {e}") from e
        if row is None:
            raise KeyStoreError(f"no key with id {key_id!r}")
        return self._record(row)

    def tenants(self) -> list[str]:
        try:
            with self._lock:
                rows = self._db.execute("SELECT DISTINCT tenant_id FROM api_keys").fetchall()
        except sqlite3.Error as e:
            raise KeyStoreError(f"cannot read the key store: {e}") from e
        return sorted(str(r[0]) for r in rows)

    # -- idempotency -------------------------------------------------------------------

    def idempotency(self, tenant_id: str, route: str, key: str) -> IdempotencyRecord | None:
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT body_hash, orchestration_id FROM idempotency"
                    " WHERE tenant_id = ? AND route = ? AND idem_key = ?",
                    (tenant_id, route, key),
                ).fetchone()
        except sqlite3.Error as e:
            # As for remember(): 503, and the client retries with the same key.
            raise StorageUnavailableError(f"cannot read the Idempotency-Key record: {e}") from e
        return None if row is None else IdempotencyRecord(bytes(row[0]), str(row[1]))

    def remember(
        self, tenant_id: str, route: str, key: str, body_hash: bytes, orchestration_id: str
    ) -> None:
        try:
            with self._writing():
                self._db.execute(
                    "INSERT OR IGNORE INTO idempotency(tenant_id, route, idem_key, body_hash,"
                    " orchestration_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (tenant_id, route, key, body_hash, orchestration_id, _now_text(self._now())),
                )
        except sqlite3.OperationalError as e:
            # Disk full or read-only: the API answers 503 (not 500) and the client retries
            # with the same key. The orchestration itself is already in the ledger.
            raise StorageUnavailableError(f"cannot record the Idempotency-Key: {e}") from e

    def forget(self, tenant_id: str, route: str, key: str, orchestration_id: str) -> None:
        """Drop the key's record if it still names ``orchestration_id``."""
        try:
            with self._writing():
                self._db.execute(
                    "DELETE FROM idempotency WHERE tenant_id = ? AND route = ? AND idem_key = ?"
                    " AND orchestration_id = ?",
                    (tenant_id, route, key, orchestration_id),
                )
        except sqlite3.Error as e:
            raise StorageUnavailableError(f"cannot release the Idempotency-Key: {e}") from e
