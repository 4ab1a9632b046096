"""Stream heads: each stream's last sequence number, against which an append's expected
sequence is judged (``specs/log-format.md`` §2; the judgement is the log's own).

A stream has two heads: the *committed* one, held in a bounded cache over the store,
and the *provisional* one, which also counts the batches prepared but not yet
committed (the log's provisional tip).
"""

from __future__ import annotations

from collections import OrderedDict

from ledger._batched_reads import BatchedReads
from ledger.store import EventStore

__all__ = ["StreamHeads"]

_Key = tuple[str, str]


class StreamHeads:
    """Committed heads of at most ``capacity`` streams, the least recently committed
    dropped first, and the provisional heads of streams with batches in flight."""

    def __init__(self, store: EventStore, capacity: int) -> None:
        self._store = store
        self._capacity = capacity
        #: Committed heads, by (tenant, stream), least recently committed first.
        self.committed: OrderedDict[_Key, int] = OrderedDict()
        #: Heads as the batches prepared but not committed leave them; cleared, never
        #: replaced, when a failed commit discards those batches.
        self.tip: dict[_Key, int] = {}
        self._reads = BatchedReads(self._read, "log-stream-heads")
        #: For each head read in flight, the heads committed since it began.
        self._reading: list[dict[_Key, int]] = []

    async def get(self, key: _Key) -> int:
        """The committed head of a stream, 0 for one never written."""
        head = self.committed.get(key)
        if head is not None:
            return head
        # Streams first seen in the same moment (a burst of new orchestrations) share one
        # read (ledger/_batched_reads.py).
        return (await self._reads.get((key,)))[key]

    async def _read(self, keys: list[_Key]) -> dict[_Key, int]:
        # A commit while the store answers may advance a stream past the head it read,
        # and the bounded cache may drop that stream again before the answer is back:
        # caching the answer would bring back the older head, at which a second append
        # would pass the conflict check and repeat a sequence number. Heads only grow.
        committed: dict[_Key, int] = {}
        self._reading.append(committed)
        try:
            heads = await self._store.stream_heads(keys)
        finally:
            self._reading = [c for c in self._reading if c is not committed]
        cache = self.committed
        return {
            key: cache.setdefault(key, max(head, committed.get(key, head)))
            for key, head in heads.items()
        }

    def commit(self, heads: dict[_Key, int]) -> None:
        """A batch that moved these streams to these heads has committed."""
        committed, tip = self.committed, self.tip
        for key, head in heads.items():
            committed[key] = head
            committed.move_to_end(key)
            if tip.get(key) == head:
                del tip[key]
        while len(committed) > self._capacity:
            committed.popitem(last=False)
        for reading in self._reading:
            reading.update(heads)
