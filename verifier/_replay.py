"""The auditor's timeline of a bundle (``maip-verify replay``), ``specs/log-format.md`` §6-§7.

:func:`build_timeline` verifies the bundle (§6.1, :func:`verify_bundle`). A verified
bundle's timeline holds exactly the events verify_bundle verified, handed over by its
``on_event`` hook. A bundle that fails gets a second, tolerant pass over the same lines
(:func:`bundle_lines`, split at LF only) that checks each event on its own (inclusion in
the header checkpoint, its receipt against its checkpoint line, belonging), so that
every step of the timeline carries its own verified or failed mark.

The timeline itself (``verifier._timeline``) and its text, JSON and HTML renderers
(``verifier._timeline_render``) are re-exported here.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from verifier._bundle import BUNDLE_FORMAT, verify_bundle
from verifier._bundle_lines import LINE_LIMIT, bundle_lines
from verifier._checkpoint import Checkpoint, verify_checkpoint
from verifier._errors import MalformedInput, ProofInvalid, ReceiptMismatch, VerificationError
from verifier._ids import receipt_id_for
from verifier._leaf import decode_leaf, is_canonical
from verifier._merkle import decode_proof, leaf_hash, verify_consistency, verify_inclusion
from verifier._note import VerifierKey, parse_vkey
from verifier._timeline import (
    Timeline,
    TimelineEvent,
    TimelineStep,
    assemble_timeline,
    timeline_event,
)
from verifier._timeline_render import render
from verifier._wire import (
    BundleCheckpoint,
    BundleEvent,
    BundleHeader,
    BundleLine,
    BundleState,
    Envelope,
)

__all__ = ["Timeline", "TimelineEvent", "TimelineStep", "build_timeline", "render"]

_LINE = msgspec.json.Decoder(BundleLine)


def _check_event(
    line: BundleEvent,
    header: BundleHeader,
    head: Checkpoint | None,
    roots: dict[int, bytes],
) -> tuple[Any, str | None]:
    """Per-event checks of §6.1 steps 2-3; returns (envelope or None, problem or None)."""
    env = None
    if head is None:
        try:
            env = decode_leaf(line.leaf)
        except VerificationError:
            env = None
        return env, "the header checkpoint does not verify"
    try:
        lh = leaf_hash(line.leaf)
        proof = decode_proof(line.inclusion_proof, "inclusion proof")
        verify_inclusion(lh, line.leaf_index, head.size, proof, head.root)
        r = line.receipt
        if r.leaf_index != line.leaf_index or r.leaf_hash != lh:
            raise ReceiptMismatch("the receipt is for another leaf")
        root = roots.get(r.tree_size)
        if root is None:
            raise ProofInvalid(f"no verified checkpoint of size {r.tree_size} for the receipt")
        rproof = decode_proof(r.inclusion_proof, "receipt proof")
        verify_inclusion(lh, r.leaf_index, r.tree_size, rproof, root)
        env = decode_leaf(line.leaf)
        if (env.tenant_id, env.stream_id) != (header.tenant_id, header.orchestration_id):
            raise ReceiptMismatch("the event belongs to another tenant or orchestration")
        if env.event_id != r.event_id or r.receipt_id != receipt_id_for(env.event_id):
            raise ReceiptMismatch("the receipt's ids do not match the event")
    except VerificationError as e:
        if env is None:
            try:
                env = decode_leaf(line.leaf)
            except VerificationError:
                env = None
        return env, e.message
    return env, None


def build_timeline(bundle: bytes, vkey: str | VerifierKey) -> Timeline:
    """Verify ``bundle`` and build its timeline; ``failure`` names the first failing step.

    A verified bundle's timeline is made of exactly the events :func:`verify_bundle`
    verified (its ``on_event`` hook), so it cannot show any other. Only a bundle that
    fails gets the tolerant second pass, over the same lines (:func:`bundle_lines`).
    """
    key = parse_vkey(vkey)
    verified: list[TimelineEvent] = []

    def shown(line: BundleEvent, env: Envelope) -> None:
        # verify_bundle reads only the payloads it folds; this shows every one, so each
        # must read the same to every JSON reader (§2) before it is shown as verified.
        if not is_canonical(env.payload):
            raise MalformedInput(
                f"event {env.stream_seq} ({env.type}): the payload is not the canonical "
                "encoding (§2: sorted keys, each once, no whitespace)"
            )
        verified.append(timeline_event(line.leaf_index, env, None))

    try:
        report = verify_bundle(bundle, key, on_event=shown)
    except VerificationError as e:
        return _tolerant_timeline(bundle, key, str(e))
    return assemble_timeline(
        origin=report.origin,
        tenant_id=report.tenant_id,
        orchestration_id=report.orchestration_id,
        tree_size=report.tree_size,
        status=report.status,
        failure=None,
        events=verified,
    )


def _tolerant_timeline(bundle: bytes, key: VerifierKey, failure: str) -> Timeline:
    """The timeline of a bundle that failed: each event checked on its own."""
    header: BundleHeader | None = None
    head: Checkpoint | None = None
    roots: dict[int, bytes] = {}
    events: list[TimelineEvent] = []
    for item in bundle_lines(bundle):
        if isinstance(item, bytes):
            raw = item
        else:
            # A line longer than LINE_LIMIT: verify_bundle allows only the state trailer
            # to be that long, and the timeline does not show the trailer.
            raw = b"".join(item)
            try:
                long_line = _LINE.decode(raw)
            except (msgspec.DecodeError, ValueError, RecursionError):
                long_line = None
            if not isinstance(long_line, BundleState):
                events.append(
                    TimelineEvent(
                        None,
                        "(unreadable line)",
                        None,
                        None,
                        -1,
                        False,
                        f"a line longer than {LINE_LIMIT} bytes that is not the state trailer",
                        None,
                    )
                )
            continue
        if not raw.strip():
            continue
        try:
            line = _LINE.decode(raw)
        except (msgspec.DecodeError, ValueError, RecursionError) as e:
            events.append(
                TimelineEvent(None, "(unreadable line)", None, None, -1, False, str(e), None)
            )
            continue
        if isinstance(line, BundleHeader) and header is not None:
            # verify_bundle reads the first header and fails at another: so does this.
            events.append(
                TimelineEvent(
                    None,
                    "(second header)",
                    None,
                    None,
                    -1,
                    False,
                    "a second header line: the timeline keeps the first",
                    None,
                )
            )
        elif isinstance(line, BundleHeader):
            header = line
            if line.format != BUNDLE_FORMAT:
                raise MalformedInput(f"bundle format {line.format!r} is not {BUNDLE_FORMAT!r}")
            try:
                head = verify_checkpoint(line.checkpoint, key)
                roots[head.size] = head.root
            except VerificationError:
                head = None
        elif isinstance(line, BundleCheckpoint) and head is not None:
            try:
                cp = verify_checkpoint(line.checkpoint, key)
                verify_consistency(cp.size, cp.root, head.size, head.root, line.consistency_proof)
                roots[cp.size] = cp.root
            except VerificationError:
                pass
        elif isinstance(line, BundleEvent) and header is not None:
            env, problem = _check_event(line, header, head, roots)
            if env is None:
                events.append(
                    TimelineEvent(
                        None,
                        "(undecodable leaf)",
                        None,
                        None,
                        line.leaf_index,
                        False,
                        problem,
                        base64.b64encode(line.leaf).decode(),
                    )
                )
            else:
                events.append(timeline_event(line.leaf_index, env, problem))
    if header is None:
        raise MalformedInput("the bundle has no header line")
    return assemble_timeline(
        origin=header.origin,
        tenant_id=header.tenant_id,
        orchestration_id=header.orchestration_id,
        tree_size=head.size if head else None,
        status=None,
        failure=failure,
        events=events,
    )
