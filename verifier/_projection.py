"""The orchestration projection, ``specs/log-format.md`` §7.3, and the claimed-state diff.

State is a pure fold over one orchestration's events in ``stream_seq`` order. The fold
is strict about the payload fields §7.3 reads (each must be present, with its type) and
ignores the others: the payload views below do not forbid unknown fields because they
are *partial* views; the writer validates full payloads, and any byte of a payload is
already bound by the leaf hash.

Internally the fold accumulates in place so that replaying 1,000,000 events is linear;
``receipts`` (one id per event) is kept as a count, a running SHA-256 and the first
:data:`RECEIPTS_KEPT` ids, so memory does not grow with the stream.
"""

from __future__ import annotations

import hashlib
import reprlib
from typing import Any

import msgspec

from verifier._errors import MalformedInput, ReplayInvalid
from verifier._ids import orchestration_display_id
from verifier._leaf import is_canonical

__all__ = [
    "FOLDED_TYPES",
    "RECEIPTS_BATCH",
    "RECEIPTS_KEPT",
    "TERMINAL_TYPES",
    "Projection",
    "ReceiptsDigest",
    "ReceiptsMatcher",
    "diff_state",
]

TERMINAL_TYPES = frozenset(
    {"orchestration.completed", "orchestration.failed", "orchestration.cancelled"}
)
RECEIPTS_KEPT = 4096
#: How many receipt ids :class:`ReceiptsDigest` hashes at once.
RECEIPTS_BATCH = 4096
#: Event types whose payload the fold reads; all others only append their receipt id.
FOLDED_TYPES = frozenset(
    {
        "orchestration.created",
        "orchestration.started",
        "step.started",
        "step.completed",
        "step.failed",
        "step.skipped",
        *TERMINAL_TYPES,
    }
)
_UNSET: Any = msgspec.UNSET


class _Created(msgspec.Struct, frozen=True):
    orchestration_id: str
    executor: str
    workflow_id: str | None
    workflow_version: int | None
    agent_id: str | None
    agents: list[str]
    input: Any
    parameters: dict[str, Any]
    model: str | None
    # §7.2: the workflow definition (null without a workflow); §7.3 step.skipped reads it.
    definition: dict[str, Any] | None


class _StepStarted(msgspec.Struct, frozen=True):
    step_id: str
    agent_id: str | None
    action: str
    attempt: int


class _StepCompleted(msgspec.Struct, frozen=True):
    step_id: str
    output: Any


class _StepFailed(msgspec.Struct, frozen=True):
    step_id: str
    error: Any
    retrying: bool


class _StepSkipped(msgspec.Struct, frozen=True):
    step_id: str


class _Completed(msgspec.Struct, frozen=True):
    results: Any


class _Reason(msgspec.Struct, frozen=True):
    reason: str


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "orchestration.created": msgspec.json.Decoder(_Created),
    "step.started": msgspec.json.Decoder(_StepStarted),
    "step.completed": msgspec.json.Decoder(_StepCompleted),
    "step.failed": msgspec.json.Decoder(_StepFailed),
    "step.skipped": msgspec.json.Decoder(_StepSkipped),
    "orchestration.completed": msgspec.json.Decoder(_Completed),
    "orchestration.failed": msgspec.json.Decoder(_Reason),
    "orchestration.cancelled": msgspec.json.Decoder(_Reason),
}


class ReceiptsDigest:
    """The replayed ``receipts`` list, in bounded memory: its length, its first
    :data:`RECEIPTS_KEPT` ids and a SHA-256 of every id followed by a newline.

    Ids are hashed in batches (:meth:`flush`): a hash update per id took a noticeable
    share of the per-event time of a large bundle. ``pending`` holds the ids not
    hashed yet; the bundle verifier appends to it directly.
    """

    __slots__ = ("_flushed", "_hasher", "first", "pending")

    def __init__(self) -> None:
        self._flushed = 0
        self._hasher = hashlib.sha256()
        self.first: list[str] = []
        self.pending: list[str] = []

    def add(self, receipt_id: str) -> None:
        pending = self.pending
        pending.append(receipt_id)
        if len(pending) >= RECEIPTS_BATCH:
            self.flush()

    def flush(self) -> None:
        """Hash the pending ids (and keep the first ones)."""
        pending = self.pending
        if not pending:
            return
        room = RECEIPTS_KEPT - len(self.first)
        if room > 0:
            self.first.extend(pending[:room])
        self._hasher.update(("\n".join(pending) + "\n").encode())
        self._flushed += len(pending)
        pending.clear()

    @property
    def count(self) -> int:
        return self._flushed + len(self.pending)

    def digest(self) -> bytes:
        self.flush()
        return self._hasher.digest()


