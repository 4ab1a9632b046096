"""Benchmark: ``verify_bundle`` throughput and memory (issue 5).

Builds one orchestration's bundle of 100,000 and 1,000,000 events (quick mode: 10,000)
with the ledger's writer functions (``ledger.events.encode_leaf``, ``ledger.checkpoint``,
``ledger.note``), receipts issued per 1,000-event batch, writes it to a temporary file
(2.5 GB for 1,000,000 events; deleted afterwards) and verifies it in a fresh subprocess
that reads it line by line, as ``maip-verify bundle`` does. The rate
is events per second of the child's CPU time (one core; the machine is shared), and the
peak RSS is the child's own high-water mark (``VmHWM``; ``ru_maxrss`` would include the
parent's, since Linux keeps it across ``execve``).

The builder is O(n): subtree hashes per level are computed once, and consecutive leaves'
proofs are updated only at the levels whose sibling changes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint
from ledger.events import Event, encode_leaf
from ledger.ids import ulid_str, uuid_str
from ledger.note import NoteSigner

ORIGIN = "maip-ledger.local/log"
TENANT = "tenant-bench"
ORCH_ID = "0192f9c3-7d4e-7b1a-9c2e-3f4a5b6c7d8e"
STEPS = 64
BATCH = 1000

_CHILD = """
import json, sys, time
from verifier import verify_bundle
cpu0, wall0 = time.process_time(), time.perf_counter()
with open(sys.argv[2], "rb") as source:
    report = verify_bundle(source, sys.argv[1])
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve from the (large) parent.
with open("/proc/self/status") as status:
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"events": report.event_count, "checkpoints": report.checkpoints_verified,
                  "cpu": cpu, "wall": wall, "rss_kib": rss}))
