"""Full integrity check of a stored log (``maip-ledger fsck``).

Unlike the O(log n) startup check, this reads everything:

1. every stored event's bytes are re-hashed (RFC 6962 leaf hash) and decoded; the
   columns it is found by (event id, tenant, stream, sequence, type) must match the
   leaf, leaf indexes must run 0, 1, 2, … and each stream's sequence 1, 2, 3, …;
2. the tree is rebuilt from those leaf hashes, and every stored interior hash must
   equal the rebuilt one;
3. every stored checkpoint must verify under the log's key and its root must equal
   the rebuilt tree's root at its size — so each checkpoint is consistent with the
   next, and the stored tree matches the last one;
4. the lookup structures the backend derives from the events (the stream index) must
   agree with them (:meth:`~ledger.store.EventStore.index_problems`).

The first bad leaf index is reported; a tampered byte anywhere in an event, a tree
hash or a checkpoint is found, and so is an index row that points at the wrong event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from ledger import tlog
from ledger.checkpoint import open_checkpoint
from ledger.errors import LedgerError
from ledger.events import decode_leaf_envelope
from ledger.ids import ulid_str
from ledger.merkle import leaf_hash
from ledger.note import NoteVerifier
from ledger.store import CheckpointRecord, EventStore, HashRow

__all__ = ["FsckReport", "fsck"]

_CHUNK = 5000


class FsckReport(msgspec.Struct, frozen=True):
    events: int
    checkpoints: int
    tree_size: int
    first_bad_index: int | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


async def _hash_rows(store: EventStore) -> AsyncIterator[HashRow]:
    index = 0
    while True:
        rows = await store.hash_rows([index])
        row = next((r for r in rows if r.start <= index < r.end), None)
        if row is None:
            return
        yield row
        index = row.end


async def fsck(store: EventStore, verifier: NoteVerifier, *, max_problems: int = 20) -> FsckReport:
    """Check ``store`` completely; the store must already be open (read-only is fine)."""
    problems: list[str] = []
    first_bad: int | None = None

    def bad(message: str, index: int | None) -> None:
        nonlocal first_bad
        if index is not None and (first_bad is None or index < first_bad):
            first_bad = index
        if len(problems) < max_problems:
            problems.append(message)

    checkpoints: list[CheckpointRecord] = []
    after = 0
    while batch := await store.checkpoints(after, 10_000):
        checkpoints.extend(batch)
        after = batch[-1].tree_size
    pending_checkpoints = iter(checkpoints)
    next_checkpoint = next(pending_checkpoints, None)

    rows = _hash_rows(store)
    stored: bytes = b""
    stored_start = 0

    async def stored_hashes(start: int, count: int) -> bytes | None:
        nonlocal stored, stored_start
        out = b""
        while count:
            offset = start - stored_start
            if 0 <= offset < len(stored) // 32:
                take = min(count, len(stored) // 32 - offset)
                out += stored[offset * 32 : (offset + take) * 32]
                start += take
                count -= take
                continue
            row = await anext(rows, None)
            if row is None:
                return None
            stored, stored_start = row.hashes, row.start
        return out

    frontier = tlog.Frontier()
    heads: dict[tuple[str, str], int] = {}
    index = 0
    while chunk := await store.read_log(index, _CHUNK):
        for row in chunk:
            if row.leaf_index != index:
                bad(f"leaf index {index} is missing (next stored is {row.leaf_index})", index)
                return FsckReport(index, len(checkpoints), frontier.size, first_bad, problems)
            # 1. Re-hash and decode the stored bytes; the columns must agree with them.
            h = leaf_hash(row.leaf)
            try:
                env = decode_leaf_envelope(row.leaf)
            except LedgerError as e:
                bad(f"leaf {index} does not decode: {e}", index)
            else:
                columns = (
                    ulid_str(row.event_id),
                    row.tenant_id,
                    row.stream_id,
                    row.stream_seq,
                    row.type,
                )
                leaf = (env.event_id, env.tenant_id, env.stream_id, env.stream_seq, env.type)
                if columns != leaf:
                    bad(f"leaf {index}'s stored columns {columns} disagree with its bytes", index)
                key = (env.tenant_id, env.stream_id)
                if env.stream_seq != heads.get(key, 0) + 1:
                    bad(
                        f"leaf {index}: stream {env.stream_id!r} jumps from seq "
                        f"{heads.get(key, 0)} to {env.stream_seq}",
                        index,
                    )
                heads[key] = env.stream_seq
            # 2. The rebuilt stored hashes must equal the stored ones.
            start = tlog.stored_hash_count(index)
            rebuilt = b"".join(frontier.append(h))
            on_disk = await stored_hashes(start, len(rebuilt) // 32)
            if on_disk is None:
                bad(f"tree hashes for leaf {index} are missing", index)
            elif on_disk != rebuilt:
                bad(f"leaf {index} does not match its stored tree hashes", index)
            index += 1
            # 3. Every checkpoint at this size must be ours and match the rebuilt root.
            while next_checkpoint is not None and next_checkpoint.tree_size == index:
                cp = next_checkpoint
                try:
                    parsed = open_checkpoint(cp.note, verifier)
                except LedgerError as e:
                    bad(f"checkpoint at size {cp.tree_size} does not verify: {e}", cp.tree_size - 1)
                else:
                    root = frontier.root()
                    if parsed.size != cp.tree_size or parsed.root != root or cp.root != root:
                        bad(
                            f"checkpoint at size {cp.tree_size} does not match the rebuilt tree",
                            cp.tree_size - 1,
                        )
                next_checkpoint = next(pending_checkpoints, None)
    if next_checkpoint is not None:
        bad(
            f"checkpoint at size {next_checkpoint.tree_size} covers leaves that are not stored",
            index,
        )
    # 4. Derived indexes: step 1 tied each event's columns to its bytes, so an index
    #    that agrees with the columns agrees with the leaves.
    for at, problem in await store.index_problems(max_problems):
        bad(problem, at)
    if checkpoints and checkpoints[-1].tree_size != index:
        bad(
            f"{index} events are stored but the last checkpoint covers {checkpoints[-1].tree_size}",
            min(index, checkpoints[-1].tree_size),
        )
    return FsckReport(index, len(checkpoints), frontier.size, first_bad, problems)
