"""Kill -9 a real engine process mid-orchestration; the restarted process finishes it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from engine_helpers import FakeOpenAI, completion

from ledger.events import Event
from ledger.log import Log
from ledger.note import NoteSigner, generate_signer
from ledger.orchestration import ORCHESTRATION_EVENTS, replay
from ledger.orchestration.events import TERMINAL_TYPES
from ledger.sqlite_store import SQLiteEventStore

WORKER = Path(__file__).with_name("engine_restart_worker.py")
TENANT = "tenant-restart"


def _spawn(
    mode: str, db: Path, counter: Path, skey: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "MAIP_TEST_SKEY": skey, **(env or {})}
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(db), str(counter)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
    )


async def _read(db: Path, skey: str, oid: str) -> list[Event]:
    log = await Log.open(SQLiteEventStore(db), NoteSigner.from_skey(skey), ORCHESTRATION_EVENTS)
    try:
        return [r.event for r in await log.read_stream(TENANT, oid)]
    finally:
        await log.close()


@pytest.mark.slow
async def test_sigkill_mid_orchestration_then_resume(tmp_path: Path) -> None:
    db, counter = tmp_path / "engine.db", tmp_path / "effects.txt"
    skey = generate_signer("maip-ledger.test/log").skey
    first = _spawn("start", db, counter, skey)
    assert first.stdout is not None
    oid = first.stdout.readline().strip()
    assert oid, first.stderr.read() if first.stderr else ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if counter.exists() and len(counter.read_text().split()) >= 3:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    first.stdout.close()
    if first.stderr is not None:
        first.stderr.close()
    assert first.returncode == -signal.SIGKILL

    before = await _read(db, skey, oid)
    done_before = {e.payload.step_id for e in before if e.type == "step.completed"}
    assert "orchestration.completed" not in [e.type for e in before]
    assert len(done_before) >= 2

    second = _spawn("resume", db, counter, skey)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    lines = out.strip().splitlines()
    assert msgspec.json.decode(lines[0]) == {"resumed": [oid]}
    final = msgspec.json.decode(lines[1])
    assert final["status"] == "completed", final
    assert [s["status"] for s in final["steps"]] == ["completed"] * 6

    # No step that had completed before the kill ran again.
    runs = counter.read_text().split()
    for step_id in done_before - {"s0"}:
        assert runs.count(step_id) == 1, (step_id, runs)
    assert set(runs) == {f"s{i}" for i in range(1, 6)}
    assert len(runs) <= 6  # at most the one in-flight step ran twice

    # The log reopens (its recovery check passes) and replays to the reported state.
    after = await _read(db, skey, oid)
    assert after[: len(before)] == before
    assert [e.stream_seq for e in after] == list(range(1, len(after) + 1))
    state = replay(after)
    assert msgspec.json.decode(msgspec.json.encode(state)) == final
    interrupted = [
        e.payload
        for e in after[len(before) :]
        if e.type == "step.failed" and "interrupted" in e.payload.error
    ]
    assert len(interrupted) == 1  # the in-flight step was recorded, then retried
    assert interrupted[0].retrying is True
    types = [e.type for e in after]
    assert types.count("orchestration.completed") == 1


@pytest.mark.slow
async def test_sigkill_mid_llm_step_reuses_the_calls_it_completed(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """An llm step's loop made a model call and the tool call it asked for, then died
    waiting for the second model call. The resumed attempt answers the first two from
    the log (journal.py): the model is not asked again, the tool's effect does not
    happen again; only the call in flight is made again."""
    db, counter = tmp_path / "engine.db", tmp_path / "effects.txt"
    skey = generate_signer("maip-ledger.test/log").skey
    gate = asyncio.Event()
    fake_openai.script = [
        completion(None, [{"name": "effect", "args": {"step": "inside"}}]),
        gate,  # the second model call hangs until the process is killed
    ]
    env = {"MAIP_TEST_OPENAI_URL": fake_openai.url}
    first = _spawn("start-llm", db, counter, skey, env)
    assert first.stdout is not None
    oid = (await asyncio.to_thread(first.stdout.readline)).strip()
    assert oid, first.stderr.read() if first.stderr else ""
    deadline = time.monotonic() + 30
    while len(fake_openai.requests) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(fake_openai.requests) == 2
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 10)
    first.stdout.close()
    if first.stderr is not None:
        first.stderr.close()
    gate.set()
    before = await _read(db, skey, oid)
    assert [e.type for e in before][-1] == "llm.requested"  # the call in flight

    second = _spawn("resume", db, counter, skey, env)
    out, err = await asyncio.to_thread(second.communicate, timeout=60)
    assert second.returncode == 0, err
    final = msgspec.json.decode(out.strip().splitlines()[1])
    assert final["status"] == "completed", final
    assert final["results"]["s0"]["content"] == "done"

    # Three requests: the first model call once, the second (in flight) twice.
    assert len(fake_openai.requests) == 3
    first_call, in_flight, again = (r["messages"] for r in fake_openai.requests)
    assert len(first_call) == 1
    assert len(in_flight) == 3  # the user's, the model's tool call, the tool's result
    assert again == in_flight
    assert counter.read_text().split() == ["inside"]  # the effect happened once

    after = await _read(db, skey, oid)
    assert after[: len(before)] == before
    assert [e.stream_seq for e in after] == list(range(1, len(after) + 1))
    types = [e.type for e in after]
    # One attempt, not interrupted: the resumed run went on with it.
    assert types.count("step.started") == 1
    assert "step.failed" not in types
    assert types.count("llm.requested") == 3  # the one in flight, then made again
    assert types.count("llm.completed") == 2
    assert (types.count("tool.invoked"), types.count("tool.completed")) == (1, 1)
    assert msgspec.json.decode(msgspec.json.encode(replay(after))) == final


def _ending(events: list[Event]) -> str | None:
    """The error of the stream's ``orchestration.failed``."""
    error: str | None = next(e.payload.error for e in events if e.type == "orchestration.failed")
    return error


