"""Named regressions for bugs found in the verifier."""

from __future__ import annotations

import base64
import hashlib
import unicodedata
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import verifier_testkit as kit
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.note import NoteSigner, sign_note
from verifier import (
    BundleIncomplete,
    MalformedInput,
    ReplayInvalid,
    verify_bundle,
    verify_checkpoint,
    verify_receipt,
)
from verifier._note import parse_vkey
from verifier._replay import Timeline, build_timeline, render
from verifier.cli import main


def _signer_whose_vkey_has_a_plus() -> NoteSigner:
    for seed in range(256):
        signer = NoteSigner(
            "plus.example/log", Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        )
        if signer.verifier.vkey.count("+") > 2:
            return signer
    raise AssertionError("no seed gave a vkey with '+' in its base64")


def test_regression_vkey_with_plus_in_base64_parses() -> None:
    """A standard-base64 key often contains '+': splitting on every '+' rejected it."""
    signer = _signer_whose_vkey_has_a_plus()
    parsed = parse_vkey(signer.verifier.vkey)
    assert parsed.public_key == signer.verifier.public_key
    note = sign_note(f"{signer.name}\n1\n{'A' * 43}=\n", signer)
    assert verify_checkpoint(note, signer.verifier.vkey).size == 1


def test_regression_a_checkpoint_of_size_0_must_have_the_empty_trees_root() -> None:
    # Any signed root was accepted for the empty tree, which has exactly one.
    signer = _signer_whose_vkey_has_a_plus()
    with pytest.raises(MalformedInput, match="empty tree's root"):
        verify_checkpoint(
            sign_note(f"{signer.name}\n0\n{'A' * 43}=\n", signer), signer.verifier.vkey
        )
    empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert (
        verify_checkpoint(
            sign_note(f"{signer.name}\n0\n{empty}\n", signer), signer.verifier.vkey
        ).size
        == 0
    )


def test_regression_receipt_of_tree_size_minus_one_is_not_checked_against_the_header() -> None:
    """The bundle loop started with ``receipt_size = -1`` as "no receipt cursor yet", so
    a first receipt claiming tree size -1 skipped the checkpoint lookup and was checked
    against the header checkpoint: with the header's proof in it, it verified."""
    b = kit.build_bundle(kit.scenario(n_steps=1, extra_per_step=0))
    first = next(line for line in b.lines if line["kind"] == "event")
    first["receipt"]["tree_size"] = -1
    first["receipt"]["inclusion_proof"] = first["inclusion_proof"]
    with pytest.raises(BundleIncomplete, match=r"the receipt's checkpoint \(tree size -1\)"):
        verify_bundle(b.encode(), b.vkey)


def _bundle_with_an_event_hidden_behind_carriage_returns() -> kit.Bundle:
    """A copy of event line k hidden in an unknown receipt field of event line j (§4:
    verifiers ignore unknown receipt fields), framed by CRs: JSON whitespace inside
    one LF-terminated line, but line breaks to ``bytes.splitlines``."""
    b = kit.build_bundle(kit.scenario(n_steps=2, extra_per_step=2), batch=3)
    ev = b.event_line_numbers()
    j, k = ev[3], ev[4]
    b.lines[j]["receipt"]["x"] = msgspec.Raw(b"\r" + msgspec.json.encode(b.lines[k]) + b"\r")
    return b


def _shown_seqs(timeline: Timeline) -> list[int]:
    """Every event the timeline shows, by stream_seq (-1: an unreadable line or leaf)."""
    shown = [*timeline.orchestration, *(e for s in timeline.steps for e in s.events)]
    return sorted(e.seq if e.seq is not None else -1 for e in shown)


def test_regression_replay_shows_the_lines_verify_bundle_verified() -> None:
    """build_timeline split the bundle with ``bytes.splitlines`` (which breaks at CR),
    verify_bundle at LF only: a verified bundle's timeline lost event 4, showed event 5
    twice (both marked verified) and two unreadable lines."""
    b = _bundle_with_an_event_hidden_behind_carriage_returns()
    data = b.encode()
    assert verify_bundle(data, b.vkey).event_count == 11
    timeline = build_timeline(data, b.vkey)
    assert timeline.verified
    assert _shown_seqs(timeline) == list(range(1, 12))