"""


def _ulid(n: int) -> str:
    return ulid_str(n.to_bytes(16, "big"))


def _uuid(n: int) -> str:
    return uuid_str(n.to_bytes(16, "big"))


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def _at(seq: int) -> str:
    s, us = divmod(seq, 1_000_000)
    return f"2026-01-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{us:06d}Z"


def _events(n: int) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """created, started, STEPS steps of (started, LLM calls..., completed), completed."""
    o = ORCH_ID
    yield (
        1,
        "orchestration.created",
        {
            "orchestration_id": o,
            "executor": "engine",
            "workflow_id": "wf-bench",
            "workflow_version": 1,
            "workflow_hash": "sha256:" + "ab" * 32,
            "agent_id": None,
            "agents": ["a1"],
            "input": {"q": "bench"},
            "parameters": {},
            "model": "m",
            "max_steps": n,
            "timeout_seconds": 3600.0,
            "started_by": "bench",
            "request_shape": "workflow",
            "definition": None,
        },
    )
    yield 2, "orchestration.started", {"orchestration_id": o}
    seq = 2
    per_step = (n - 3) // STEPS
    for i in range(STEPS):
        count = per_step if i < STEPS - 1 else n - 3 - per_step * (STEPS - 1)
        sid = f"s{i}"
        seq += 1
        yield (
            seq,
            "step.started",
            {
                "orchestration_id": o,
                "step_id": sid,
                "agent_id": "a1",
                "action": "llm",
                "attempt": 1,
                "inputs": {},
            },
        )
        for j in range(count - 2):
            seq += 1
            if j % 2 == 0:
                yield (
                    seq,
                    "llm.requested",
                    {
                        "orchestration_id": o,
                        "step_id": sid,
                        "attempt": 1,
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "scripted",
                        "gen_ai.request.model": "m",
                        "parameters": {},
                        "tools": [],
                        "messages": [{"role": "user", "content": f"call in {sid}"}],
                    },
                )
            else:
                yield (
                    seq,
                    "llm.completed",
                    {
                        "orchestration_id": o,
                        "step_id": sid,
                        "attempt": 1,
                        "gen_ai.response.model": "m",
                        "gen_ai.response.id": f"r-{sid}",
                        "gen_ai.response.finish_reasons": ["stop"],
                        "gen_ai.usage.input_tokens": 9,
                        "gen_ai.usage.output_tokens": 2,
                        "latency_ms": 1.5,
                        "error": None,
                        "message": {"role": "assistant", "content": "ok"},
                    },
                )
        seq += 1
        yield (
            seq,
            "step.completed",
            {"orchestration_id": o, "step_id": sid, "attempt": 1, "output": {"i": i}},
        )
    yield seq + 1, "orchestration.completed", {"orchestration_id": o, "results": {"ok": True}}


_SEQ_MARK = 987654321987654321
_ID_MARK = "E" * 26
_AT_MARK = "T" * 27


def _event(ulid: int, seq: int, etype: str, payload: dict[str, Any]) -> Event:
    return Event(1, _ulid(ulid), TENANT, ORCH_ID, seq, etype, _at(seq), payload)


def _leaves(n: int) -> Iterator[tuple[int, str, bytes]]:
    """(ULID as an int, type, leaf bytes) per event. The many LLM events of a step share their
    payload, so their leaves are ``encode_leaf`` of a template with the event id, time
    and sequence spliced in (keys are sorted, so the bytes are exactly encode_leaf's;
    spot-checked against it below)."""
    templates: dict[tuple[str, str], list[bytes]] = {}
    for seq, etype, payload in _events(n):
        ulid = (0x0192F9C37D4E << 80) | seq
        if not etype.startswith("llm."):
            yield ulid, etype, encode_leaf(_event(ulid, seq, etype, payload))
            continue
        key = (etype, payload["step_id"])
        parts = templates.get(key)
        check = parts is None or seq % 10_007 == 0
        if parts is None:
            # Canonical key order puts event_id, then occurred_at, then stream_seq.
            mark = Event(1, _ID_MARK, TENANT, ORCH_ID, _SEQ_MARK, etype, _AT_MARK, payload)
            head, rest = encode_leaf(mark).split(_ID_MARK.encode())
            mid, rest = rest.split(_AT_MARK.encode())
            before, after = rest.split(b"%d" % _SEQ_MARK)
            parts = templates[key] = [head, mid, before, after]
        leaf = b"%s%s%s%s%s%d%s" % (
            parts[0],
            _ulid(ulid).encode(),
            parts[1],
            _at(seq).encode(),
            parts[2],
            seq,
            parts[3],
        )
        if check:
            assert leaf == encode_leaf(_event(ulid, seq, etype, payload)), seq
        yield ulid, etype, leaf


class _Levels:
    """Complete-subtree hashes per level (and their base64) for one RFC 6962 tree."""

    def __init__(self, leaf_hashes: list[bytes]) -> None:
        self.levels = [leaf_hashes]
        while len(self.levels[-1]) > 1:
            lv = self.levels[-1]
            self.levels.append([_node(lv[i], lv[i + 1]) for i in range(0, len(lv) - 1, 2)])
        self.b64 = [[base64.b64encode(h).decode() for h in lv] for lv in self.levels]
        self._range: dict[tuple[int, int], bytes] = {}

    def hash(self, a: int, b: int) -> bytes:
        n = b - a
        if n & (n - 1) == 0 and a % n == 0:
            return self.levels[n.bit_length() - 1][a // n]
        key = (a, b)
        got = self._range.get(key)
        if got is None:
            k = 1 << ((n - 1).bit_length() - 1)
            got = self._range[key] = _node(self.hash(a, a + k), self.hash(a + k, b))
        return got

    def element(self, level: int, m: int, n: int) -> str | None:
        """PATH(m, D[n])'s element at ``level``: the sibling subtree, if it exists."""
        sib = (m >> level) ^ 1
        start = sib << level
        if start >= n:
            return None
        if start + (1 << level) <= n:
            return self.b64[level][sib]
        return base64.b64encode(self.hash(start, n)).decode()

    def consistency(self, m: int, n: int) -> list[str]:
        def sub(m: int, a: int, b: int, complete: bool) -> list[bytes]:
            if m == b - a:
                return [] if complete else [self.hash(a, b)]
            k = 1 << ((b - a - 1).bit_length() - 1)
            if m <= k:
                return [*sub(m, a, a + k, complete), self.hash(a + k, b)]
            return [*sub(m - k, a + k, b, False), self.hash(a, a + k)]

        proof = [] if m in (0, n) else sub(m, 0, n, True)
        return [base64.b64encode(h).decode() for h in proof]


class _Path:
    """PATH(m, D[n]) for increasing m, updating only the levels whose sibling changed."""

    def __init__(self, levels: _Levels, n: int) -> None:
        self.levels, self.n, self.m = levels, n, -1
        self.depth = (n - 1).bit_length()
        self.cur: list[str | None] = [None] * self.depth

    def proof(self, m: int) -> str:
        changed = self.depth if self.m < 0 else min(self.depth, (m ^ self.m).bit_length())
        for level in range(changed):
            self.cur[level] = self.levels.element(level, m, self.n)
        self.m = m
        return '"' + '","'.join(filter(None, self.cur)) + '"' if self.n > 1 else ""


def _signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x05" * 32))


