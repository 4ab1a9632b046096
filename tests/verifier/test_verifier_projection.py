"""§7.3 fold semantics (hand-written expected states), agreement with the engine's own
fold (``ledger.orchestration.state``: a second implementation), the streamed state
trailer of bundles larger than the line limit, and the replayed receipts digest."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
import verifier_testkit as kit

import verifier._bundle as bundle_mod
import verifier._bundle_lines as lines_mod
from verifier import ReplayInvalid, StateMismatch, verify_bundle
from verifier._jsonstream import STREAMED, parse_stream
from verifier._projection import RECEIPTS_BATCH, RECEIPTS_KEPT, ReceiptsDigest, ReceiptsMatcher
from verifier._replay import build_timeline, render

ORCH = kit.ORCH_ID


def _scenario(events: list[tuple[str, dict[str, Any]]], state: dict[str, Any]) -> kit.Scenario:
    times = [f"2026-02-01T00:00:{i:02d}.000000Z" for i in range(1, len(events) + 1)]
    return kit.Scenario([(t, {"orchestration_id": ORCH, **p}) for t, p in events], state, times)


def _created(**extra: Any) -> dict[str, Any]:
    return {
        "executor": "engine",
        "workflow_id": "wf-2",
        "workflow_version": 3,
        "workflow_hash": "sha256:" + "cd" * 32,
        "agent_id": None,
        "agents": ["a1", "a2"],
        "input": {"x": 1},
        "parameters": {},
        "model": None,
        "max_steps": 10,
        "timeout_seconds": 30.0,
        "started_by": "user:bob",
        "request_shape": "workflow",
        "definition": {
            "steps": [
                {"id": "s0", "action": "llm", "agent": "a1"},
                {"id": "s1", "action": "tool", "agent": "a2", "depends_on": ["s0"]},
                {"id": "s2", "action": "llm", "agent": "a1", "depends_on": ["s0"]},
            ]
        },
        **extra,
    }


def _retry_skip_fail() -> kit.Scenario:
    events = [
        ("orchestration.created", _created()),
        ("orchestration.started", {}),
        (
            "step.started",
            {"step_id": "s0", "agent_id": "a1", "action": "llm", "attempt": 1, "inputs": {}},
        ),
        ("step.failed", {"step_id": "s0", "attempt": 1, "error": "timeout", "retrying": True}),
        (
            "step.started",
            {"step_id": "s0", "agent_id": "a1", "action": "llm", "attempt": 2, "inputs": {}},
        ),
        ("step.completed", {"step_id": "s0", "attempt": 2, "output": "fine"}),
        ("step.skipped", {"step_id": "s1", "reason": "branch not taken"}),
        (
            "step.started",
            {"step_id": "s2", "agent_id": "a1", "action": "llm", "attempt": 1, "inputs": {}},
        ),
        ("step.failed", {"step_id": "s2", "attempt": 1, "error": "bad", "retrying": False}),
        ("orchestration.failed", {"reason": "step_failed", "error": "bad"}),
    ]
    t = [f"2026-02-01T00:00:{i:02d}.000000Z" for i in range(1, 11)]
    state = {
        "orchestration_id": ORCH,
        "id": "maip-orch:" + kit.ulid_from_int(int(ORCH.replace("-", ""), 16)),
        "tenant_id": kit.TENANT,
        "workflow_id": "wf-2",
        "workflow_version": 3,
        "agent_id": None,
        "agents": ["a1", "a2"],
        "parameters": {},
        "input": {"x": 1},
        "model": None,
        "executor": "engine",
        "status": "failed",
        "reason": "step_failed",
        "steps": [
            {
                "step_id": "s0",
                "agent_id": "a1",
                "action": "llm",
                "status": "completed",
                "result": "fine",
                "started_at": t[4],
                "completed_at": t[5],
                "attempts": 2,
            },
            {
                "step_id": "s1",
                "agent_id": "a2",
                "action": "tool",
                "status": "skipped",
                "result": None,
                "started_at": None,
                "completed_at": t[6],
                "attempts": 0,
            },
            {
                "step_id": "s2",
                "agent_id": "a1",
                "action": "llm",
                "status": "failed",
                "result": {"error": "bad"},
                "started_at": t[7],
                "completed_at": t[8],
                "attempts": 1,
            },
        ],
        "results": None,
        "receipts": [],
        "created_at": t[0],
        "started_at": t[1],
        "completed_at": t[9],
    }
    return _scenario(events, state)


def test_retry_skip_and_failure_fold_as_section_7_3_says() -> None:
    b = kit.build_bundle(_retry_skip_fail())
    report = verify_bundle(b.encode(), b.vkey)
    assert report.status == "failed"
    assert not report.running


def test_retrying_failure_keeps_the_step_running() -> None:
    sc = _retry_skip_fail()
    sc.events[4:] = []
    sc.times[4:] = []
    sc.state.update(status="running", reason=None, completed_at=None)
    sc.state["steps"] = [
        {
            "step_id": "s0",
            "agent_id": "a1",
            "action": "llm",
            "status": "running",
            "result": None,
            "started_at": sc.times[2],
            "completed_at": None,
            "attempts": 1,
        },
    ]
    b = kit.build_bundle(sc)
    assert verify_bundle(b.encode(), b.vkey).running


def test_step_completed_for_a_step_that_never_started_is_replay_invalid() -> None:
    sc = _retry_skip_fail()
    del sc.events[2:4]
    del sc.times[2:4]
    sc.events[2] = (
        "step.completed",
        {"orchestration_id": ORCH, "step_id": "s9", "attempt": 1, "output": 1},
    )
    b = kit.build_bundle(sc)
    with pytest.raises(ReplayInvalid, match="is for step 's9', which never started") as info:
        verify_bundle(b.encode(), b.vkey)
    assert info.value.step == "§6.1 step 5 (replay)"


def test_fold_is_strict_about_the_fields_it_reads() -> None:
    sc = _retry_skip_fail()
    del sc.events[8][1]["retrying"]
    b = kit.build_bundle(sc)
    with pytest.raises(ReplayInvalid, match=r"step.failed\): payload lacks what §7.3 reads"):
        verify_bundle(b.encode(), b.vkey)


def test_first_event_must_be_orchestration_created() -> None:
    sc = _retry_skip_fail()
    sc.events.insert(0, sc.events.pop(1))
    b = kit.build_bundle(sc)
    with pytest.raises(ReplayInvalid, match=r"comes before orchestration\.created"):
        verify_bundle(b.encode(), b.vkey)


def test_regression_timeline_shows_steps_as_the_projection_does() -> None:
    """``maip-verify replay`` showed a step skipped before it started with no agent and
    no action, where §7.3 (and so the verified state) takes both from the definition
    ``orchestration.created`` recorded: an auditor saw two accounts of the same step."""
    sc = _retry_skip_fail()
    b = kit.build_bundle(sc)
    timeline = build_timeline(b.encode(), b.vkey)
    assert timeline.verified
    fields = ("step_id", "agent_id", "action", "status", "attempts", "started_at", "completed_at")
    shown = [{f: getattr(s, f) for f in fields} for s in timeline.steps]
    assert shown == [{f: s[f] for f in fields} for s in sc.state["steps"]]
    assert "step s1: agent a2, action tool, skipped" in render(timeline, "text")


def _decided_and_failed(*, recorded: bool) -> kit.Scenario:
    """:func:`_retry_skip_fail` with a ``decision.made`` in s2's attempt. With
    ``recorded``, ``step.failed`` has its ``kind`` and ``decision.made`` its ``attempt``
    (§7.2); without, the leaves are as written before either was recorded."""
    sc = _retry_skip_fail()
    decision: dict[str, Any] = {
        "orchestration_id": ORCH,
        "step_id": "s2",
        "condition": {"exists": "input"},
        "values": {"input": {"x": 1}},
        "branch": "then",
        "skipped": [],
    }
    if recorded:
        decision["attempt"] = 1
        sc.events[3][1]["kind"] = "step_failed"  # s0's retried timeout
        sc.events[8][1]["kind"] = "provider_error"
        sc.events[9][1]["reason"] = sc.state["reason"] = "provider_error"
    sc.events.insert(8, ("decision.made", decision))
    sc.times.append(f"2026-02-01T00:00:{len(sc.times) + 1:02d}.000000Z")
    sc.state["steps"][2]["completed_at"] = sc.times[9]
    sc.state["completed_at"] = sc.times[10]
    return sc


@pytest.mark.parametrize("recorded", [False, True], ids=["old-leaves", "new-leaves"])
def test_regression_leaves_without_kind_or_attempt_decode_fold_and_verify(
    recorded: bool,
) -> None:
    """``step.failed`` gained ``kind`` and ``decision.made`` ``attempt`` within leaf
    format v1 (§2: optional fields): leaves written before them, which lack them, still
    verify and fold to the same state in the verifier and in the engine, which reads
    each as ``null``; leaves with them verify as well."""
    sc = _decided_and_failed(recorded=recorded)
    b = kit.build_bundle(sc)
    failed = [leaf for leaf in b.leaves if b'"type":"step.failed"' in leaf]
    decided = [leaf for leaf in b.leaves if b'"type":"decision.made"' in leaf]
    assert [b'"kind":' in leaf for leaf in failed] == [recorded, recorded]
    assert [b'"attempt":' in leaf for leaf in decided] == [recorded]
    report = verify_bundle(b.encode(), b.vkey)  # the hand-written §7.3 state
    assert (report.status, report.event_count) == ("failed", len(sc.events))

    state_mod = pytest.importorskip("ledger.orchestration.state")
    events_mod = pytest.importorskip("ledger.orchestration.events")
    from ledger.events import decode_leaf

    events = [decode_leaf(leaf, events_mod.ORCHESTRATION_EVENTS) for leaf in b.leaves]
    kinds = [e.payload.kind for e in events if e.type == "step.failed"]
    attempts = [e.payload.attempt for e in events if e.type == "decision.made"]
    assert (kinds, attempts) == (
        (["step_failed", "provider_error"], [1]) if recorded else ([None, None], [None])
    )
    engine_state = msgspec.to_builtins(state_mod.replay(events))
    b.lines[-1] = {"kind": "state", "state": engine_state}
    verify_bundle(b.encode(), b.vkey)  # raises StateMismatch naming fields if they differ


def test_timeline_shows_what_failed_a_step() -> None:
    """The auditor's timeline says, beside a failed step's status, the ``kind`` its
    final ``step.failed`` records (the reason of the run it ended); a leaf written
    before ``kind`` shows the status alone."""
    for recorded, kind, status in (
        (True, "provider_error", "failed (provider_error)"),
        (False, None, "failed"),
    ):
        b = kit.build_bundle(_decided_and_failed(recorded=recorded))
        timeline = build_timeline(b.encode(), b.vkey)
        assert timeline.verified
        shown = {s.step_id: (s.status, s.failure_kind) for s in timeline.steps}
        # s0 failed once with a retry (kind step_failed) and then completed.
        assert shown == {"s0": ("completed", None), "s1": ("skipped", None), "s2": ("failed", kind)}
        assert f"step s2: agent a1, action llm, {status}, attempts 1" in render(timeline, "text")
        assert f"{status}, attempts 1" in render(timeline, "html")


# ---- agreement with the engine's fold ---------------------------------------------------


@pytest.mark.parametrize(
    "make", [_retry_skip_fail, lambda: kit.scenario(3, 2)], ids=["retry", "plain"]
)
def test_engine_fold_and_verifier_fold_agree(make: Any) -> None:
    state_mod = pytest.importorskip("ledger.orchestration.state")
    events_mod = pytest.importorskip("ledger.orchestration.events")
    from ledger.events import decode_leaf

    b = kit.build_bundle(make())
    events = [decode_leaf(leaf, events_mod.ORCHESTRATION_EVENTS) for leaf in b.leaves]
    engine_state = msgspec.to_builtins(state_mod.replay(events))
    b.lines[-1] = {"kind": "state", "state": engine_state}
    verify_bundle(b.encode(), b.vkey)  # raises StateMismatch naming fields if they differ


def test_regression_skipped_step_reads_the_definition_as_the_engine_does() -> None:
    """For a step skipped before it started, the verifier also took ``agent_id`` (and a
    step named by ``step_id``) from the definition, keys §7.2's definition does not
    have and the engine's fold does not read: the same events gave two states."""
    state_mod = pytest.importorskip("ledger.orchestration.state")
    events_mod = pytest.importorskip("ledger.orchestration.events")
    from ledger.events import decode_leaf

    sc = _retry_skip_fail()
    steps = sc.events[0][1]["definition"]["steps"]
    steps[1] = {"id": "s1", "action": "tool", "agent_id": "a2", "depends_on": ["s0"]}
    steps.append({"step_id": "s3", "action": "tool", "agent": "a2"})
    sc.events.insert(
        7,
        ("step.skipped", {"orchestration_id": ORCH, "step_id": "s3", "reason": "branch not taken"}),
    )
    sc.times.append(f"2026-02-01T00:00:{len(sc.times) + 1:02d}.000000Z")
    b = kit.build_bundle(sc)
    events = [decode_leaf(leaf, events_mod.ORCHESTRATION_EVENTS) for leaf in b.leaves]
    engine_state = msgspec.to_builtins(state_mod.replay(events))
    b.lines[-1] = {"kind": "state", "state": engine_state}
    verify_bundle(b.encode(), b.vkey)  # raises StateMismatch naming fields if they differ
    shown = build_timeline(b.encode(), b.vkey).steps
    assert [(s.step_id, s.agent_id, s.action) for s in shown if s.status == "skipped"] == [
        (s["step_id"], s["agent_id"], s["action"])
        for s in engine_state["steps"]
        if s["status"] == "skipped"
    ]