def test_regression_replay_of_a_failing_bundle_splits_lines_as_verify_bundle_does() -> None:
    """The per-event marks of a bundle that fails (here at the state trailer) come from
    the same lines verify_bundle read, not from another split of the bytes."""
    b = _bundle_with_an_event_hidden_behind_carriage_returns()
    b.lines[-1]["state"]["status"] = "completed-elsewhere"
    timeline = build_timeline(b.encode(), b.vkey)
    assert not timeline.verified
    assert timeline.failure is not None
    assert "claimed state differs from replay" in timeline.failure
    assert _shown_seqs(timeline) == list(range(1, 12))


def test_regression_vkey_name_with_a_lone_surrogate_is_malformed() -> None:
    """C2SP signed-note: a key name is well-formed UTF-8. A lone surrogate (what Python
    makes of a non-UTF-8 byte in argv) passed the name check and raised
    UnicodeEncodeError when the key ID was computed."""
    rest = kit.signer().verifier.vkey.split("+", 1)[1]
    with pytest.raises(MalformedInput, match="verifier key name"):
        parse_vkey("\udcff+" + rest)


def test_regression_replay_shows_an_event_whose_step_id_is_not_a_string() -> None:
    """The timeline left out of its orchestration events every event whose payload has
    a ``step_id`` key, and grouped into steps only those whose ``step_id`` is a string:
    an ``orchestration.completed`` carrying ``"step_id": null`` verified (the fold reads
    only ``results``) and vanished from the timeline, in every format."""
    sc = kit.scenario(n_steps=1, extra_per_step=0)
    etype, payload = sc.events[-1]
    sc.events[-1] = (etype, {**payload, "step_id": None})
    b = kit.build_bundle(sc)
    assert verify_bundle(b.encode(), b.vkey).event_count == 5
    timeline = build_timeline(b.encode(), b.vkey)
    assert timeline.verified
    assert _shown_seqs(timeline) == [1, 2, 3, 4, 5]
    text = render(timeline, "text")
    assert "#5 2026-01-01T00:00:00.000005Z orchestration.completed" in text
    assert "step_id: null" in text


def _controls(text: str) -> set[str]:
    """Characters a terminal or a browser acts on rather than shows (C0 but LF, C1, DEL,
    format characters such as bidi overrides, line and paragraph separators)."""
    return {
        c for c in text if c != "\n" and unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp", "Cs"}
    }


def test_regression_replay_text_and_html_show_control_characters_escaped() -> None:
    """The text timeline wrote payload keys, event types and step ids as they were: a
    key holding a newline forged a verified-looking event line, ESC sequences reached
    the terminal, and a bidi override (U+202E) showed "0001" as "1000" in the text and
    the HTML timeline."""
    forged = "\n  \u2713 #9 2026-01-01T00:00:09.000000Z orchestration.cancelled"
    sc = kit.scenario(n_steps=1, extra_per_step=0)
    etype, payload = sc.events[2]
    sc.events[2] = (etype, {**payload, "note" + forged + "\x1b[8m": "\u202e0001\x9b2J"})
    b = kit.build_bundle(sc)
    timeline = build_timeline(b.encode(), b.vkey)
    assert timeline.verified
    text = render(timeline, "text")
    assert _controls(text) == set()
    assert "orchestration.cancelled" not in text.split("\n")[-1]
    assert not any(line.startswith("  \u2713 #9") for line in text.split("\n"))
    assert "\\u202e0001" in text
    page = render(timeline, "html")
    assert _controls(page) == set()
    assert "\\u202e0001" in page