class ReceiptsMatcher:
    """Compares a claimed ``receipts`` list, fed item by item, with a :class:`ReceiptsDigest`."""

    __slots__ = ("_count", "_first_diff", "_hasher", "_replay", "_wrong_type")

    def __init__(self, replay: ReceiptsDigest) -> None:
        replay.flush()
        self._replay = replay
        self._count = 0
        self._hasher = hashlib.sha256()
        self._first_diff: str | None = None
        self._wrong_type: str | None = None

    def feed(self, item: object) -> None:
        i = self._count
        self._count += 1
        if not isinstance(item, str):
            if self._wrong_type is None:
                self._wrong_type = f"state.receipts[{i}]: claimed {_show(item)}, replay a string"
            return
        self._hasher.update(item.encode("utf-8", "surrogatepass") + b"\n")
        if self._first_diff is None and i < len(self._replay.first):
            expected = self._replay.first[i]
            if item != expected:
                self._first_diff = (
                    f"state.receipts[{i}]: claimed {_show(item)}, replay {_show(expected)}"
                )

    def feed_plain(self, items: list[bytes]) -> None:
        """Feed JSON string items given as their raw bytes (no escapes: the bytes are the
        string's UTF-8); equivalent to :meth:`feed` on each decoded item."""
        start = self._count
        kept = len(self._replay.first)
        if start < kept:
            for item in items[: kept - start]:
                self.feed(item.decode("utf-8", "surrogateescape"))
            items = items[kept - start :]
            if not items:
                return
        self._count += len(items)
        self._hasher.update(b"\n".join(items) + b"\n")

    def differences(self) -> list[str]:
        replay = self._replay
        if self._wrong_type is not None:
            return [self._wrong_type]
        if self._first_diff is not None:
            return [self._first_diff]
        if self._count != replay.count:
            return [f"state.receipts: claimed {self._count} ids, replay {replay.count}"]
        if self._hasher.digest() != replay.digest():
            return [
                f"state.receipts: claimed and replayed lists of {replay.count} ids differ "
                f"after position {RECEIPTS_KEPT}"
            ]
        return []


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 4, 60, 60
_MAX_DIFF_DEPTH = 64


def _show(value: object) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Projection:
    """§7.3 fold. Feed events with :meth:`apply` in ``stream_seq`` order."""

    __slots__ = ("_definition", "_state", "_steps", "_stream_id", "receipts")

    def __init__(self, stream_id: str | None = None) -> None:
        """``stream_id``: the orchestration's stream, whose id ``orchestration.created``
        must name (§7: the stream id is the orchestration's id); None checks nothing."""
        self._stream_id = stream_id
        self._state: dict[str, Any] | None = None
        self._steps: dict[str, dict[str, Any]] = {}
        self._definition: dict[str, Any] | None = None
        self.receipts = ReceiptsDigest()

    def apply(
        self,
        seq: int,
        event_type: str,
        *,
        occurred_at: str,
        tenant_id: str,
        payload: bytes,
        receipt_id: str,
    ) -> None:
        """Fold one event. Raises :class:`ReplayInvalid` if it cannot be folded."""
        if event_type not in FOLDED_TYPES:
            self.apply_detail(seq, event_type, receipt_id)
            return
        decoder = _DECODERS.get(event_type)
        p: Any = None
        if decoder is not None:
            try:
                p = decoder.decode(payload)
            except msgspec.DecodeError as e:
                raise ReplayInvalid(
                    f"event {seq} ({event_type}): payload lacks what §7.3 reads: {e}"
                ) from e
        # What the fold reads must be what every JSON reader reads (§2): a payload with a
        # member twice would fold one way here and read another way elsewhere.
        if not is_canonical(payload):
            raise MalformedInput(
                f"event {seq} ({event_type}): the payload is not the canonical encoding "
                "(§2: sorted keys, each once, no whitespace)"
            )
        state = self._state
        if state is None:
            # The stream must begin with orchestration.created.
            if not isinstance(p, _Created):
                raise ReplayInvalid(
                    f"event {seq} ({event_type}) comes before orchestration.created"
                )
            if self._stream_id is not None and p.orchestration_id != self._stream_id:
                raise ReplayInvalid(
                    f"event {seq} (orchestration.created) is for orchestration "
                    f"{p.orchestration_id[:40]!r}, not its stream's {self._stream_id[:40]!r}"
                )
            self._definition = p.definition
            self._state = {
                "orchestration_id": p.orchestration_id,
                "id": orchestration_display_id(p.orchestration_id),
                "tenant_id": tenant_id,
                "workflow_id": p.workflow_id,
                "workflow_version": p.workflow_version,
                "agent_id": p.agent_id,
                "agents": p.agents,
                "parameters": p.parameters,
                "input": p.input,
                "model": p.model,
                "executor": p.executor,
                "status": "pending",
                "reason": None,
                "results": None,
                "created_at": occurred_at,
                "started_at": None,
                "completed_at": None,
            }
            self.receipts.add(receipt_id)
            return
        if isinstance(p, _Created):
            raise ReplayInvalid(f"event {seq}: a second orchestration.created")
        steps = self._steps
        if event_type == "orchestration.started":
            state["status"] = "running"
            state["started_at"] = occurred_at
        elif isinstance(p, _StepStarted):
            # Append, or on a retry replace, the step.
            steps[p.step_id] = {
                "step_id": p.step_id,
                "agent_id": p.agent_id,
                "action": p.action,
                "status": "running",
                "result": None,
                "started_at": occurred_at,
                "completed_at": None,
                "attempts": p.attempt,
            }
        elif isinstance(p, _StepCompleted | _StepFailed):
            step = steps.get(p.step_id)
            if step is None:
                raise ReplayInvalid(
                    f"event {seq} ({event_type}) is for step {p.step_id!r}, which never started"
                )
            if isinstance(p, _StepCompleted):
                step.update(status="completed", result=p.output, completed_at=occurred_at)
            elif not p.retrying:
                step.update(status="failed", result={"error": p.error}, completed_at=occurred_at)
        elif isinstance(p, _StepSkipped):
            step = steps.get(p.step_id)
            if step is None:
                d = self._definition_step(p.step_id)
                step = steps[p.step_id] = {
                    "step_id": p.step_id,
                    "agent_id": d.get("agent"),
                    "action": d.get("action"),
                    "status": "skipped",
                    "result": None,
                    "started_at": None,
                    "completed_at": None,
                    "attempts": 0,
                }
            step.update(status="skipped", completed_at=occurred_at)
        elif isinstance(p, _Completed):
            state.update(status="completed", results=p.results, completed_at=occurred_at)
        elif isinstance(p, _Reason):
            status = "failed" if event_type == "orchestration.failed" else "cancelled"
            state.update(status=status, reason=p.reason, completed_at=occurred_at)
        self.receipts.add(receipt_id)

    def apply_detail(self, seq: int, event_type: str, receipt_id: str) -> None:
        """Fold an event of a type outside :data:`FOLDED_TYPES` (LLM, tool, decision, or
        unknown): audit detail that changes no projection field but its receipts."""
        if self._state is None:
            raise ReplayInvalid(f"event {seq} ({event_type}) comes before orchestration.created")
        self.receipts.add(receipt_id)

    def _definition_step(self, step_id: str) -> dict[str, Any]:
        definition = self._definition
        steps = definition.get("steps") if definition else None
        if isinstance(steps, list):
            for s in steps:
                if isinstance(s, dict) and s.get("id") == step_id:
                    return s
        return {}

    @property
    def created(self) -> bool:
        """Whether ``orchestration.created`` has been folded."""
        return self._state is not None

    @property
    def status(self) -> str | None:
        return None if self._state is None else str(self._state["status"])

    def state(self) -> dict[str, Any] | None:
        """The replayed §7.3 state, except ``receipts`` (see :attr:`receipts`)."""
        if self._state is None:
            return None
        return {**self._state, "steps": [dict(s) for s in self._steps.values()]}