def build(f: IO[bytes], n: int) -> None:
    """Write an n-event bundle to ``f`` (signed by :func:`_signer`)."""
    key = _signer()
    leaves = list(_leaves(n))
    levels = _Levels([hashlib.sha256(b"\x00" + leaf).digest() for _, _, leaf in leaves])
    sizes = [min(n, i + BATCH) for i in range(0, n, BATCH)]
    notes = {s: Checkpoint(ORIGIN, s, levels.hash(0, s)).sign(key) for s in sizes}
    header = {
        "kind": "header",
        "format": "maip-bundle/v1",
        "origin": ORIGIN,
        "vkey": key.verifier.vkey,
        "tenant_id": TENANT,
        "orchestration_id": ORCH_ID,
        "event_count": n,
        "checkpoint": notes[n],
    }
    head_path = _Path(levels, n)
    receipt_ids: list[str] = []
    steps = []
    f.write(msgspec.json.encode(header) + b"\n")
    batch_path: _Path | None = None
    for m, (ulid, etype, leaf) in enumerate(leaves):
        size = min(n, (m // BATCH + 1) * BATCH)
        if batch_path is None or batch_path.n != size:
            batch_path = _Path(levels, size)
            line = {
                "kind": "checkpoint",
                "checkpoint": notes[size],
                "consistency_proof": levels.consistency(size, n),
            }
            f.write(msgspec.json.encode(line) + b"\n")
        rid = _uuid(ulid)
        receipt_ids.append(rid)
        f.write(
            (
                f'{{"kind":"event","leaf_index":{m},"leaf":"{base64.b64encode(leaf).decode()}",'
                f'"inclusion_proof":[{head_path.proof(m)}],"receipt":{{"receipt_id":"{rid}",'
                f'"event_id":"{_ulid(ulid)}","leaf_index":{m},'
                f'"leaf_hash":"{levels.b64[0][m]}","tree_size":{size},'
                f'"inclusion_proof":[{batch_path.proof(m)}]}}}}\n'
            ).encode()
        )
        if etype == "step.completed":
            i = len(steps)
            steps.append(
                {
                    "step_id": f"s{i}",
                    "agent_id": "a1",
                    "action": "llm",
                    "status": "completed",
                    "result": {"i": i},
                    "started_at": None,
                    "completed_at": _at(m + 1),
                    "attempts": 1,
                }
            )
        elif etype == "step.started":
            started = _at(m + 1)
        if etype == "step.completed":
            steps[-1]["started_at"] = started
    state = {
        "orchestration_id": ORCH_ID,
        "id": "maip-orch:" + _ulid(int(ORCH_ID.replace("-", ""), 16)),
        "tenant_id": TENANT,
        "workflow_id": "wf-bench",
        "workflow_version": 1,
        "agent_id": None,
        "agents": ["a1"],
        "parameters": {},
        "input": {"q": "bench"},
        "model": "m",
        "executor": "engine",
        "status": "completed",
        "reason": None,
        "steps": steps,
        "results": {"ok": True},
        "receipts": receipt_ids,
        "created_at": _at(1),
        "started_at": _at(2),
        "completed_at": _at(n),
    }
    f.write(msgspec.json.encode({"kind": "state", "state": state}) + b"\n")


def _build_and_verify(n: int) -> tuple[dict[str, Any], int, float]:
    """Build an n-event bundle into a temporary file and verify it in a fresh child;
    returns the child's figures, the bundle size and the build time."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maip-bench-") as tmp:
        path = Path(tmp) / "bundle.jsonl"
        with path.open("wb", buffering=1 << 20) as f:
            build(f, n)
        built = time.perf_counter() - t0
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, _signer().verifier.vkey, str(path)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"verification failed: {done.stderr.decode().strip()[-300:]}")
        return json.loads(done.stdout), path.stat().st_size, built


def run(quick: bool) -> None:
    sizes = [10_000] if quick else [100_000, 1_000_000]
    for n in sizes:
        result, size, built = _build_and_verify(n)
        assert result["events"] == n
        rate = n / result["cpu"]
        rss = result["rss_kib"] / 1024
        print(
            f"verifier: {n:,}-event bundle verified at {rate:,.0f} events per CPU second "
            f"({n / result['wall']:,.0f} per wall-clock second), peak RSS {rss:.1f} MiB"
        )
        print(
            f"  ({size / 2**20:,.0f} MiB bundle of one orchestration at consecutive leaves, "
            f"{result['checkpoints']:,} signed checkpoints (one per {BATCH:,} events), "
            f"built in {built:.1f} s; verified in {result['cpu']:.1f} s CPU, "
            f"{result['wall']:.1f} s wall)"
        )


if __name__ == "__main__":
    run("--quick" in sys.argv[1:])
