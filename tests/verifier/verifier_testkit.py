"""Builds real signed checkpoints, leaves, receipts and bundles with the *writer*
(``ledger.note``, ``ledger.checkpoint``, ``ledger.events``), so the verifier is checked
against a second implementation. Proofs come from an RFC 6962 §2.1.1/§2.1.2 recursion
over memoised subtree hashes (fast enough for 1,000,000 leaves), cross-checked against
``ledger.merkle`` in the tests.

The claimed state is written down from what the scenario generates (not by folding),
so the replay comparison is not circular.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint
from ledger.events import Event, encode_leaf
from ledger.note import NoteSigner

ORIGIN = "maip-ledger.local/log"
TENANT = "tenant-a"
ORCH_ID = "0192f9c3-7d4e-7b1a-9c2e-3f4a5b6c7d8e"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def signer(seed: int = 7, name: str = ORIGIN) -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ulid_from_int(n: int) -> str:
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))


def uuid_from_ulid_int(n: int) -> str:
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


class Tree:
    """RFC 6962 tree over leaf hashes; proofs by the §2.1.1/§2.1.2 recursions."""

    def __init__(self, leaves: list[bytes] | None = None) -> None:
        self.leaves: list[bytes] = list(leaves or [])
        self._cache: dict[tuple[int, int], bytes] = {}

    def append(self, leaf_h: bytes) -> int:
        self.leaves.append(leaf_h)
        return len(self.leaves) - 1

    def hash(self, a: int, b: int) -> bytes:
        if b - a == 1:
            return self.leaves[a]
        if b == a:
            return hashlib.sha256(b"").digest()
        key = (a, b)
        got = self._cache.get(key)
        if got is None:
            k = _split(b - a)
            got = self._cache[key] = _node(self.hash(a, a + k), self.hash(a + k, b))
        return got

    def root(self, n: int) -> bytes:
        return self.hash(0, n)

    def inclusion(self, m: int, n: int) -> list[bytes]:
        out: list[bytes] = []
        a, b = 0, n
        while b - a > 1:
            k = _split(b - a)
            if m < a + k:
                out.append(self.hash(a + k, b))
                b = a + k
            else:
                out.append(self.hash(a, a + k))
                a = a + k
        out.reverse()
        return out

    def consistency(self, m: int, n: int) -> list[bytes]:
        if m in (0, n):
            return []
        return self._sub(m, 0, n, complete=True)

    def _sub(self, m: int, a: int, b: int, *, complete: bool) -> list[bytes]:
        n = b - a
        if m == n:
            return [] if complete else [self.hash(a, b)]
        k = _split(n)
        if m <= k:
            return [*self._sub(m, a, a + k, complete=complete), self.hash(a + k, b)]
        return [*self._sub(m - k, a + k, b, complete=False), self.hash(a, a + k)]


@dataclass
class Scenario:
    """One orchestration's events (type, payload) and the state §7.3 gives for them."""

    events: list[tuple[str, dict[str, Any]]]
    state: dict[str, Any]
    times: list[str]