def test_regression_cli_lines_that_hold_input_show_it_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``maip-verify bundle`` printed the leaves' tenant id as it was (ESC sequences and
    bidi overrides reached the terminal), and a parse error quoted an unknown field name
    with its ESC and newline in it (two stderr lines, where the CLI promises one)."""
    tenant = "tenant-a\x1b[2J\u202e"
    sc = kit.scenario(n_steps=1, extra_per_step=0)
    sc.state["tenant_id"] = tenant
    b = kit.build_bundle(sc, tenant=tenant)
    path = tmp_path / "b.jsonl"
    path.write_bytes(b.encode())
    assert main(["bundle", str(path), "--vkey", b.vkey]) == 0
    out, _ = capsys.readouterr()
    assert _controls(out) == set()
    assert "(tenant tenant-a\\u001b[2J\\u202e)" in out
    b.lines[1]["x\x1b[31m\nOK"] = 1
    path.write_bytes(b.encode())
    assert main(["bundle", str(path), "--vkey", b.vkey]) == 2
    _, err = capsys.readouterr()
    assert _controls(err) == set()
    assert err.count("\n") == 1
    assert "x\\u001b[31m" in err


def test_regression_long_trailer_without_state_is_malformed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line longer than LINE_LIMIT with ``"kind": "state"`` and one other member (not
    ``state``) raised KeyError: a traceback and exit 1 ("not verified") instead of one
    line on stderr and exit 2."""
    b = kit.build_bundle(kit.scenario(n_steps=1, extra_per_step=0))
    b.lines[-1] = {"kind": "state", "pad": "x" * (2 << 20)}
    with pytest.raises(MalformedInput, match="not the state trailer"):
        verify_bundle(b.encode(), b.vkey)
    path = tmp_path / "b.jsonl"
    path.write_bytes(b.encode())
    assert main(["bundle", str(path), "--vkey", b.vkey]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _other_stream_first(seq: int, leaf: bytes) -> bytes:
    """Event 3's leaf with a second ``stream_id`` member, another orchestration's, first:
    a reader that keeps the first of two members reads another stream than msgspec."""
    if seq != 3:
        return leaf
    other = b'"stream_id":"0192f9c3-0000-7000-8000-000000000000",'
    return leaf.replace(b'"stream_id":', other + b'"stream_id":', 1)


def test_regression_leaf_that_is_not_the_canonical_encoding_is_rejected() -> None:
    """§2: a leaf is the canonical JSON encoding of one event. The verifier accepted any
    JSON msgspec decodes: a leaf naming two streams (duplicate ``stream_id``, msgspec
    keeping the last) verified in a bundle of one of them and as a receipt, as did
    whitespace and unsorted keys; readers that keep the first member, or reject the
    leaf, see another event than the report shows."""
    sc = kit.scenario(n_steps=1, extra_per_step=0)
    b = kit.build_bundle(sc, rewrite_leaf=_other_stream_first)
    with pytest.raises(MalformedInput, match="canonical") as e:
        verify_bundle(b.encode(), b.vkey)
    assert e.value.step == "§6.1 step 3 (belonging)"
    assert not build_timeline(b.encode(), b.vkey).verified
    with pytest.raises(MalformedInput, match="canonical") as e:
        verify_receipt(b.receipts[2], b.leaves[2], b.vkey)
    assert e.value.step == "§4.1 step 4 (event id)"
    for rewrite in (
        lambda seq, leaf: leaf.replace(b'"v":1', b'"v": 1') if seq == 2 else leaf,
        lambda seq, leaf: b'{"v":1,' + leaf[1:].replace(b',"v":1}', b"}") if seq == 2 else leaf,
    ):
        b = kit.build_bundle(sc, rewrite_leaf=rewrite)
        with pytest.raises(MalformedInput, match="canonical"):
            verify_bundle(b.encode(), b.vkey)


def _payload_member_twice(target: int) -> Callable[[int, bytes], bytes]:
    def rewrite(seq: int, leaf: bytes) -> bytes:
        if seq != target:
            return leaf
        return leaf.replace(b'"payload":{', b'"payload":{"orchestration_id":"other",', 1)

    return rewrite


def test_regression_a_bundle_checks_every_envelope_and_the_payloads_it_reads() -> None:
    """A whole-leaf canonical check of every event cost a bundle about a fifth of its
    speed (every payload decoded and encoded again, though it reads only the payloads
    it folds). Now: each envelope exactly, each folded payload whole; a payload the
    bundle does not read is vouched for as bytes only, and the timeline, which shows
    it, checks it whole, as a receipt check does."""
    sc = kit.scenario(n_steps=1, extra_per_step=1)  # 3 step.started, 4 llm.requested
    b = kit.build_bundle(sc, rewrite_leaf=_payload_member_twice(3))
    with pytest.raises(MalformedInput, match="canonical") as e:
        verify_bundle(b.encode(), b.vkey)
    assert e.value.step == "§6.1 step 5 (replay)"
    b = kit.build_bundle(sc, rewrite_leaf=_payload_member_twice(4))
    assert verify_bundle(b.encode(), b.vkey).event_count == len(sc.events)
    assert not build_timeline(b.encode(), b.vkey).verified
    with pytest.raises(MalformedInput, match="canonical"):
        verify_receipt(b.receipts[3], b.leaves[3], b.vkey)


_OTHER_ORCH = "0192f9c3-0000-7000-8000-000000000000"


def test_regression_created_payload_of_another_orchestration_fails_replay() -> None:
    """§7: the stream id is the orchestration's id. A bundle of orchestration A whose
    ``orchestration.created`` payload names B replayed to B's state (``orchestration_id``
    and ``id`` B's) and verified as A's: the claimed state of another orchestration
    was reported equal to the replay of this one."""
    sc = kit.scenario(n_steps=1, extra_per_step=0)
    sc.events[0][1]["orchestration_id"] = _OTHER_ORCH
    sc.state["orchestration_id"] = _OTHER_ORCH
    sc.state["id"] = "maip-orch:" + kit.ulid_from_int(int(_OTHER_ORCH.replace("-", ""), 16))
    b = kit.build_bundle(sc)
    with pytest.raises(ReplayInvalid, match=r"orchestration\.created") as e:
        verify_bundle(b.encode(), b.vkey)
    assert e.value.step == "§6.1 step 5 (replay)"


def test_regression_replay_shows_a_payload_orchestration_id_that_is_not_the_bundles() -> None:
    """The timeline hid every payload's ``orchestration_id``, so an event whose payload
    names another orchestration than its stream showed nothing of it."""
    sc = kit.scenario(n_steps=1, extra_per_step=0)
    sc.events[2][1]["orchestration_id"] = _OTHER_ORCH
    b = kit.build_bundle(sc)
    timeline = build_timeline(b.encode(), b.vkey)
    assert timeline.verified
    for fmt in ("text", "html"):
        page = render(timeline, fmt)
        assert page.count(_OTHER_ORCH) == 1
        assert page.count(kit.ORCH_ID) == (1 if fmt == "text" else 2)  # header (and title)


def test_regression_replay_of_a_bundle_with_two_headers_keeps_the_first() -> None:
    """verify_bundle reads the first header and fails at a second; the tolerant
    timeline took the last: a timeline titled orchestration B listed A's events, each
    marked verified (they were checked against A's header)."""
    a = kit.build_bundle(kit.scenario(n_steps=1, extra_per_step=0))
    sc = kit.scenario(n_steps=1, extra_per_step=0, orch_id=_OTHER_ORCH)
    b = kit.build_bundle(sc, stream=_OTHER_ORCH)
    data = b"".join(msgspec.json.encode(line) + b"\n" for line in [*a.lines[:-1], b.lines[0]])
    timeline = build_timeline(data, a.vkey)
    assert not timeline.verified
    assert timeline.orchestration_id == kit.ORCH_ID
    assert _shown_seqs(timeline) == [-1, 1, 2, 3, 4, 5]
    unreadable = [e for e in timeline.orchestration if e.seq is None]
    assert [e.verified for e in unreadable] == [False]
    assert unreadable[0].problem is not None
    assert "second header" in unreadable[0].problem
