"""Every form of tampering is caught, each with the precise message it gets.

Bundles are built with the writer (``ledger.note``/``ledger.checkpoint``/``ledger.events``)
by ``verifier_testkit``; each test edits one thing and checks step and message.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import msgspec
import pytest
import verifier_testkit as kit

from ledger.checkpoint import Checkpoint as WriterCheckpoint
from verifier import (
    BundleIncomplete,
    EventMismatch,
    MalformedInput,
    ProofInvalid,
    ReceiptMismatch,
    SignatureInvalid,
    StateMismatch,
    UnsupportedLeafVersion,
    VerificationError,
    verify_bundle,
    verify_inclusion,
    verify_receipt,
)
from verifier._merkle import inclusion_proof_length


@pytest.fixture(scope="module")
def good() -> kit.Bundle:
    return kit.build_bundle(kit.scenario(n_steps=3, extra_per_step=2), batch=4)


@pytest.fixture
def bundle(good: kit.Bundle) -> kit.Bundle:
    return copy.deepcopy(good)


def _events(b: kit.Bundle) -> list[dict[str, Any]]:
    return [line for line in b.lines if line["kind"] == "event"]


def _fails(b: kit.Bundle, exc: type[VerificationError], step: str, match: str) -> VerificationError:
    with pytest.raises(exc, match=match) as info:
        verify_bundle(b.encode(), b.vkey)
    assert info.value.step is not None
    assert step in info.value.step
    return info.value


def test_untampered_bundle_verifies(bundle: kit.Bundle) -> None:
    report = verify_bundle(bundle.encode(), bundle.vkey)
    assert report.event_count == len(_events(bundle)) == 15
    assert report.status == "completed"
    assert not report.running
    assert report.header_vkey_matches


def test_edited_payload_byte_is_caught_at_inclusion(bundle: kit.Bundle) -> None:
    event = _events(bundle)[4]
    leaf = base64.b64decode(event["leaf"])
    i = leaf.index(b'"payload":{') + 20
    edited = leaf[:i] + bytes([leaf[i] ^ 0x01]) + leaf[i + 1 :]
    event["leaf"] = base64.b64encode(edited).decode()
    index = event["leaf_index"]
    err = _fails(
        bundle,
        ProofInvalid,
        "step 2 (inclusion)",
        rf"event 5 \(line \d+\): inclusion proof for index {index} does not lead to the root",
    )
    assert "tree of size" in str(err)


def test_swapped_event_order_is_caught_at_completeness(bundle: kit.Bundle) -> None:
    lines = bundle.lines
    n3, n4 = [i for i, line in enumerate(lines) if line["kind"] == "event"][2:4]
    # Keep any checkpoint line in place: swap only the two event lines.
    lines[n3], lines[n4] = lines[n4], lines[n3]
    _fails(
        bundle,
        BundleIncomplete,
        "step 4 (completeness)",
        r"stream_seq 4 where 3 was expected: event\(s\) 3 are missing or out of order",
    )


def test_dropped_event_is_caught_at_completeness(bundle: kit.Bundle) -> None:
    del bundle.lines[bundle.event_line_numbers()[5]]
    _fails(
        bundle,
        BundleIncomplete,
        "step 4 (completeness)",
        r"stream_seq 7 where 6 was expected: event\(s\) 6 are missing",
    )


def test_dropped_last_event_is_caught_by_event_count(bundle: kit.Bundle) -> None:
    del bundle.lines[bundle.event_line_numbers()[-1]]
    _fails(
        bundle,
        BundleIncomplete,
        "step 4 (completeness)",
        "the header's event_count is 15, but the bundle has 14 events",
    )


def test_duplicated_event_is_caught_at_completeness(bundle: kit.Bundle) -> None:
    n = bundle.event_line_numbers()[2]
    bundle.lines.insert(n + 1, copy.deepcopy(bundle.lines[n]))
    _fails(
        bundle,
        BundleIncomplete,
        "step 4 (completeness)",
        "stream_seq 3 where 4 was expected: an event is repeated or out of order",
    )


def test_wrong_key_is_rejected_at_checkpoint(bundle: kit.Bundle) -> None:
    other = kit.signer(seed=9).verifier.vkey
    with pytest.raises(
        SignatureInvalid, match="header checkpoint: signed note has no signature by the trusted key"
    ) as info:
        verify_bundle(bundle.encode(), other)
    assert info.value.step is not None
    assert "step 1 (checkpoint)" in info.value.step


def test_forged_checkpoint_body_is_rejected(bundle: kit.Bundle) -> None:
    header = bundle.lines[0]
    text, sigs = header["checkpoint"].split("\n\n")
    origin, size, _root = text.split("\n")
    forged_root = base64.b64encode(b"\x11" * 32).decode()
    header["checkpoint"] = f"{origin}\n{size}\n{forged_root}\n\n{sigs}"
    _fails(
        bundle,
        SignatureInvalid,
        "step 1 (checkpoint)",
        "the signature by trusted key 'maip-ledger.local/log' does not verify",
    )


def test_checkpoint_forged_with_an_impostor_key_of_the_same_name(bundle: kit.Bundle) -> None:
    impostor = kit.signer(seed=3)  # same name (the origin), different key
    header = bundle.lines[0]
    size = int(header["checkpoint"].split("\n")[1])
    header["checkpoint"] = WriterCheckpoint(kit.ORIGIN, size, b"\x22" * 32).sign(impostor)
    _fails(bundle, SignatureInvalid, "step 1 (checkpoint)", "no signature by the trusted key")


def test_receipt_checkpoint_on_a_fork_is_rejected(bundle: kit.Bundle) -> None:
    # A validly signed checkpoint line whose tree is not a prefix of the header's.
    line = next(line for line in bundle.lines if line["kind"] == "checkpoint")
    size = int(line["checkpoint"].split("\n")[1])
    line["checkpoint"] = WriterCheckpoint(kit.ORIGIN, size, b"\x33" * 32).sign(kit.signer())
    _fails(
        bundle,
        ProofInvalid,
        "step 1 (checkpoint)",
        "consistency proof does not lead to the old root",
    )


def test_proof_for_another_tree_size_is_rejected(bundle: kit.Bundle) -> None:
    # Present the receipt's proof (against its batch checkpoint) as the header proof.
    header_size = int(bundle.lines[0]["checkpoint"].split("\n")[1])
    for event in _events(bundle):
        r = event["receipt"]
        if inclusion_proof_length(r["leaf_index"], r["tree_size"]) != inclusion_proof_length(
            r["leaf_index"], header_size
        ):
            event["inclusion_proof"] = r["inclusion_proof"]
            break
    else:  # pragma: no cover - the fixture has such an event
        pytest.fail("no event whose proofs differ in length")
    _fails(
        bundle,
        ProofInvalid,
        "step 2 (inclusion)",
        rf"in a tree of size {header_size} needs \d+ \(a proof for another tree size\?\)",
    )


def test_index_outside_the_tree_is_rejected(bundle: kit.Bundle) -> None:
    header_size = int(bundle.lines[0]["checkpoint"].split("\n")[1])
    _events(bundle)[0]["leaf_index"] = header_size
    _fails(
        bundle,
        ProofInvalid,
        "step 2 (inclusion)",
        f"leaf index {header_size} is outside a tree of size {header_size}",
    )


def test_proof_hash_that_is_not_32_bytes_is_rejected(bundle: kit.Bundle) -> None:
    event = _events(bundle)[1]
    event["inclusion_proof"][1] = base64.b64encode(b"\x00" * 31).decode()
    _fails(bundle, ProofInvalid, "step 2 (inclusion)", "inclusion proof hash 1 is 31 bytes, not 32")


def test_claimed_state_that_differs_from_replay_is_reported_by_field(bundle: kit.Bundle) -> None:
    state = bundle.lines[-1]["state"]
    state["steps"][1]["status"] = "failed"
    state["results"] = {"answer": 5}
    err = _fails(bundle, StateMismatch, "step 5 (replay)", "claimed state differs from replay")
    assert isinstance(err, StateMismatch)
    assert err.differences == (
        "state.steps[1].status: claimed 'failed', replay 'completed'",
        "state.results.answer: claimed 5, replay 4",
    )


def test_claimed_receipts_that_differ_are_reported(bundle: kit.Bundle) -> None:
    receipts = bundle.lines[-1]["state"]["receipts"]
    receipts[2], receipts[3] = receipts[3], receipts[2]
    err = _fails(bundle, StateMismatch, "step 5 (replay)", r"state.receipts\[2\]: claimed")
    assert isinstance(err, StateMismatch)
    assert len(err.differences) == 1


def test_missing_state_field_is_reported(bundle: kit.Bundle) -> None:
    del bundle.lines[-1]["state"]["started_at"]
    _fails(bundle, StateMismatch, "step 5", "state.started_at: missing from the claimed state")


def test_receipt_with_another_leaf_hash_is_rejected(bundle: kit.Bundle) -> None:
    events = _events(bundle)
    events[3]["receipt"]["leaf_hash"] = events[4]["receipt"]["leaf_hash"]
    _fails(bundle, ReceiptMismatch, "step 2 (inclusion)", "receipt leaf_hash is not the hash")


def test_receipt_proof_against_its_checkpoint_is_checked(bundle: kit.Bundle) -> None:
    r = _events(bundle)[5]["receipt"]
    r["inclusion_proof"][0] = base64.b64encode(b"\x44" * 32).decode()
    _fails(bundle, ProofInvalid, "step 2 (inclusion)", f"index {r['leaf_index']} does not lead")


def test_receipt_without_its_checkpoint_line_is_incomplete(bundle: kit.Bundle) -> None:
    n = next(i for i, line in enumerate(bundle.lines) if line["kind"] == "checkpoint")
    del bundle.lines[n]
    _fails(bundle, BundleIncomplete, "step 2", r"the receipt's checkpoint \(tree size \d+\) is not")


def test_event_of_another_orchestration_is_rejected() -> None:
    sc = kit.scenario(n_steps=1, extra_per_step=0)
    b = kit.build_bundle(sc, stream="0192f9c3-0000-7000-8000-000000000000")
    b.lines[0]["orchestration_id"] = kit.ORCH_ID
    with pytest.raises(EventMismatch, match="is not the bundle's orchestration") as info:
        verify_bundle(b.encode(), b.vkey)
    assert info.value.step is not None
    assert "step 3 (belonging)" in info.value.step


def test_event_of_another_tenant_is_rejected(bundle: kit.Bundle) -> None:
    bundle.lines[0]["tenant_id"] = "tenant-z"
    _fails(
        bundle,
        EventMismatch,
        "step 3 (belonging)",
        "event tenant_id 'tenant-a' is not the bundle's 'tenant-z'",
    )


def test_wrong_receipt_id_is_rejected(bundle: kit.Bundle) -> None:
    _events(bundle)[2]["receipt"]["receipt_id"] = "00000000-0000-0000-0000-000000000000"
    _fails(bundle, ReceiptMismatch, "step 3 (belonging)", "is not derived from event")


def test_unterminated_orchestration_is_reported_running() -> None:
    b = kit.build_bundle(kit.scenario(n_steps=2, extra_per_step=0, terminal=None))
    report = verify_bundle(b.encode(), b.vkey)
    assert report.running
    assert report.status == "running"
    assert "still running (last event step.completed)" in report.steps[3]


def test_missing_state_trailer_is_incomplete(bundle: kit.Bundle) -> None:
    bundle.lines.pop()
    _fails(bundle, BundleIncomplete, "step 5", "the bundle has no state trailer")


def test_unknown_bundle_field_is_malformed(bundle: kit.Bundle) -> None:
    bundle.lines[0]["extra"] = 1
    _fails(bundle, MalformedInput, "bundle format", r"unknown field `extra`")


# ---- receipts (§4.1) ----------------------------------------------------------------


def test_receipt_verifies_and_ignores_unknown_fields(good: kit.Bundle) -> None:
    receipt = {**good.receipts[3], "orchestration_id": kit.ORCH_ID}
    verified = verify_receipt(msgspec.json.encode(receipt), good.leaves[3], good.vkey)
    assert verified.event.stream_seq == 4
    assert verified.checkpoint.size == receipt["tree_size"]


def test_receipt_with_an_edited_leaf_fails_step_3(good: kit.Bundle) -> None:
    leaf = good.leaves[3].replace(b"step 0", b"step 9")
    assert leaf != good.leaves[3]
    with pytest.raises(
        ReceiptMismatch, match="leaf bytes' hash is not the receipt's leaf_hash"
    ) as info:
        verify_receipt(good.receipts[3], leaf, good.vkey)
    assert info.value.step == "§4.1 step 3 (leaf hash)"


def test_receipt_with_another_tree_size_fails_step_2(good: kit.Bundle) -> None:
    receipt = {**good.receipts[0], "tree_size": good.receipts[0]["tree_size"] + 1}
    with pytest.raises(ReceiptMismatch, match="is not its checkpoint's size") as info:
        verify_receipt(receipt, good.leaves[0], good.vkey)
    assert info.value.step == "§4.1 step 2 (tree size)"


def test_receipt_under_a_wrong_key_fails_step_1(good: kit.Bundle) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify_receipt(good.receipts[0], good.leaves[0], kit.signer(seed=5).verifier.vkey)
    assert info.value.step == "§4.1 step 1 (checkpoint)"


def test_receipt_with_a_wrong_index_fails_step_5(good: kit.Bundle) -> None:
    receipt = {**good.receipts[1], "leaf_index": good.receipts[1]["leaf_index"] - 1}
    with pytest.raises(ProofInvalid) as info:
        verify_receipt(receipt, good.leaves[1], good.vkey)
    assert info.value.step == "§4.1 step 5 (inclusion)"


def test_leaf_of_an_unknown_version_is_unsupported(good: kit.Bundle) -> None:
    leaf = good.leaves[0].replace(b'"v":1', b'"v":2').replace(b'"tenant_id"', b'"tenant"')
    receipt = {**good.receipts[0], "leaf_hash": base64.b64encode(kit.leaf_hash(leaf)).decode()}
    with pytest.raises(UnsupportedLeafVersion, match="leaf format version 2 is not supported"):
        verify_receipt(receipt, leaf, good.vkey)


def test_inclusion_rejects_a_31_byte_proof_hash_before_hashing() -> None:
    with pytest.raises(ProofInvalid, match="inclusion proof hash 0 is 31 bytes, not 32"):
        verify_inclusion(b"\x00" * 32, 0, 2, [b"\x00" * 31], b"\x00" * 32)


def test_inclusion_rejects_an_index_outside_the_tree_first() -> None:
    # Bounds are checked before hash sizes: a short leaf hash does not mask it.
    with pytest.raises(ProofInvalid, match="leaf index 5 is outside a tree of size 5"):
        verify_inclusion(b"", 5, 5, [], b"")


def test_on_event_hook_sees_every_verified_event_in_order(bundle: kit.Bundle) -> None:
    seen: list[tuple[int, str]] = []
    verify_bundle(
        bundle.encode(),
        bundle.vkey,
        on_event=lambda _line, env: seen.append((env.stream_seq, env.type)),
    )
    assert [seq for seq, _ in seen] == list(range(1, 16))
    assert seen[0][1] == "orchestration.created"
    assert seen[-1][1] == "orchestration.completed"
