"""StreamWriter: a flush cancelled at any moment leaves the stream and the writer agreeing."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import TENANT

from ledger.errors import InvalidEventError, PayloadTooLargeError
from ledger.events import MAX_LEAF_BYTES
from ledger.log import Log
from ledger.note import generate_signer
from ledger.orchestration import ORCHESTRATION_EVENTS
from ledger.orchestration import events as ev
from ledger.orchestration.stream import StreamWriter
from ledger.receipt import Receipt
from ledger.sqlite_store import SQLiteEventStore


class _Watched:
    """The real log, noting the moment an append has been queued."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.queued = asyncio.Event()

    async def submit(self, *args: Any) -> asyncio.Future[list[Receipt]]:
        outcome = await self.log.submit(*args)
        self.queued.set()
        return outcome


async def _open(tmp_path: Path) -> tuple[Log, _Watched, StreamWriter]:
    log = await Log.open(
        SQLiteEventStore(tmp_path / "l.db"), generate_signer("t.test/log"), ORCHESTRATION_EVENTS
    )
    watched = _Watched(log)
    writer = StreamWriter(watched, TENANT, "stream-1", 0, now=lambda: datetime.now(UTC))
    return log, watched, writer


def _emit(writer: StreamWriter, step: str) -> None:
    writer.emit(ev.STEP_SKIPPED, ev.StepSkipped(orchestration_id="o", step_id=step, reason="x"))


async def _steps(log: Log) -> list[tuple[int, str]]:
    return [
        (r.event.stream_seq, r.event.payload.step_id)
        for r in await log.read_stream(TENANT, "stream-1")
    ]


async def test_a_flush_cancelled_before_its_append_is_queued_keeps_its_events(
    tmp_path: Path,
) -> None:
    log, _, writer = await _open(tmp_path)
    _emit(writer, "a")
    flushing = asyncio.ensure_future(writer.flush())
    await asyncio.sleep(0)  # inside flush, before the append is queued
    flushing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flushing
    assert (writer.pending, writer.seq) == (1, 0)
    assert await _steps(log) == []
    await writer.flush()
    assert await _steps(log) == [(1, "a")]
    await log.close()


async def test_a_flush_cancelled_once_its_append_is_queued_still_moves_the_sequence_on(
    tmp_path: Path,
) -> None:
    log, watched, writer = await _open(tmp_path)
    _emit(writer, "a")
    flushing = asyncio.ensure_future(writer.flush())
    await watched.queued.wait()
    flushing.cancel()
    try:
        await flushing
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the flush was not cancelled")
    assert (writer.pending, writer.seq) == (0, 1)  # written; only the wait was cancelled
    _emit(writer, "b")
    await writer.flush()  # no conflict: the writer knows where the stream is
    assert await _steps(log) == [(1, "a"), (2, "b")]
    await log.close()


async def test_a_flush_cancelled_anywhere_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    log, _, writer = await _open(tmp_path)
    emitted: list[str] = []
    # Cancel after 0, 1, 2, ... loop turns: which moment each lands on depends on the
    # machine; whichever it is, nothing may be lost or written twice.
    for turns in range(16):
        step = f"s{turns}"
        _emit(writer, step)
        emitted.append(step)
        flushing = asyncio.ensure_future(writer.flush())
        for _ in range(turns):
            await asyncio.sleep(0)
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
    await writer.flush()  # whatever a cancelled flush left in the buffer
    assert await _steps(log) == list(enumerate(emitted, start=1))
    assert writer.seq == len(emitted)
    await log.close()


def _completed(output: Any) -> ev.StepCompleted:
    return ev.StepCompleted(orchestration_id="o", step_id="s", attempt=1, output=output)