# ---- the streamed trailer ---------------------------------------------------------------


def test_state_trailer_longer_than_the_line_limit_is_streamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = kit.build_bundle(kit.scenario(n_steps=20, extra_per_step=10), batch=50)
    data = b.encode()
    longest_event = max(len(line) for line in data.splitlines()[:-1])
    assert len(data.splitlines()[-1]) > 3 * longest_event
    monkeypatch.setattr(lines_mod, "LINE_LIMIT", longest_event + 10)
    monkeypatch.setattr(lines_mod, "_BLOCK", 700)
    streamed: list[int] = []

    def spy(*args: Any) -> Any:
        streamed.append(1)
        return parse_stream(*args)

    monkeypatch.setattr(bundle_mod, "parse_stream", spy)
    report = verify_bundle(data, b.vkey)
    assert report.event_count == 243
    assert streamed == [1]
    # A claimed receipts list that differs is still caught on the streamed path.
    b.lines[-1]["state"]["receipts"][100] = b.lines[-1]["state"]["receipts"][101]
    with pytest.raises(StateMismatch, match=r"state.receipts\[100\]: claimed"):
        verify_bundle(b.encode(), b.vkey)


def test_long_line_that_is_not_the_trailer_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    b = kit.build_bundle(kit.scenario(n_steps=1, extra_per_step=0))
    monkeypatch.setattr(lines_mod, "LINE_LIMIT", 500)
    monkeypatch.setattr(lines_mod, "_BLOCK", 300)
    with pytest.raises(Exception, match="is longer than 500 bytes and is not the state trailer"):
        verify_bundle(b.encode(), b.vkey)