def scenario(
    n_steps: int = 3,
    extra_per_step: int = 1,
    terminal: str | None = "orchestration.completed",
    orch_id: str = ORCH_ID,
) -> Scenario:
    """created, started, per step: step.started, llm.requested/llm.completed pairs (and a
    tool call when extra_per_step > 1), step.completed; then the terminal event."""
    o = orch_id
    t = [0]

    def at() -> str:
        t[0] += 1
        s, us = divmod(t[0], 1_000_000)
        return f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}.{us:06d}Z"

    events: list[tuple[str, dict[str, Any]]] = []
    times: list[str] = []

    def add(etype: str, payload: dict[str, Any]) -> str:
        events.append((etype, {"orchestration_id": o, **payload}))
        times.append(at())
        return times[-1]

    definition = {
        "steps": [{"id": f"s{i}", "agent": "a1", "action": "llm"} for i in range(n_steps)]
    }
    created_at = add(
        "orchestration.created",
        {
            "executor": "engine",
            "workflow_id": "wf-1",
            "workflow_version": 1,
            "workflow_hash": "sha256:" + "ab" * 32,
            "agent_id": None,
            "agents": ["a1"],
            "input": {"question": "What is 2+2?"},
            "parameters": {"temperature": 0},
            "model": "gpt-test",
            "max_steps": 100,
            "timeout_seconds": 60.0,
            "started_by": "user:alice",
            "request_shape": "workflow",
            "definition": definition,
        },
    )
    started_at = add("orchestration.started", {})
    steps = []
    for i in range(n_steps):
        sid = f"s{i}"
        s_at = add(
            "step.started",
            {"step_id": sid, "agent_id": "a1", "action": "llm", "attempt": 1, "inputs": {"i": i}},
        )
        for j in range(extra_per_step):
            if j % 2 == 0:
                add(
                    "llm.requested",
                    {
                        "step_id": sid,
                        "attempt": 1,
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "scripted",
                        "gen_ai.request.model": "gpt-test",
                        "messages": [{"role": "user", "content": f"step {i} call {j}"}],
                        "tools": [],
                        "parameters": {},
                    },
                )
            else:
                add(
                    "llm.completed",
                    {
                        "step_id": sid,
                        "attempt": 1,
                        "gen_ai.response.model": "gpt-test",
                        "gen_ai.response.id": f"r{i}.{j}",
                        "gen_ai.response.finish_reasons": ["stop"],
                        "gen_ai.usage.input_tokens": 12,
                        "gen_ai.usage.output_tokens": 3,
                        "message": {"role": "assistant", "content": "4"},
                        "latency_ms": 12.5,
                        "error": None,
                    },
                )
        c_at = add("step.completed", {"step_id": sid, "attempt": 1, "output": {"answer": i}})
        steps.append(
            {
                "step_id": sid,
                "agent_id": "a1",
                "action": "llm",
                "status": "completed",
                "result": {"answer": i},
                "started_at": s_at,
                "completed_at": c_at,
                "attempts": 1,
            }
        )
    status, results, reason, completed_at = "running", None, None, None
    if terminal == "orchestration.completed":
        completed_at = add(terminal, {"results": {"answer": 4}})
        status, results = "completed", {"answer": 4}
    elif terminal == "orchestration.failed":
        completed_at = add(terminal, {"reason": "step_failed", "error": "boom"})
        status, reason = "failed", "step_failed"
    state = {
        "orchestration_id": o,
        "id": "maip-orch:" + ulid_from_int(int(o.replace("-", ""), 16)),
        "tenant_id": TENANT,
        "workflow_id": "wf-1",
        "workflow_version": 1,
        "agent_id": None,
        "agents": ["a1"],
        "parameters": {"temperature": 0},
        "input": {"question": "What is 2+2?"},
        "model": "gpt-test",
        "executor": "engine",
        "status": status,
        "reason": reason,
        "steps": steps,
        "results": results,
        "receipts": [],  # filled in by build_bundle, from the event ids it assigns
        "created_at": created_at,
        "started_at": started_at,
        "completed_at": completed_at,
    }
    return Scenario(events, state, times)


@dataclass
class Bundle:
    """A bundle as a list of line dicts, so tests can tamper with it, plus its parts."""

    lines: list[dict[str, Any]]
    vkey: str
    leaves: list[bytes]
    receipts: list[dict[str, Any]] = field(default_factory=list)  # full §4 receipts
    tree: Tree = field(default_factory=Tree)

    def encode(self) -> bytes:
        return b"".join(msgspec.json.encode(line) + b"\n" for line in self.lines)

    def event_line_numbers(self) -> list[int]:
        return [i for i, line in enumerate(self.lines) if line["kind"] == "event"]


