"""BatchedReads: callers that ask while a read is in flight share the next read."""

from __future__ import annotations

import asyncio

import pytest

from ledger._batched_reads import BatchedReads


async def test_callers_waiting_together_share_one_read_and_each_gets_its_keys() -> None:
    reads: list[list[int]] = []
    gate = asyncio.Event()

    async def read(keys: list[int]) -> dict[int, int]:
        reads.append(keys)
        await gate.wait()
        return {k: k * 10 for k in keys}

    batched = BatchedReads(read, "test")
    first = asyncio.ensure_future(batched.get([1]))
    await asyncio.sleep(0)  # the first read is now in flight
    rest = [asyncio.ensure_future(batched.get([k, k + 100])) for k in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert (await first)[1] == 10
    answers = await asyncio.gather(*rest)
    assert [a[k] for a, k in zip(answers, (2, 3, 4), strict=True)] == [20, 30, 40]
    assert reads == [[1], [2, 102, 3, 103, 4, 104]]


async def test_a_failed_read_fails_its_callers_and_the_next_read_goes_on() -> None:
    calls = 0

    async def read(keys: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk gone")
        return keys

    batched = BatchedReads(read, "test")
    failed = await asyncio.gather(batched.get([1]), batched.get([2]), return_exceptions=True)
    assert [type(e) for e in failed] == [OSError, OSError]
    assert await batched.get([3]) == [3]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    gate = asyncio.Event()

    async def read(keys: list[int]) -> list[int]:
        await gate.wait()
        return keys

    batched = BatchedReads(read, "test")
    cancelled = asyncio.ensure_future(batched.get([1]))
    kept = asyncio.ensure_future(batched.get([2]))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    assert await kept == [1, 2]
    with pytest.raises(asyncio.CancelledError):
        await cancelled
