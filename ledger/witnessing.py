"""Witnessing the log: its checkpoints submitted to each configured witness in the
background, and the witnesses' cosignatures kept and published (C2SP tlog-witness, the
log's side; ``specs/log-format.md`` §9.6).

Appends never wait for a witness: receipts are issued against the log-signed checkpoint
at once. After each commit every witness's task is woken; it sends the witness the
round's checkpoint, with a consistency proof from the size the witness last cosigned,
one request in flight per witness. A round's checkpoint is the log's newest when the
round begins (older ones are skipped: coalesced), and the next round begins once every
witness has cosigned it or is backing off after a failure: so the witnesses that answer
cosign the *same* checkpoints, and a quorum of K forms on the newest rather than on
whichever older size K of them happened to share. A witness's proofs start from the
largest size the store holds its cosignature for (0 without one); a 409
``text/x.tlog.size`` answer replaces it with the witness's own (after a lost answer, a
restart, a lost store) and the request is sent again from there, as C2SP prescribes.
A cosignature is verified against the configured witness key before it is stored; any
other answer, or none, is logged naming the witness and retried after an exponential
backoff with full jitter (``sleep`` and ``random`` are injected).

The newest checkpoint cosigned by at least K of the configured witnesses is published
as the log's signed note followed by their cosignature lines (C2SP signed-note allows
several signatures); each line is verified again as it is read back from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import random as _random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import structlog

from ledger.cosignature import WitnessKey, note_text
from ledger.cosignature_store import CosignatureStore
from ledger.errors import LedgerError, NotFoundError, SignatureError
from ledger.log import Log, SignedCheckpoint
from ledger.witness_client import (
    Conflict,
    Cosigned,
    Post,
    Refused,
    WitnessUnreachableError,
    add_checkpoint_body,
    read_reply,
)

__all__ = ["WitnessEndpoint", "WitnessStatus", "Witnessing", "newest_witnessed", "shown_url"]

_log = structlog.get_logger()

#: 409s answered in one submission before it backs off: the witness's size moved again
#: between two requests only if another log instance submits for the same origin.
_MAX_CONFLICTS = 3
#: Cosigned checkpoints tried, newest first, when stored lines no longer verify.
_OLDER_TRIED = 8


def shown_url(url: str) -> str:
    """``url`` without a user or password, for log lines: it is the operator's, and may
    carry credentials for the witness."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """A configured witness: its add-checkpoint URL and its cosignature key."""

    url: str
    key: WitnessKey


@dataclass(slots=True)
class WitnessStatus:
    """What the submitter knows of one witness (read by metrics)."""

    endpoint: WitnessEndpoint
    #: The largest tree size this log holds the witness's cosignature for (0: none).
    cosigned_size: int = 0
    #: The size the witness is believed to have last cosigned: where proofs start.
    known_size: int = 0
    #: Failed submissions by reason: unreachable, refused, bad_cosignature, conflict.
    failures: dict[str, int] = field(default_factory=dict)
    #: Whether its last submission failed: a round does not wait for it.
    failing: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class _SubmissionFailedError(LedgerError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def newest_witnessed(
    log: Log, store: CosignatureStore, keys: Sequence[WitnessKey], at_least: int
) -> SignedCheckpoint | None:
    """The newest checkpoint of ``log`` that at least ``at_least`` of ``keys`` cosigned,
    as its signed note followed by their (re-verified) cosignature lines; None if none.
    A stored line that no longer verifies is left out and logged; if that leaves a
    checkpoint short of ``at_least``, the next older one is tried (a few at most)."""
    below: int | None = None
    for _ in range(_OLDER_TRIED):
        found = await store.newest([k.vkey for k in keys], at_least, below=below)
        if found is None:
            return None
        size, lines = found
        witnessed = await _with_cosignatures(log, keys, size, lines, at_least)
        if witnessed is not None:
            return witnessed
        below = size
    return None


async def _with_cosignatures(
    log: Log, keys: Sequence[WitnessKey], size: int, lines: dict[str, str], at_least: int
) -> SignedCheckpoint | None:
    """The log's checkpoint of ``size`` with those of ``lines`` that verify on it; None
    if fewer than ``at_least`` do."""
    try:
        checkpoint = await log.checkpoint_at(size)
    except NotFoundError:
        # Cosignatures of a checkpoint this log never issued: a cosignature file from
        # another log, or kept across a restore of the ledger from an older backup.
        _log.error("witness.cosigned_checkpoint_unknown", size=size)
        return None
    text = note_text(checkpoint.note)
    good: list[str] = []
    for key in keys:
        line = lines.get(key.vkey)
        if line is None:
            continue
        try:
            key.verify(text, line)
        except SignatureError as e:
            _log.error(
                "witness.stored_cosignature_invalid", witness=key.name, size=size, error=str(e)
            )
            continue
        good.append(line + "\n")
    if len(good) < at_least:
        return None
    return SignedCheckpoint(size, checkpoint.root, checkpoint.note + "".join(good))


class Witnessing:
    """The background submitter for one log. :meth:`start`, then :meth:`wake` after each
    commit (a log listener does), :meth:`close` at the end."""

    def __init__(
        self,
        log: Log,
        store: CosignatureStore,
        witnesses: Sequence[WitnessEndpoint],
        post: Post,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self._log = log
        self._store = store
        self._post = post
        self._sleep = sleep
        self._random = random
        self._backoff = backoff
        self.witnesses = [WitnessStatus(w) for w in witnesses]
        self._tasks: list[asyncio.Task[None]] = []
        #: Bumped on every stored cosignature: invalidates :meth:`witnessed`'s answers.
        self._version = 0
        self._published: dict[int, tuple[int, SignedCheckpoint | None]] = {}
        #: The checkpoint of the current round (see the module docstring).
        self._round: SignedCheckpoint | None = None

    async def start(self) -> None:
        sizes = await self._store.cosigned_sizes()
        latest = self._log.latest_checkpoint()
        log_size = latest.size if latest is not None else 0
        for status in self.witnesses:
            size = sizes.get(status.endpoint.key.vkey, 0)
            if size > log_size:
                # Cosignatures of a tree this log does not hold (the file kept across a
                # restore of the ledger, or from another log): taken as they were, no
                # checkpoint would be sent until the log outgrew them. Start from what
                # the witness itself says (its 409).
                _log.warning(
                    "witness.stored_size_beyond_log",
                    witness=status.endpoint.key.name,
                    stored_size=size,
                    log_size=log_size,
                )
                size = 0
            status.cosigned_size = status.known_size = size
            status.wake.set()  # the log may hold checkpoints the witness has not seen
            self._tasks.append(
                asyncio.create_task(self._run(status), name=f"witness-{status.endpoint.key.name}")
            )

    def wake(self, *_: object) -> None:
        """A new checkpoint was committed (a log listener: cheap, never blocks)."""
        for status in self.witnesses:
            status.wake.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def witnessed(self, at_least: int = 1) -> SignedCheckpoint | None:
        """The newest checkpoint cosigned by at least ``at_least`` configured witnesses
        (see :func:`newest_witnessed`); cached until the next cosignature is stored."""
        version = self._version
        cached = self._published.get(at_least)
        if cached is not None and cached[0] == version:
            return cached[1]
        keys = [s.endpoint.key for s in self.witnesses]
        found = await newest_witnessed(self._log, self._store, keys, at_least)
        self._published[at_least] = (version, found)
        return found

    def _round_checkpoint(self) -> SignedCheckpoint | None:
        """The checkpoint every witness is to cosign now: the current round's, or the
        log's newest once no witness still works on the current one."""
        current = self._round
        if current is None or all(
            s.cosigned_size >= current.size or s.failing for s in self.witnesses
        ):
            self._round = self._log.latest_checkpoint()
        return self._round

    # -- one witness -------------------------------------------------------------------

    async def _run(self, status: WitnessStatus) -> None:
        failures = 0
        while True:
            await status.wake.wait()
            status.wake.clear()
            latest = self._round_checkpoint()
            if latest is None or latest.size <= status.cosigned_size:
                continue
            try:
                await self._submit(status, latest)
            except _SubmissionFailedError as e:
                failures += 1
                status.failures[e.reason] = status.failures.get(e.reason, 0) + 1
                delay = self._delay(failures)
                _log.warning(
                    "witness.submission_failed",
                    witness=status.endpoint.key.name,
                    url=shown_url(status.endpoint.url),
                    reason=e.reason,
                    error=str(e),
                    size=latest.size,
                    retry_in=round(delay, 3),
                )
                status.failing = True
                self.wake()  # the round need not wait for this witness
                await self._sleep(delay)
                status.wake.set()
            except Exception as e:  # noqa: BLE001 — this task must outlive any one failure
                # The log or the store failed (a proof read, a write), or something no one
                # foresaw (an HTTP library's error on an odd URL): not the witness's
                # fault, but retried the same way. Uncaught, it ended this witness's task
                # without a word, and it was never submitted to again.
                failures += 1
                reason = "log" if isinstance(e, LedgerError) else "unexpected"
                status.failures[reason] = status.failures.get(reason, 0) + 1
                _log.error(
                    "witness.submission_error",
                    witness=status.endpoint.key.name,
                    reason=reason,
                    error=f"{type(e).__name__}: {e}",
                )
                status.failing = True
                self.wake()
                await self._sleep(self._delay(failures))
                status.wake.set()
            else:
                failures = 0
                status.failing = False
                self.wake()  # if this witness was the round's last, the next one begins

    def _delay(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(failures-1))]."""
        base, cap = self._backoff
        return float(min(cap, base * 2.0 ** min(failures - 1, 30)) * self._random())

    async def _submit(self, status: WitnessStatus, latest: SignedCheckpoint) -> None:
        endpoint = status.endpoint
        old = status.known_size
        for _ in range(_MAX_CONFLICTS):
            if old > latest.size:
                raise _SubmissionFailedError(
                    "conflict",
                    f"the witness has cosigned size {old}, beyond the log's {latest.size}: "
                    "it saw a tree this log did not sign, or this log lost its end",
                )
            proof = (
                []
                if old in (0, latest.size)
                else await self._log.consistency_proof(old, latest.size)
            )
            try:
                answer = await self._post(
                    endpoint.url, add_checkpoint_body(old, proof, latest.note)
                )
            except WitnessUnreachableError as e:
                raise _SubmissionFailedError("unreachable", str(e)) from e
            reply = read_reply(*answer)
            if isinstance(reply, Conflict):
                _log.info(
                    "witness.size_adopted",
                    witness=endpoint.key.name,
                    sent_old=old,
                    witness_size=reply.size,
                )
                status.known_size = old = reply.size
                continue
            if isinstance(reply, Refused):
                raise _SubmissionFailedError("refused", f"HTTP {reply.status}: {reply.reason}")
            line = self._verified(endpoint.key, latest, reply)
            await self._store.add(endpoint.key.vkey, latest.size, line)
            status.known_size = status.cosigned_size = latest.size
            self._version += 1
            return
        raise _SubmissionFailedError(
            "conflict", f"the witness's size changed {_MAX_CONFLICTS} times in a row"
        )

    @staticmethod
    def _verified(key: WitnessKey, latest: SignedCheckpoint, reply: Cosigned) -> str:
        """The witness's cosignature line in ``reply``, verified on ``latest``."""
        text = note_text(latest.note)
        mine = [line for line in reply.lines if key.owns(line)]
        if not mine:
            raise _SubmissionFailedError(
                "bad_cosignature", "the answer holds no signature line by this witness"
            )
        try:
            for line in mine:
                key.verify(text, line)
        except SignatureError as e:
            raise _SubmissionFailedError("bad_cosignature", str(e)) from e
        return mine[0]
