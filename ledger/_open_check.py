"""The check a log makes when it opens: the stored tree is the one its latest signed
checkpoint covers (``specs/log-format.md`` §3).

It checks the checkpoint's signature, the number of stored events, the frontier hashes
against the signed root and the newest leaf against its stored hash: O(log n) hashes,
so that opening stays cheap however long the log. A full check is :mod:`ledger.fsck`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ledger import tlog
from ledger.checkpoint import open_checkpoint
from ledger.errors import IntegrityError, LedgerError
from ledger.merkle import leaf_hash
from ledger.note import NoteVerifier
from ledger.recorded import SignedCheckpoint
from ledger.store import EventStore

__all__ = ["check_stored_tree"]


async def check_stored_tree(
    store: EventStore,
    verifier: NoteVerifier,
    read_hashes: Callable[[Sequence[int]], Awaitable[list[bytes]]],
) -> tuple[tlog.Frontier, SignedCheckpoint] | None:
    """The O(log n) startup check: stored tree == last signed checkpoint.

    The committed tree's frontier and its checkpoint, or None for an empty log;
    IntegrityError if the store disagrees with the checkpoint."""
    record = await store.latest_checkpoint()
    count = await store.event_count()
    if count > (record.tree_size if record is not None else 0):
        # A read-only open beside a live writer, which may commit between the two
        # reads. A batch's events and checkpoint commit together, so a checkpoint
        # read after the count covers it unless events are stored that none covers:
        # then the log is opened as of the first checkpoint. A writer's own open
        # holds the store's lock, so the two reads agree and the check stays strict.
        newer = await store.latest_checkpoint()
        if newer is not None and newer.tree_size >= count:
            count = record.tree_size if record is not None else 0
    if record is None:
        if count:
            raise IntegrityError(f"{count} events are stored but no checkpoint covers them")
        return None
    # 1. The checkpoint must be ours: signed by this key, for this origin.
    try:
        if not isinstance(record.note, str):
            raise IntegrityError(f"its note is stored as {type(record.note).__name__}")
        checkpoint = open_checkpoint(record.note, verifier)
    except LedgerError as e:
        raise IntegrityError(
            f"the latest checkpoint (size {record.tree_size}) does not verify under "
            f"key {verifier.name}: {e}"
        ) from e
    if checkpoint.size != record.tree_size or checkpoint.root != record.root:
        raise IntegrityError("the latest checkpoint's note disagrees with its row")
    size = checkpoint.size
    # 2. Exactly the covered events are stored: no more, no fewer.
    if count != size:
        raise IntegrityError(
            f"{count} events are stored but the latest checkpoint covers {size}",
            index=min(count, size),
        )
    # 3. The stored frontier hashes to the signed root.
    frontier = tlog.Frontier(size, await read_hashes(tlog.Frontier.indexes(size)))
    if frontier.root() != checkpoint.root:
        raise IntegrityError(f"the stored tree of size {size} does not match its checkpoint")
    # 4. The newest leaf's bytes hash to the stored leaf hash.
    if size:
        last = await store.read_log(size - 1, 1)
        (stored_leaf,) = await read_hashes([tlog.stored_hash_index(0, size - 1)])
        # A column rewritten to TEXT (replace() on a BLOB) reads back as str.
        if (
            not last
            or not isinstance(last[0].leaf, bytes)
            or leaf_hash(last[0].leaf) != stored_leaf
        ):
            raise IntegrityError(f"leaf {size - 1} does not match its stored hash", index=size - 1)
    return frontier, SignedCheckpoint(size, checkpoint.root, record.note)
