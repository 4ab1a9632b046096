"""The contract every :class:`ledger.store.EventStore` backend passes.

Subclass :class:`EventStoreContract` once per backend and implement ``make_store`` and
``try_rewrite`` (the backend's own way of attempting an UPDATE or DELETE).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from pathlib import Path

import pytest

from ledger.errors import IntegrityError, LedgerError
from ledger.store import Batch, CheckpointRecord, EventStore, HashRow, StoredEvent


def _event(i: int, stream: str = "s1", seq: int | None = None, tenant: str = "t1") -> StoredEvent:
    return StoredEvent(
        leaf_index=i,
        event_id=i.to_bytes(16, "big"),
        tenant_id=tenant,
        stream_id=stream,
        stream_seq=i + 1 if seq is None else seq,
        type="note.added",
        tree_size=0,
        leaf=b'{"i":%d}' % i,
    )


def _batch(events: list[StoredEvent], hash_start: int, size: int) -> Batch:
    return Batch(
        events,
        HashRow(hash_start, size.to_bytes(32, "big") * 2),
        CheckpointRecord(size, size.to_bytes(32, "big"), f"note {size}\n"),
    )


class EventStoreContract(ABC):
    @abstractmethod
    async def make_store(self, path: Path) -> EventStore: ...

    @abstractmethod
    async def try_rewrite(self, path: Path, statement: str) -> None:
        """Attempt ``statement`` (an UPDATE or DELETE) behind the store's back."""

    async def test_commit_then_read_back(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        await store.commit(_batch([_event(0), _event(1)], 0, 2))
        await store.commit(_batch([_event(2, "s2", 1, tenant="t2")], 2, 3))
        assert await store.event_count() == 3
        assert [e.leaf_index for e in await store.read_log(0, 10)] == [0, 1, 2]
        assert [e.leaf_index for e in await store.read_log(1, 1)] == [1]
        assert [e.stream_seq for e in await store.read_stream("t1", "s1", 0, None)] == [1, 2]
        assert [e.stream_seq for e in await store.read_stream("t1", "s1", 1, None)] == [2]
        assert await store.read_stream("t1", "s2", 0, None) == []  # other tenant's stream
        assert await store.stream_heads([("t1", "s1"), ("t2", "s2"), ("t1", "nope")]) == {
            ("t1", "s1"): 2,
            ("t2", "s2"): 1,
            ("t1", "nope"): 0,
        }
        assert await store.stream_heads([("t2", "s1"), ("t2", "s1")]) == {("t2", "s1"): 0}
        one, two = (1).to_bytes(16, "big"), (2).to_bytes(16, "big")
        assert await store.events_by_id([one]) == {one: _event(1)}
        assert await store.events_by_id([b"\xff" * 16]) == {}
        many = [one, b"\xff" * 16, two, one] + [i.to_bytes(16, "big") for i in range(9, 600)]
        assert await store.events_by_id(many) == {one: _event(1), two: _event(2, "s2", 1, "t2")}
        latest = await store.latest_checkpoint()
        assert latest is not None
        assert latest.tree_size == 3
        assert (await store.checkpoint(2)) == CheckpointRecord(
            2, (2).to_bytes(32, "big"), "note 2\n"
        )
        assert await store.checkpoint(1) is None
        assert [c.tree_size for c in await store.checkpoints(0, 10)] == [2, 3]
        assert [c.tree_size for c in await store.checkpoints(2, 10)] == [3]
        await store.close()

    async def test_indexes_agree_with_the_events(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        for i in range(200):
            await store.commit(_batch([_event(i, f"s{i % 7}", i // 7 + 1)], 2 * i, i + 1))
        assert await store.index_problems(10) == []
        await store.close()
        store = await self.make_store(tmp_path)  # reopened: every event is indexed
        assert await store.index_problems(10) == []
        assert len(await store.read_stream("t1", "s3", 0, None)) == len(range(3, 200, 7))
        assert await store.guard_problems() == []
        await store.close()

    async def test_hash_rows_find_the_row_holding_each_index(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        await store.commit(_batch([_event(0)], 0, 1))
        await store.commit(_batch([_event(1)], 2, 2))
        rows = {r.start: r for r in await store.hash_rows([0, 1, 3])}
        assert sorted(rows) == [0, 2]
        assert rows[2].end == 4
        await store.close()

    async def test_a_failed_batch_leaves_nothing(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        await store.commit(_batch([_event(0)], 0, 1))
        duplicate = _event(1)
        clash = StoredEvent(
            **{
                **{f: getattr(duplicate, f) for f in duplicate.__struct_fields__},
                "event_id": (0).to_bytes(16, "big"),
            }
        )
        with pytest.raises(LedgerError):
            await store.commit(_batch([clash], 2, 2))
        assert await store.event_count() == 1
        latest = await store.latest_checkpoint()
        assert latest is not None
        assert latest.tree_size == 1
        assert [r.start for r in await store.hash_rows([2, 3])] == [0]
        await store.close()

    async def test_queued_batches_are_written_in_call_order(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        queued = [
            store.commit(_batch([_event(i)], 2 * i, i + 1)) for i in range(5)
        ]  # none awaited yet
        await asyncio.gather(*queued)
        assert [e.leaf_index for e in await store.read_log(0, 10)] == [0, 1, 2, 3, 4]
        assert [c.tree_size for c in await store.checkpoints(0, 10)] == [1, 2, 3, 4, 5]
        await store.close()

    async def test_a_batch_that_would_leave_a_gap_is_refused(self, tmp_path: Path) -> None:
        """A batch queued behind one that failed must not be written after the hole."""
        store = await self.make_store(tmp_path)
        await store.commit(_batch([_event(0)], 0, 1))
        failing = _event(1)
        clash = StoredEvent(
            **{
                **{f: getattr(failing, f) for f in failing.__struct_fields__},
                "event_id": (0).to_bytes(16, "big"),
            }
        )
        first = store.commit(_batch([clash], 2, 2))
        behind = store.commit(_batch([_event(2)], 3, 3))
        with pytest.raises(LedgerError):
            await first
        with pytest.raises(IntegrityError, match="does not continue the log"):
            await behind
        assert await store.event_count() == 1
        # The log continues from where it really ends.
        await store.commit(_batch([_event(1)], 2, 2))
        assert [e.leaf_index for e in await store.read_log(0, 10)] == [0, 1]
        await store.close()

    async def test_data_survives_reopen(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        await store.commit(_batch([_event(0), _event(1)], 0, 2))
        await store.close()
        again = await self.make_store(tmp_path)
        assert await again.event_count() == 2
        assert await again.stream_heads([("t1", "s1")]) == {("t1", "s1"): 2}
        await again.close()

    async def test_snapshots_overwrite(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        assert await store.load_snapshot("p") is None
        await store.save_snapshot("p", 3, b"one")
        await store.save_snapshot("p", 5, b"two")
        assert await store.load_snapshot("p") == (5, b"two")
        await store.close()

    async def test_a_snapshot_in_parts_is_stored_as_their_join(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        big = bytes(range(256)) * 12_000  # several of the SQLite backend's blob pieces
        await store.save_snapshot("p", 4, [b"ab", bytearray(b"cd"), b"", big])
        assert await store.load_snapshot("p") == (4, b"abcd" + big)
        await store.save_snapshot("p", 6, [])
        assert await store.load_snapshot("p") == (6, b"")
        await store.close()

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE events SET leaf = x'00'",
            "DELETE FROM events",
            "UPDATE tree_hashes SET hashes = x'00'",
            "DELETE FROM tree_hashes",
            "UPDATE checkpoints SET note = 'forged'",
            "DELETE FROM checkpoints",
        ],
    )
    async def test_rewrites_are_refused(self, tmp_path: Path, statement: str) -> None:
        store = await self.make_store(tmp_path)
        await store.commit(_batch([_event(0)], 0, 1))
        await store.close()
        with pytest.raises(Exception, match="append-only"):
            await self.try_rewrite(tmp_path, statement)
        again = await self.make_store(tmp_path)
        assert (await again.read_log(0, 1))[0] == _event(0)
        await again.close()

    async def test_streams_read_whole_across_many_batches_and_reopen(self, tmp_path: Path) -> None:
        store = await self.make_store(tmp_path)
        seqs: dict[str, int] = {}
        index = 0
        for b in range(30):
            events = []
            for _ in range(50):
                stream = f"s{(index * 7) % 11}"
                seqs[stream] = seqs.get(stream, 0) + 1
                events.append(_event(index, stream, seqs[stream]))
                index += 1
            await store.commit(_batch(events, b * 100, index))
            # Every committed event is visible at once, indexed or not.
            probe = f"s{b % 11}"
            got = await store.read_stream("t1", probe, 0, None)
            assert [e.stream_seq for e in got] == list(range(1, seqs[probe] + 1))
            assert await store.stream_heads([("t1", probe)]) == {("t1", probe): seqs[probe]}
        await store.close()
        store = await self.make_store(tmp_path)
        # More streams than one read takes, so the reads are chunked.
        keys = [("t1", stream) for stream in seqs] + [("t1", f"x{i}") for i in range(600)]
        heads = await store.stream_heads(keys)
        assert heads == {key: seqs.get(key[1], 0) for key in keys}
        for stream, head in seqs.items():
            got = await store.read_stream("t1", stream, 3, 5)
            assert [e.stream_seq for e in got] == list(range(4, min(head, 8) + 1))
        await store.close()