_FIELD_ORDER = (
    "orchestration_id",
    "id",
    "tenant_id",
    "workflow_id",
    "workflow_version",
    "agent_id",
    "agents",
    "parameters",
    "input",
    "model",
    "executor",
    "status",
    "reason",
    "steps",
    "results",
    "receipts",
    "created_at",
    "started_at",
    "completed_at",
)


def _same_scalar(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def diff_state(claimed: Any, replay: Any, path: str = "state") -> list[str]:
    """Field-by-field differences ``path: claimed X, replay Y`` (``receipts`` excluded)."""
    out: list[str] = []
    _diff(claimed, replay, path, out, 0)
    return out


def _diff(claimed: Any, replay: Any, path: str, out: list[str], depth: int) -> None:
    if depth > _MAX_DIFF_DEPTH:
        # Deeply nested values are compared whole, never by unbounded recursion.
        try:
            same = type(claimed) is type(replay) and claimed == replay
        except RecursionError:
            same = False
        if not same:
            out.append(f"{path}: claimed and replayed values differ (or nest too deep to compare)")
        return
    if isinstance(replay, dict) and isinstance(claimed, dict):
        order = {k: i for i, k in enumerate(_FIELD_ORDER)}
        keys = sorted(set(replay) | set(claimed), key=lambda k: (order.get(k, 99), str(k)))
        for key in keys:
            sub = f"{path}.{key}"
            if path == "state" and key == "receipts":
                continue
            if key not in claimed:
                out.append(f"{sub}: missing from the claimed state, replay {_show(replay[key])}")
            elif key not in replay:
                out.append(f"{sub}: claimed {_show(claimed[key])}, not in the replayed state")
            else:
                _diff(claimed[key], replay[key], sub, out, depth + 1)
        return
    if isinstance(replay, list) and isinstance(claimed, list):
        for i in range(max(len(replay), len(claimed))):
            sub = f"{path}[{i}]"
            if i >= len(claimed):
                out.append(f"{sub}: missing from the claimed state, replay {_show(replay[i])}")
            elif i >= len(replay):
                out.append(f"{sub}: claimed {_show(claimed[i])}, not in the replayed state")
            else:
                _diff(claimed[i], replay[i], sub, out, depth + 1)
        return
    if (
        isinstance(replay, dict | list)
        or isinstance(claimed, dict | list)
        or not _same_scalar(claimed, replay)
    ):
        out.append(f"{path}: claimed {_show(claimed)}, replay {_show(replay)}")
