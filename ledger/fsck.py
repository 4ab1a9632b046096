"""Full integrity check of a stored log (``maip-ledger fsck``).

Unlike the O(log n) startup check, this reads everything:

1. every stored event's bytes are re-hashed (RFC 6962 leaf hash) and decoded; the
   columns it is found by (event id, tenant, stream, sequence, type) must match the
   leaf, leaf indexes must run 0, 1, 2, … and each stream's sequence 1, 2, 3, …; its
   receipt's tree size must be the size of the first checkpoint that covers it (the
   end of the batch it was committed in);
2. the tree is rebuilt from those leaf hashes, and every stored hash, read from the
   row the store reads it from, must equal the rebuilt one; a row that starts inside
   another is reported;
3. every stored checkpoint must verify under the log's key and its root must equal
   the rebuilt tree's root at its size — so each checkpoint is consistent with the
   next, and the stored tree matches the last one;
4. the lookup structures the backend derives from the events (the stream index) must
   agree with them (:meth:`~ledger.store.EventStore.index_problems`);
5. no event is stored beyond the latest checkpoint;
6. the guards that keep the tables append-only (the SQLite backend's triggers) are the
   store's own (:meth:`~ledger.store.EventStore.guard_problems`): the store creates them
   only if absent, so one replaced under its name by a body that lets edits through
   would stay. Such a problem concerns no leaf: it leaves ``first_bad_index`` alone.

It takes no lock and may run beside a writer: it checks the log up to the last
checkpoint it read at the start, and what is committed meanwhile is not a problem.

The first bad leaf index is reported; a tampered byte anywhere in an event, a tree
hash or a checkpoint is found, and so is an index row that points at the wrong event.
A value rewritten to another type (a leaf, event id or tree hash row stored as TEXT),
or to text that is not UTF-8 and so cannot be read, is reported at its leaf as well.
"""

from __future__ import annotations

import msgspec

from ledger import tlog
from ledger.checkpoint import open_checkpoint
from ledger.errors import IntegrityError, LedgerError
from ledger.events import decode_leaf_envelope
from ledger.ids import ulid_str
from ledger.merkle import leaf_hash
from ledger.note import NoteVerifier
from ledger.store import CheckpointRecord, EventStore, HashRow, StoredEvent

__all__ = ["FsckReport", "fsck"]

_CHUNK = 5000
# Stored indexes per read when looking for a row that starts inside another.
_ROW_PROBE = 500


def _kind(value: object) -> str:
    return type(value).__name__


def _leaf_bytes(row: StoredEvent | str, index: int) -> bytes | str:
    """The row's leaf bytes, or why there are none to hash: the column can be rewritten
    to another type (replace() on a BLOB stores TEXT), or not be readable at all."""
    if isinstance(row, str):
        return f"leaf {index} cannot be read: {row}"
    leaf: object = row.leaf  # whatever SQLite hands back, whatever the struct says
    if not isinstance(leaf, bytes):
        return f"leaf {index} is stored as {_kind(leaf)}, not bytes"
    return leaf


class FsckReport(msgspec.Struct, frozen=True):
    events: int
    checkpoints: int
    tree_size: int
    first_bad_index: int | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