def build_bundle(
    sc: Scenario,
    *,
    batch: int = 4,
    filler_every: int = 2,
    key: NoteSigner | None = None,
    tenant: str = TENANT,
    stream: str = ORCH_ID,
    rewrite_leaf: Callable[[int, bytes], bytes] | None = None,
) -> Bundle:
    """Append the scenario's events to a log (with other streams' leaves interleaved),
    signing a checkpoint after every ``batch`` of the scenario's events.

    ``rewrite_leaf(seq, leaf)``, if given, replaces each writer-made leaf before it is
    appended (a log that stores other bytes than the writer makes)."""
    key = key or signer()
    tree = Tree()
    leaves: list[bytes] = []
    placed: list[tuple[int, int]] = []  # (leaf index, batch checkpoint size)
    batch_sizes: list[int] = []
    pending: list[int] = []
    receipt_ids: list[str] = []
    for seq, (etype, payload) in enumerate(sc.events, start=1):
        for f in range(filler_every):
            other = encode_leaf(
                Event(
                    1,
                    ulid_from_int((1 << 100) + seq * 8 + f),
                    "tenant-b",
                    "agent:x",
                    seq,
                    "agent.registered",
                    "2026-01-01T00:00:00.000000Z",
                    {"n": seq},
                )
            )
            tree.append(leaf_hash(other))
        ulid_int = (0x0192F9C37D4E << 80) | (seq << 16) | 0xBEEF
        event = Event(
            1, ulid_from_int(ulid_int), tenant, stream, seq, etype, sc.times[seq - 1], payload
        )
        leaf = encode_leaf(event)
        if rewrite_leaf is not None:
            leaf = rewrite_leaf(seq, leaf)
        leaves.append(leaf)
        receipt_ids.append(uuid_from_ulid_int(ulid_int))
        pending.append(tree.append(leaf_hash(leaf)))
        if len(pending) == batch or seq == len(sc.events):
            size = len(tree.leaves)
            batch_sizes.append(size)
            placed.extend((i, size) for i in pending)
            pending = []
    final = len(tree.leaves)
    notes = {s: Checkpoint(key.name, s, tree.root(s)).sign(key) for s in {*batch_sizes, final}}
    state = dict(sc.state)
    state["receipts"] = receipt_ids
    lines: list[dict[str, Any]] = [
        {
            "kind": "header",
            "format": "maip-bundle/v1",
            "origin": key.name,
            "vkey": key.verifier.vkey,
            "tenant_id": tenant,
            "orchestration_id": stream,
            "event_count": len(leaves),
            "checkpoint": notes[final],
        }
    ]
    emitted: set[int] = set()
    receipts = []
    for n, (leaf, (index, size)) in enumerate(zip(leaves, placed, strict=True)):
        if size not in emitted:
            emitted.add(size)
            lines.append(
                {
                    "kind": "checkpoint",
                    "checkpoint": notes[size],
                    "consistency_proof": [b64(h) for h in tree.consistency(size, final)],
                }
            )
        lh = leaf_hash(leaf)
        receipt = {
            "receipt_id": receipt_ids[n],
            "event_id": msgspec.json.decode(leaf)["event_id"],
            "leaf_index": index,
            "leaf_hash": b64(lh),
            "tree_size": size,
            "inclusion_proof": [b64(h) for h in tree.inclusion(index, size)],
        }
        receipts.append({**receipt, "checkpoint": notes[size]})
        lines.append(
            {
                "kind": "event",
                "leaf_index": index,
                "leaf": b64(leaf),
                "inclusion_proof": [b64(h) for h in tree.inclusion(index, final)],
                "receipt": receipt,
            }
        )
    lines.append({"kind": "state", "state": state})
    return Bundle(lines, key.verifier.vkey, leaves, receipts, tree)


def iter_lines(data: bytes) -> Iterator[bytes]:
    yield from data.splitlines(keepends=True)