def _final_failures(events: list[Event]) -> list[tuple[str, str | None]]:
    """Each ``step.failed`` that did not retry: (step, kind)."""
    failed = [e.payload for e in events if e.type == "step.failed"]
    return [(f.step_id, f.kind) for f in failed if not f.retrying]


def _killed(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
async def test_regression_a_run_killed_after_a_step_s_final_failure_ends_as_the_live_run(
    tmp_path: Path,
) -> None:
    """A step's final ``step.failed`` was durable (another step's write-ahead flush took
    it along) when the process was killed, before the run's ``orchestration.failed``.
    The resumed run ended ``step_failed``, where the live run ends ``provider_error``:
    ``step.failed`` did not record the kind of failure. It records ``kind`` now."""
    skey = generate_signer("maip-ledger.test/log").skey
    counter = tmp_path / "effects.txt"

    # The live run, undisturbed, in a log of its own: how this run ends.
    live = _spawn("fail", tmp_path / "live.db", counter, skey)
    out, err = await asyncio.to_thread(live.communicate, timeout=60)
    assert live.returncode == 0, err
    live_oid, live_line = out.strip().splitlines()
    live_final = msgspec.json.decode(live_line)
    live_events = await _read(tmp_path / "live.db", skey, live_oid)

    # The same run, killed once the model step's final failure is durable.
    db = tmp_path / "engine.db"
    first = _spawn("fail-held", db, counter, skey)
    assert first.stdout is not None
    oid = (await asyncio.to_thread(first.stdout.readline)).strip()
    assert oid, first.stderr.read() if first.stderr else ""
    held = (await asyncio.to_thread(first.stdout.readline)).strip()
    assert held == "held", first.stderr.read() if first.stderr else ""
    _killed(first)
    before = await _read(db, skey, oid)
    assert not any(e.type in TERMINAL_TYPES for e in before)
    failed = [e.payload for e in before if e.type == "step.failed"]
    assert [(f.step_id, f.retrying, f.kind) for f in failed] == [("think", False, "provider_error")]

    second = _spawn("resume", db, counter, skey)
    out, err = await asyncio.to_thread(second.communicate, timeout=60)
    assert second.returncode == 0, err
    lines = out.strip().splitlines()
    assert msgspec.json.decode(lines[0]) == {"resumed": [oid]}
    final = msgspec.json.decode(lines[1])

    # It ends as the live run did: status, reason, the error recorded, the failed step.
    assert (final["status"], final["reason"]) == (live_final["status"], live_final["reason"])
    assert live_final["reason"] == "provider_error"

    after = await _read(db, skey, oid)
    assert _ending(after) == _ending(live_events)
    shown = ("step_id", "status", "result")
    assert [{k: s[k] for k in shown} for s in final["steps"]] == [
        {k: s[k] for k in shown} for s in live_final["steps"]
    ]
    # The step beside it was cut short by the run's end, live and resumed alike.
    assert _final_failures(after) == _final_failures(live_events)
    assert _final_failures(after) == [("think", "provider_error"), ("act", "aborted")]
    assert after[: len(before)] == before
    assert [e.stream_seq for e in after] == list(range(1, len(after) + 1))
    assert msgspec.json.decode(msgspec.json.encode(replay(after))) == final