async def _read_events(store: EventStore, index: int, limit: int) -> list[StoredEvent | str]:
    """Stored events from ``index``. SQLite cannot hand over text that is not UTF-8, and
    one such value fails the whole read: the rows are then read one by one up to it, and
    it is given as why it cannot be read (a ``str``)."""
    try:
        return list(await store.read_log(index, limit))
    except IntegrityError:
        pass
    out: list[StoredEvent | str] = []
    for at in range(index, index + limit):
        try:
            rows = await store.read_log(at, 1)
        except IntegrityError as e:
            out.append(str(e))
            break
        if not rows:
            break
        out.append(rows[0])
    return out


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
    # From the lowest size the store holds, not from 0: the log issues no checkpoint
    # below size 1, so a row there is not the log's.
    after = -(1 << 63)
    while batch := await store.checkpoints(after, 10_000):
        checkpoints.extend(batch)
        after = batch[-1].tree_size
    for cp in checkpoints:
        if cp.tree_size < 1:
            bad(f"checkpoint at size {cp.tree_size} is stored, but the log issues none below 1", 0)
    checkpoints = [cp for cp in checkpoints if cp.tree_size >= 1]
    pending_checkpoints = iter(checkpoints)
    next_checkpoint = next(pending_checkpoints, None)
    # A writer may commit while this runs (fsck takes no lock), and each read is its own
    # snapshot: exactly the leaves the checkpoints just read cover are checked. Every
    # one of them is committed, with its hashes, by the time its checkpoint is; rows
    # beyond them are a later batch's, checked by the next fsck. One read transaction
    # around the whole check would see one state too, but would hold the WAL for as
    # long as fsck runs and stop the writer's checkpoints from restarting it.
    covered = checkpoints[-1].tree_size if checkpoints else 0

    row_now: HashRow | None = None
    # Where the store stops reading row_now: it reads each stored hash from the row that
    # starts last at or before it, so a row starting inside this one takes over there.
    row_until = 0

    async def next_row_start(row: HashRow) -> int:
        try:
            last = await store.hash_rows([row.end - 1])
            if all(r.start == row.start for r in last):
                return row.end
            for lo in range(row.start + 1, row.end, _ROW_PROBE):
                found = await store.hash_rows(range(lo, min(lo + _ROW_PROBE, row.end)))
                if inside := [r.start for r in found if r.start > row.start]:
                    return min(inside)
        except IntegrityError:
            pass  # a row that cannot be read is reported when its hashes are read
        return row.end

    async def stored_hashes(start: int, count: int, index: int) -> bytes | str:
        """The stored hashes ``start .. start+count``, or what is wrong with them."""
        nonlocal row_now, row_until
        out = b""
        while count:
            row = row_now
            if row is None or not row.start <= start < row_until:
                if row is not None and row.start <= start < row.end:
                    bad(f"tree hash row {row_until} starts inside row {row.start}", index)
                # Read with the last stored hash of this leaf's batch: in the same row, as
                # it should be, that one read shows no other row starts inside this one.
                last = start
                if next_checkpoint is not None:
                    last = max(start, tlog.stored_hash_count(next_checkpoint.tree_size) - 1)
                try:
                    found = await store.hash_rows([start, last])
                except IntegrityError:
                    try:
                        found = await store.hash_rows([start])
                    except IntegrityError as e:
                        return f"tree hashes for leaf {index} cannot be read: {e}"
                holding = [r for r in found if r.start <= start]
                row = max(holding, key=lambda r: r.start) if holding else None
                if row is not None and isinstance(row.hashes, bytes) and row.start < row.end:
                    alone = len(found) == 1 and row.end == last + 1
                    row_until = row.end if alone else await next_row_start(row)
            row_now = None
            if row is None:
                return f"tree hashes for leaf {index} are missing"
            hashes: object = row.hashes
            if not isinstance(hashes, bytes):
                # Its length says nothing of where the next row starts: not kept, so the
                # next leaf's hashes are looked up afresh.
                return f"tree hash row {row.start} is stored as {_kind(hashes)}, not bytes"
            if not row.start <= start < row.end:
                return f"tree hashes for leaf {index} are missing"
            row_now = row
            offset = start - row.start
            take = min(count, row_until - start)
            out += row.hashes[offset * 32 : (offset + take) * 32]
            start += take
            count -= take
        return out

    # A row of the wrong type is reported once, at the first leaf whose hashes it holds.
    said: set[str] = set()

    def bad_once(message: str, index: int) -> None:
        if message not in said:
            said.add(message)
            bad(message, index)

    frontier = tlog.Frontier()
    heads: dict[tuple[str, str], int] = {}
    index = 0
    while index < covered and (
        chunk := await _read_events(store, index, min(_CHUNK, covered - index))
    ):
        for row in chunk:
            if isinstance(row, StoredEvent) and row.leaf_index != index:
                bad(f"leaf index {index} is missing (next stored is {row.leaf_index})", index)
                return FsckReport(index, len(checkpoints), frontier.size, first_bad, problems)
            start = tlog.stored_hash_count(index)
            # 1. Re-hash and decode the stored bytes; the columns must agree with them.
            leaf_bytes = _leaf_bytes(row, index)
            env = None
            if isinstance(leaf_bytes, str):
                bad(leaf_bytes, index)
                # The tree is rebuilt on with its stored leaf hash, so the leaves after it
                # are still checked rather than all reported with it.
                stored_leaf = await stored_hashes(start, 1, index)
                h = stored_leaf if isinstance(stored_leaf, bytes) else bytes(32)
            else:
                h = leaf_hash(leaf_bytes)
                try:
                    env = decode_leaf_envelope(leaf_bytes)
                except LedgerError as e:
                    bad(f"leaf {index} does not decode: {e}", index)
            if env is not None and isinstance(row, StoredEvent):
                stored_id: object = row.event_id
                if isinstance(stored_id, bytes):
                    event_id = ulid_str(stored_id)
                else:
                    bad(
                        f"leaf {index}'s event id is stored as {_kind(stored_id)}, not bytes",
                        index,
                    )
                    event_id = env.event_id  # reported; the other columns are still compared
                columns = (
                    event_id,
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
            # An event's receipt is issued at the end of its batch, and tree_size is how
            # it is found again: the next checkpoint is where that batch ended.
            if (
                isinstance(row, StoredEvent)
                and next_checkpoint is not None
                and row.tree_size != next_checkpoint.tree_size
            ):
                bad(
                    f"leaf {index} says its receipt was issued at tree size {row.tree_size!r}, "
                    f"but its batch ends at {next_checkpoint.tree_size}",
                    index,
                )
            # 2. The rebuilt stored hashes must equal the stored ones.
            rebuilt = b"".join(frontier.append(h))
            on_disk = await stored_hashes(start, len(rebuilt) // 32, index)
            if isinstance(on_disk, str):
                bad_once(on_disk, index)
            elif on_disk != rebuilt:
                bad(f"leaf {index} does not match its stored tree hashes", index)
            index += 1
            # 3. Every checkpoint at this size must be ours and match the rebuilt root.
            while next_checkpoint is not None and next_checkpoint.tree_size == index:
                cp = next_checkpoint
                try:
                    if not isinstance(cp.note, str):
                        raise IntegrityError(f"its note is stored as {_kind(cp.note)}, not text")
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
    # Events no checkpoint covers. Events and their checkpoint are committed together,
    # so a count read before the latest checkpoint never exceeds it, however many
    # batches the writer commits in between, unless such events are stored.
    stored = await store.event_count()
    latest = await store.latest_checkpoint()
    last = latest.tree_size if latest is not None else 0
    if stored > last:
        bad(f"{stored} events are stored but the last checkpoint covers {last}", last)
    # 6. The append-only guards.
    for problem in await store.guard_problems():
        bad(problem, None)
    return FsckReport(index, len(checkpoints), frontier.size, first_bad, problems)