async def test_regression_emit_refuses_an_event_too_large_for_a_leaf(tmp_path: Path) -> None:
    # It used to be buffered: every flush then failed, for ever, and so did the run.
    log, _, writer = await _open(tmp_path)
    low, high = 0, MAX_LEAF_BYTES  # the largest output emit takes is in [low, high)
    while high - low > 1:
        mid = (low + high) // 2
        try:
            writer.emit(ev.STEP_COMPLETED, _completed("x" * mid))
        except PayloadTooLargeError:
            high = mid
        else:
            writer._buffer.clear()
            low = mid
    writer.emit(ev.STEP_COMPLETED, _completed("x" * low))
    assert writer.pending == 1
    await writer.flush()  # the largest it takes is written...
    (record,) = await log.read_stream(TENANT, "stream-1")
    # ...and the bound is the leaf limit, less at most the digits of a sequence number.
    assert MAX_LEAF_BYTES - 19 <= len(record.leaf) <= MAX_LEAF_BYTES
    with pytest.raises(PayloadTooLargeError, match=r"the step\.completed event is"):
        writer.emit(ev.STEP_COMPLETED, _completed("x" * (low + 1)))
    assert writer.pending == 0
    await log.close()


async def test_regression_emit_returns_the_payload_as_the_log_holds_it(tmp_path: Path) -> None:
    log, _, writer = await _open(tmp_path)
    recorded = writer.emit(
        ev.STEP_COMPLETED, _completed({1: (2, 3), "f": float("inf")}), normalize=True
    )
    assert recorded.output == {"1": [2, 3], "f": None}
    await writer.flush()
    (record,) = await log.read_stream(TENANT, "stream-1")
    assert record.event.payload == recorded
    with pytest.raises(InvalidEventError, match="cannot be encoded"):
        writer.emit(ev.STEP_COMPLETED, _completed(object()))
    assert writer.pending == 0
    await log.close()


async def test_emit_without_normalize_checks_but_keeps_the_payload(tmp_path: Path) -> None:
    """Payloads the engine builds from JSON alone skip the decode, not the checks."""
    log, _, writer = await _open(tmp_path)
    payload = _completed({"a": [1, 2]})
    assert writer.emit(ev.STEP_COMPLETED, payload) is payload
    with pytest.raises(InvalidEventError, match="cannot be encoded"):
        writer.emit(ev.STEP_COMPLETED, _completed(object()))
    with pytest.raises(PayloadTooLargeError):
        writer.emit(ev.STEP_COMPLETED, _completed("x" * MAX_LEAF_BYTES))
    assert writer.pending == 1
    await log.close()


async def test_append_now_buffers_none_of_its_events_if_one_cannot_be_written(
    tmp_path: Path,
) -> None:
    log, _, writer = await _open(tmp_path)
    with pytest.raises(PayloadTooLargeError):
        await writer.append_now(
            [
                (ev.STEP_SKIPPED, ev.StepSkipped(orchestration_id="o", step_id="a", reason="x")),
                (ev.STEP_COMPLETED, _completed("x" * MAX_LEAF_BYTES)),
            ]
        )
    assert writer.pending == 0
    _emit(writer, "b")
    await writer.flush()
    assert await _steps(log) == [(1, "b")]
    await log.close()


class _Refusing:
    """The real log, except that it refuses its first append as invalid."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.refused = False

    async def submit(self, *args: Any) -> asyncio.Future[list[Receipt]]:
        if not self.refused:
            self.refused = True
            raise InvalidEventError("refused")
        return await self.log.submit(*args)


async def test_regression_a_batch_the_log_refuses_as_invalid_is_not_retried_for_ever(
    tmp_path: Path,
) -> None:
    log, _, _ = await _open(tmp_path)
    writer = StreamWriter(_Refusing(log), TENANT, "stream-1", 0, now=lambda: datetime.now(UTC))
    _emit(writer, "a")
    with pytest.raises(InvalidEventError):
        await writer.flush()
    assert writer.pending == 0  # no retry can make it valid: the next flush can succeed
    _emit(writer, "b")
    await writer.flush()
    assert await _steps(log) == [(1, "b")]
    await log.close()
