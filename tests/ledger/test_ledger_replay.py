"""Replay: deterministic folds, and snapshots that cannot outlive their log."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_testkit import Count, Note, open_log

from ledger.events import Event, NewEvent
from ledger.log import Log
from ledger.replay import fold, fold_log, fold_stream, load_snapshot, save_snapshot


class Totals(msgspec.Struct, frozen=True):
    count: int = 0
    total: int = 0
    texts: tuple[str, ...] = ()


class TotalsProjection:
    name = "totals/v1"

    def initial(self) -> Totals:
        return Totals()

    def apply(self, state: Totals, event: Event) -> Totals:
        if isinstance(event.payload, Count):
            return msgspec.structs.replace(
                state, count=state.count + 1, total=state.total + event.payload.n
            )
        if isinstance(event.payload, Note):
            return msgspec.structs.replace(state, texts=(*state.texts, event.payload.text))
        return state

    def encode(self, state: Totals) -> bytes:
        return msgspec.msgpack.encode(state)

    def decode(self, data: bytes) -> Totals:
        return msgspec.msgpack.decode(data, type=Totals)


async def _count_up(log: Log, stop: int, *, start: int = 0, plus: int = 0) -> None:
    """Append ``count.added`` events for sequences ``start`` .. ``stop - 1`` to one stream,
    each counting its sequence (plus ``plus``)."""
    for i in range(start, stop):
        await log.append("t", "s", i, [NewEvent("count.added", Count(i + plus))])


def _event(seq: int, payload: msgspec.Struct) -> Event:
    return Event(
        1, f"01JDQ6Z{seq:019d}", "t", "s", seq, "x", "2026-01-01T00:00:00.000000Z", payload
    )


@given(st.lists(st.one_of(st.builds(Count, st.integers(-100, 100)), st.builds(Note, st.text()))))
def test_replay_is_deterministic(payloads: list[msgspec.Struct]) -> None:
    events = [_event(i + 1, p) for i, p in enumerate(payloads)]
    assert fold(events, TotalsProjection()) == fold(list(events), TotalsProjection())
    half = len(events) // 2
    resumed = fold(events[half:], TotalsProjection(), fold(events[:half], TotalsProjection()))
    assert resumed == fold(events, TotalsProjection())


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=30))
def test_live_fold_equals_replay_from_the_log(tmp_path_factory: object, values: list[int]) -> None:
    import asyncio

    async def run() -> None:
        path = tmp_path_factory.mktemp("replay") / "l.db"  # type: ignore[attr-defined]
        log = await open_log(path)
        live = TotalsProjection().initial()

        def on_batch(batch: object) -> None:
            nonlocal live
            live = fold((r.event for r in batch), TotalsProjection(), live)  # type: ignore[attr-defined]

        log.add_listener(on_batch)
        for i, v in enumerate(values):
            await log.append("t", "s", i, [NewEvent("count.added", Count(v))])
        assert live == await fold_log(log, TotalsProjection(), use_snapshot=False)
        assert live == await fold_stream(log, "t", "s", TotalsProjection())
        await log.close()

    asyncio.run(run())


async def test_snapshot_resumes_the_fold_and_is_checked_against_the_log(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 10)
    state = await fold_log(log, TotalsProjection())
    await save_snapshot(log, TotalsProjection(), state, log.size)
    await _count_up(log, 15, start=10)
    full = await fold_log(log, TotalsProjection(), use_snapshot=False)
    assert await fold_log(log, TotalsProjection()) == full == Totals(15, sum(range(15)))
    # A snapshot sealed under this log's key, but of another log, is ignored.
    other = await open_log(tmp_path / "other.db")
    await _count_up(other, 10, plus=100)
    await save_snapshot(other, TotalsProjection(), Totals(999, 999), 10)
    theirs = await other.store.load_snapshot("totals/v1")
    await other.close()
    assert theirs is not None
    await log.store.save_snapshot("totals/v1", *theirs)
    assert await load_snapshot(log, TotalsProjection()) is None
    assert await fold_log(log, TotalsProjection()) == full
    await log.close()


async def test_a_snapshot_beyond_the_asked_bound_is_not_loaded(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 6)
    state = await fold_log(log, TotalsProjection())
    await save_snapshot(log, TotalsProjection(), state, 6)
    assert await load_snapshot(log, TotalsProjection()) == (state, 6)
    assert await load_snapshot(log, TotalsProjection(), upto=6) == (state, 6)
    # A caller folding only the first five leaves cannot start from a fold of six.
    assert await load_snapshot(log, TotalsProjection(), upto=5) is None
    await log.close()


class _Growing:
    """A projection whose state is one mutable list, folded in place."""

    name = "growing/v1"

    def initial(self) -> list[int]:
        return []

    def apply(self, state: list[int], event: Event) -> list[int]:
        state.append(event.stream_seq)
        return state

    def encode(self, state: list[int]) -> bytes:
        return msgspec.msgpack.encode(state)

    def decode(self, data: bytes) -> list[int]:
        return msgspec.msgpack.decode(data, type=list[int])


async def test_regression_a_snapshot_holds_the_state_as_of_its_call_not_later_folds(
    tmp_path: Path,
) -> None:
    """save_snapshot encoded the state only after awaiting the log's root, so a live
    projection folded in place could take in newer commits meanwhile: the snapshot then
    named one size and held more, and a restart folded those events twice."""
    # A cache of one row: the root is read from the store, so the save really waits.
    log = await open_log(tmp_path / "l.db", hash_cache_bytes=1)
    await _count_up(log, 5)  # the root at 5 needs rows 4 and 5, and only row 5 is cached
    live = await fold_log(log, _Growing())
    saving = asyncio.create_task(save_snapshot(log, _Growing(), live, log.size))
    await asyncio.sleep(0)  # the save is now waiting for the root at size 5
    live.append(6)  # meanwhile the live fold takes in leaf 6
    await saving
    assert await load_snapshot(log, _Growing()) == ([1, 2, 3, 4, 5], 5)
    await log.close()


class _GrowingInParts(_Growing):
    """:class:`_Growing` encoded one item a part, as a large state would be; notes the
    value of ``clock()`` as each part is taken."""

    name = "growing-in-parts/v1"

    def __init__(self, clock: Callable[[], int] = lambda: 0) -> None:
        self._clock = clock
        self.taken_at: list[int] = []

    def encode(self, state: list[int]) -> Iterator[bytes]:  # type: ignore[override]
        captured = list(state)
        self.taken_at.append(self._clock())
        yield b"["
        for i, value in enumerate(captured):
            self.taken_at.append(self._clock())
            yield (b"," if i else b"") + msgspec.json.encode(value)

    def decode(self, data: bytes) -> list[int]:
        return msgspec.json.decode(data + b"]", type=list[int])


async def test_a_state_encoded_in_parts_lets_the_loop_run_and_holds_the_state_of_the_call(
    tmp_path: Path,
) -> None:
    """Encoding a large state in one call held the event loop for all of it (~90 ms for
    the registry of 100,000 orchestrations). In parts, other tasks run between them,
    and what they fold meanwhile stays out of the snapshot."""
    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 5)
    turns = 0
    projection = _GrowingInParts(lambda: turns)
    live = await fold_log(log, projection)

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            live.append(100 + turns)  # a fold going on meanwhile
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await save_snapshot(log, projection, live, log.size)
    other.cancel()
    assert await load_snapshot(log, projection) == ([1, 2, 3, 4, 5], 5)
    # Six parts, and the other task ran between each two.
    assert len(projection.taken_at) == 6
    assert projection.taken_at == sorted(set(projection.taken_at))
    await log.close()


class _Blob:
    """A state that is raw bytes, encoded in two parts (or as one, if ``whole``)."""

    name = "blob/v1"

    def __init__(self, *, whole: bool) -> None:
        self._whole = whole

    def initial(self) -> bytes:
        return b""

    def apply(self, state: bytes, event: Event) -> bytes:
        return state

    def encode(self, state: bytes) -> bytes | Iterator[bytes]:
        if self._whole:
            return state
        return iter([state[: len(state) // 3], state[len(state) // 3 :]])

    def decode(self, data: bytes) -> bytes:
        return data


@pytest.mark.parametrize("whole", [False, True])
async def test_a_snapshot_is_stored_as_the_msgpack_of_its_fields_at_every_size(
    tmp_path: Path, whole: bool
) -> None:
    """A snapshot is handed to the store in parts, never joined (a copy of tens of MiB
    stalls the event loop); the stored row must still be exactly the MessagePack of its
    fields, as it always was, across every length form of a ``bin`` (8, 16, 32 bits)."""
    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 3)
    projection = _Blob(whole=whole)
    for size in (0, 1, 255, 256, 65_535, 65_536, 3 << 20):
        state = bytes(range(256)) * (size // 256) + bytes(size % 256)
        await save_snapshot(log, projection, state, 3)
        saved = await log.store.load_snapshot(projection.name)
        assert saved is not None
        fields = msgspec.msgpack.decode(saved[1])
        assert list(fields) == ["log_size", "root", "state", "seal"]
        assert fields["state"] == state
        assert msgspec.msgpack.encode(fields) == saved[1], size
        assert await load_snapshot(log, projection) == (state, 3)
    await log.close()


async def test_regression_a_snapshot_edited_in_the_database_is_ignored(tmp_path: Path) -> None:
    """Snapshots were checked only against the log's root at their size, which says
    nothing of their state: an edit to the stored state (say, an orchestration's status
    in the engine's registry) was loaded as the fold of the log. Now a snapshot is
    sealed under a key derived from the signing key, and one whose seal fails is ignored."""
    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 6)
    state = await fold_log(log, TotalsProjection())
    await save_snapshot(log, TotalsProjection(), state, 6)
    assert await load_snapshot(log, TotalsProjection()) == (state, 6)
    saved = await log.store.load_snapshot("totals/v1")
    assert saved is not None
    stored = msgspec.msgpack.decode(saved[1])
    stored["state"] = TotalsProjection().encode(Totals(999, 999))
    await log.store.save_snapshot("totals/v1", 6, msgspec.msgpack.encode(stored))
    assert await load_snapshot(log, TotalsProjection()) is None
    assert await fold_log(log, TotalsProjection()) == state
    # Not even the same bytes under another projection's name.
    await save_snapshot(log, TotalsProjection(), state, 6)
    saved = await log.store.load_snapshot("totals/v1")
    assert saved is not None
    await log.store.save_snapshot("renamed/v1", *saved)

    class Renamed(TotalsProjection):
        name = "renamed/v1"

    assert await load_snapshot(log, Renamed()) is None
    await log.close()


async def test_a_snapshot_sealed_over_its_joined_bytes_still_loads(tmp_path: Path) -> None:
    """Snapshots were sealed over one joined copy of their fields; they are now sealed
    over the parts. It is the same HMAC, so a snapshot saved before still loads."""
    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 6)
    state = await fold_log(log, TotalsProjection())
    data = TotalsProjection().encode(state)
    root = await log.root_at(6)
    fields = [b"totals/v1", b"6", root, data]
    joined = b"maip-ledger snapshot\n" + b"".join(len(f).to_bytes(8, "big") + f for f in fields)
    old = {"log_size": 6, "root": root, "state": data, "seal": log.seal(joined)}
    await log.store.save_snapshot("totals/v1", 6, msgspec.msgpack.encode(old))
    assert await load_snapshot(log, TotalsProjection()) == (state, 6)
    await log.close()


async def test_regression_a_sealed_snapshot_whose_state_does_not_decode_is_ignored(
    tmp_path: Path,
) -> None:
    """Only the snapshot's envelope was guarded: a snapshot sealed by this key whose
    state this code cannot read (saved by a version with another state shape under the
    same name) made the fold raise, and the engine could not start."""

    class OtherShape(TotalsProjection):
        def encode(self, state: Totals) -> bytes:
            return msgspec.msgpack.encode(["totals", "in", "another", "shape"])

    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 3)
    await save_snapshot(log, OtherShape(), Totals(), 3)
    assert await load_snapshot(log, TotalsProjection()) is None
    assert await fold_log(log, TotalsProjection()) == Totals(3, 3)
    await log.close()


async def test_a_snapshot_row_in_an_older_format_is_ignored(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    await _count_up(log, 3)
    unsealed = {"log_size": 3, "root": await log.root_at(3), "state": b"\x93\x00\x00\x90"}
    await log.store.save_snapshot("totals/v1", 3, msgspec.msgpack.encode(unsealed))
    assert await load_snapshot(log, TotalsProjection()) is None
    await log.store.save_snapshot("totals/v1", 3, b"\xc1 not msgpack")
    assert await load_snapshot(log, TotalsProjection()) is None
    assert await fold_log(log, TotalsProjection()) == Totals(3, 3)
    await log.close()


async def test_regression_a_snapshot_row_rewritten_as_text_is_ignored(tmp_path: Path) -> None:
    """The snapshots table has no triggers, so its row is easy to edit: a state stored as
    TEXT raised a bare TypeError, and TEXT that is not UTF-8 an IntegrityError, from
    load_snapshot, so the fold (and the engine's start) failed instead of ignoring it."""
    path = tmp_path / "l.db"
    log = await open_log(path)
    await _count_up(log, 4)
    state = await fold_log(log, TotalsProjection())
    await save_snapshot(log, TotalsProjection(), state, 4)
    await log.close()
    for edit in (
        "UPDATE snapshots SET state = 'not a snapshot'",
        "UPDATE snapshots SET state = CAST(x'ff' AS TEXT)",
        "UPDATE snapshots SET log_index = 'four'",
        "UPDATE snapshot_pieces SET bytes = 'not a piece'",
        "UPDATE snapshot_pieces SET bytes = CAST(x'ff' AS TEXT)",
    ):
        conn = sqlite3.connect(path)
        conn.execute(edit)
        conn.commit()
        conn.close()
        log = await open_log(path)
        try:
            assert await load_snapshot(log, TotalsProjection()) is None, edit
            assert await fold_log(log, TotalsProjection()) == state
            await save_snapshot(log, TotalsProjection(), state, 4)  # for the next edit
        finally:
            await log.close()