def test_stream_parser_number_split_across_chunks() -> None:
    """Regression: '1.5' split as '1' | '.5' was read as 1 and then failed."""
    data = b'{"kind":"state","state":{"x":1.5,"y":[-0.0,1e-7],"receipts":["a","b"]}}'
    items: list[object] = []
    got = parse_stream(
        iter(bytes([c]) for c in data),
        ("state", "receipts"),
        items.append,
        lambda b: items.extend(x.decode() for x in b),
    )
    assert got == {"kind": "state", "state": {"x": 1.5, "y": [-0.0, 1e-7], "receipts": STREAMED}}
    assert items == ["a", "b"]


def test_deeply_nested_values_are_compared_without_recursion_error() -> None:
    """Regression: the field-by-field diff recursed once per nesting level."""
    from verifier._projection import diff_state

    claimed: Any = []
    replay: Any = []
    for _ in range(300):
        claimed, replay = [claimed], [replay]
    assert diff_state({"input": claimed}, {"input": replay}) == []
    for _ in range(4700):
        claimed = [claimed]
    replay = [1]
    for _ in range(5000):
        replay = [replay]
    (difference,) = diff_state({"input": claimed}, {"input": replay})
    assert difference.startswith("state.input[0][0]")
    assert difference.endswith("claimed and replayed values differ (or nest too deep to compare)")


# ---- the receipts digest ------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, RECEIPTS_BATCH - 1, RECEIPTS_BATCH, 2 * RECEIPTS_BATCH + 3])
def test_receipts_digest_hashed_in_batches_equals_one_id_at_a_time(n: int) -> None:
    """Batching is invisible: count, the first ids kept and the digest are those of
    hashing every id followed by a newline, whichever way ids were added."""
    ids = [kit.uuid_from_ulid_int(i * 7919) for i in range(n)]
    digest = ReceiptsDigest()
    for i, rid in enumerate(ids):
        if i % 3:
            digest.add(rid)
        else:
            digest.pending.append(rid)  # as the bundle loop does, flushing by itself
            if len(digest.pending) >= RECEIPTS_BATCH:
                digest.flush()
    assert digest.count == n
    assert digest.digest() == hashlib.sha256(b"".join(r.encode() + b"\n" for r in ids)).digest()
    assert digest.first == ids[:RECEIPTS_KEPT]
    assert digest.count == n
    matcher = ReceiptsMatcher(digest)
    for rid in ids:
        matcher.feed(rid)
    assert matcher.differences() == []
