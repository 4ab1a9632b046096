"""Offline bundle verification, ``specs/log-format.md`` §6 and §6.1.

A bundle is JSON Lines: a header, checkpoint lines, event lines, a state trailer. It is
read line by line, so memory does not grow with the number of events:

- inclusion proofs against the header checkpoint, and receipt proofs against their
  per-batch checkpoints, go through :class:`~verifier._merkle.PathCursor` (bounded);
- each checkpoint line's signature is verified once; only its root is kept;
- the replay keeps the state (O(steps)) and a digest of the receipts list;
- the state trailer, whose ``receipts`` has one id per event, is parsed as a stream
  when it is longer than ``LINE_LIMIT``.

The five §6.1 steps run per event in order (2, 3, the sequence part of 4, the fold of
5); the final parts of 4 and 5 run at the trailer. The first failure stops the run and
raises a :class:`VerificationError` whose ``step`` names the §6.1 step.

The bundle's lines are cut by ``verifier._bundle_lines`` (where ``LINE_LIMIT`` is); the
step names and the :class:`Report` are in ``verifier._bundle_report``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec

from verifier import _bundle_lines
from verifier._bundle_lines import bundle_lines
from verifier._bundle_report import (
    STEP_BELONGING,
    STEP_CHECKPOINT,
    STEP_COMPLETENESS,
    STEP_INCLUSION,
    STEP_PARSE,
    STEP_REPLAY,
    Report,
)
from verifier._checkpoint import verify_checkpoint
from verifier._errors import (
    BundleIncomplete,
    EventMismatch,
    MalformedInput,
    ReceiptMismatch,
    StateMismatch,
    VerificationError,
)
from verifier._ids import receipt_id_for, receipt_id_matches
from verifier._jsonstream import STREAMED, parse_stream
from verifier._leaf import (
    ENVELOPE_DECODER,
    LEAF_VERSION,
    MAX_LEAF_BYTES,
    check_envelope,
    decode,
    decode_leaf,
)
from verifier._merkle import PathCursor, verify_consistency
from verifier._note import VerifierKey, parse_vkey
from verifier._projection import (
    FOLDED_TYPES,
    RECEIPTS_BATCH,
    TERMINAL_TYPES,
    Projection,
    ReceiptsMatcher,
    diff_state,
)
from verifier._quorum import WitnessPolicy, verify_witnessed
from verifier._wire import (
    BundleCheckpoint,
    BundleEvent,
    BundleHeader,
    BundleLine,
    BundleReceipt,
    BundleState,
    Envelope,
)

__all__ = [
    "BUNDLE_FORMAT",
    "STEP_BELONGING",
    "STEP_CHECKPOINT",
    "STEP_COMPLETENESS",
    "STEP_INCLUSION",
    "STEP_REPLAY",
    "EventHook",
    "Report",
    "verify_bundle",
]

BUNDLE_FORMAT = "maip-bundle/v1"
_RECEIPT_CURSORS = 8
_PROGRESS_EVERY = 4096

_LINE = msgspec.json.Decoder(BundleLine)
# Copying a started SHA-256 context costs less than setting up a new one with OpenSSL
# 3 (about 0.1-0.2 µs less per hash on the bench machine).
_LEAF_HASHER = hashlib.sha256(b"\x00")

#: Called for each verified event: (the event line, its decoded envelope).
EventHook = Callable[[BundleEvent, Envelope], None]


def _receipt_leaf_error(r: BundleReceipt, index: int) -> ReceiptMismatch:
    if r.leaf_index != index:
        return ReceiptMismatch(f"receipt leaf_index {r.leaf_index} is not the event's {index}")
    return ReceiptMismatch("receipt leaf_hash is not the hash of the event's leaf")


def _belonging_error(
    env: Envelope, r: BundleReceipt, tenant: str, stream: str
) -> VerificationError:
    if env.tenant_id != tenant:
        return EventMismatch(f"event tenant_id {env.tenant_id!r} is not the bundle's {tenant!r}")
    if env.stream_id != stream:
        return EventMismatch(
            f"event stream_id {env.stream_id!r} is not the bundle's orchestration {stream!r}"
        )
    return ReceiptMismatch(f"leaf event_id {env.event_id!r} is not the receipt's {r.event_id!r}")


def _receipt_id_error(event_id: str, receipt_id: str) -> VerificationError:
    expected = receipt_id_for(event_id)  # raises MalformedInput if event_id is not a ULID
    return ReceiptMismatch(
        f"receipt_id {receipt_id!r} is not derived from event {event_id} (expected {expected!r})"
    )


def _sequence_error(seq: int, expected: int) -> BundleIncomplete:
    if seq > expected:
        gap = f"{expected}..{seq - 1}" if seq - 1 > expected else f"{expected}"
        what = f"event(s) {gap} are missing or out of order"
    else:
        what = "an event is repeated or out of order"
    return BundleIncomplete(f"stream_seq {seq} where {expected} was expected: {what}")


class _Run:
    """One pass over a bundle. Mutable, private; :func:`verify_bundle` is the pure face."""

    def __init__(
        self,
        key: VerifierKey,
        progress: Callable[[int, int], None] | None,
        on_event: EventHook | None,
        witnesses: WitnessPolicy | None = None,
    ) -> None:
        self.key = key
        self.witnesses = witnesses
        self.witnessed = ""  # what step 1 says of witnesses, if they were required
        self.progress = progress
        self.event_hook = on_event
        self.header: BundleHeader | None = None
        self.header_cursor: PathCursor | None = None
        self.checkpoint_roots: dict[int, bytes] = {}
        self.receipt_cursors: dict[int, PathCursor] = {}
        self.checkpoints_verified = 0
        self.events = 0
        self.next_seq = 1
        self.last_type: str | None = None
        self.projection = Projection()
        self.line_no = 0

    # ---- §6.1 step 1 ------------------------------------------------------------------
    def on_header(self, h: BundleHeader) -> None:
        if h.format != BUNDLE_FORMAT:
            raise MalformedInput(f"bundle format {h.format!r} is not {BUNDLE_FORMAT!r}")
        # 1. Verify the header checkpoint under the trusted vkey (§4.1 step 1).
        checkpoint = verify_checkpoint(h.checkpoint, self.key)
        #    With witnesses required, a quorum of them cosigned it (§9.5). The checkpoint
        #    lines need none: each is proven consistent with this one.
        if self.witnesses is not None:
            cosigned = verify_witnessed(h.checkpoint, self.witnesses)
            self.witnessed = (
                f"; the header checkpoint cosigned by {len(cosigned)} of "
                f"{len(self.witnesses.witnesses)} trusted witness(es), "
                f"{self.witnesses.quorum} required"
            )
        if h.origin != checkpoint.origin:
            raise EventMismatch(
                f"header origin {h.origin!r} is not the checkpoint's origin {checkpoint.origin!r}"
            )
        if h.event_count < 0:
            raise MalformedInput(f"header event_count {h.event_count} is negative")
        self.header = h
        self.projection = Projection(h.orchestration_id)
        self.header_cursor = PathCursor(checkpoint.size, checkpoint.root)
        # A receipt issued at the header's own size uses the header checkpoint.
        self.checkpoint_roots[checkpoint.size] = checkpoint.root
        self.checkpoints_verified = 1

    def on_checkpoint(self, line: BundleCheckpoint) -> None:
        assert self.header_cursor is not None
        # 1. Each checkpoint line: its signature, and its consistency to the header.
        checkpoint = verify_checkpoint(line.checkpoint, self.key)
        head = self.header_cursor
        if checkpoint.size > head.tree_size:
            raise BundleIncomplete(
                f"checkpoint of size {checkpoint.size} is newer than the header checkpoint "
                f"(size {head.tree_size}), which must cover every event"
            )
        verify_consistency(
            checkpoint.size, checkpoint.root, head.tree_size, head.root, line.consistency_proof
        )
        known = self.checkpoint_roots.get(checkpoint.size)
        if known is not None and known != checkpoint.root:  # pragma: no cover - consistency
            raise BundleIncomplete(f"two different checkpoints of size {checkpoint.size}")
        self.checkpoint_roots[checkpoint.size] = checkpoint.root
        self.checkpoints_verified += 1

    # ---- §6.1 steps 2-5, per event ----------------------------------------------------
    def receipt_cursor(self, tree_size: int) -> PathCursor:
        """The cursor for the receipt checkpoint of ``tree_size`` (a few are kept)."""
        cursor = self.receipt_cursors.get(tree_size)
        if cursor is None:
            root = self.checkpoint_roots.get(tree_size)
            if root is None:
                raise BundleIncomplete(
                    f"the receipt's checkpoint (tree size {tree_size}) is not among "
                    "the checkpoint lines before it"
                )
            cursor = PathCursor(tree_size, root)
            if len(self.receipt_cursors) >= _RECEIPT_CURSORS:
                del self.receipt_cursors[next(iter(self.receipt_cursors))]
            self.receipt_cursors[tree_size] = cursor
        return cursor

    def events_from(self, lines: Iterator[bytes | Iterator[bytes]], first: BundleEvent) -> Any:
        """§6.1 steps 2-5 for a run of event lines starting with ``first``.

        The hot loop: everything it needs is a local. Returns the first line that is
        not an event (decoded, or a long-line iterator), or None at the end.
        """
        header, head = self.header, self.header_cursor
        assert header is not None
        assert head is not None
        tenant, stream, count = header.tenant_id, header.orchestration_id, header.event_count
        head_verify = head.verify
        projection = self.projection
        fold, created, receipts = projection.apply, projection.created, projection.receipts
        pending = receipts.pending
        envelope_decode = ENVELOPE_DECODER.decode
        progress, hook = self.progress, self.event_hook
        leaf_hasher, line_decoder, event_type = _LEAF_HASHER, _LINE.decode, BundleEvent
        folded = FOLDED_TYPES
        verify_with_receipt = head.verify_with_receipt
        # None: no receipt cursor yet (a receipt's tree_size may be any integer).
        receipt_size: int | None = None
        receipt = head
        events, next_seq, last_type = self.events, self.next_seq, self.last_type
        line_no = self.line_no
        line: Any = first
        step = STEP_INCLUSION
        try:
            while True:
                events += 1
                # 2. Inclusion: hash the leaf; it is at leaf_index in the header tree.
                step = STEP_INCLUSION
                leaf = line.leaf
                h = leaf_hasher.copy()
                h.update(leaf)
                lh = h.digest()
                index = line.leaf_index
                #    The receipt: same leaf_index and leaf_hash, and its proof against
                #    its own checkpoint's root (checked with the header proof, which
                #    shares its lower hashes; the header proof's fault comes first).
                r = line.receipt
                if r.leaf_index != index or r.leaf_hash != lh:
                    head_verify(lh, index, bytes(line.inclusion_proof))
                    raise _receipt_leaf_error(r, index)
                if r.tree_size != receipt_size:
                    try:
                        receipt = self.receipt_cursor(r.tree_size)
                    except VerificationError:
                        head_verify(lh, index, bytes(line.inclusion_proof))
                        raise
                    receipt_size = r.tree_size
                verify_with_receipt(
                    lh, index, bytes(line.inclusion_proof), receipt, bytes(r.inclusion_proof)
                )
                # 3. Belonging: a known v, this tenant and orchestration, matching ids.
                step = STEP_BELONGING
                try:
                    env = envelope_decode(leaf)
                except (msgspec.DecodeError, ValueError, RecursionError):
                    env = decode_leaf(leaf)  # raises the precise error
                if env.v != LEAF_VERSION or len(leaf) > MAX_LEAF_BYTES:
                    env = decode_leaf(leaf)  # raises the precise error
                check_envelope(env, leaf)
                event_id, receipt_id = env.event_id, r.receipt_id
                if env.tenant_id != tenant or env.stream_id != stream or event_id != r.event_id:
                    raise _belonging_error(env, r, tenant, stream)
                if not receipt_id_matches(event_id, receipt_id):
                    raise _receipt_id_error(event_id, receipt_id)
                # 4. Completeness: stream_seq runs 1, 2, ... with no gap or repeat.
                step = STEP_COMPLETENESS
                seq = env.stream_seq
                if seq != next_seq:
                    raise _sequence_error(seq, next_seq)
                next_seq = seq + 1
                if events > count:
                    raise BundleIncomplete(
                        f"the bundle has more events than the header's event_count {count}"
                    )
                # 5. Replay: fold the event (§7.3).
                step = STEP_REPLAY
                last_type = env.type
                if last_type in folded or not created:
                    fold(
                        seq,
                        last_type,
                        occurred_at=env.occurred_at,
                        tenant_id=env.tenant_id,
                        payload=env.payload,
                        receipt_id=receipt_id,
                    )
                    created = True  # apply() raises until orchestration.created is folded
                else:
                    # LLM, tool, decision events change no field but ``receipts``.
                    pending.append(receipt_id)
                    if len(pending) >= RECEIPTS_BATCH:
                        receipts.flush()
                if hook is not None:
                    hook(line, env)
                if progress is not None and not events % _PROGRESS_EVERY:
                    progress(events, count)
                # Next line: stay in this loop while it is an event.
                line_no += 1
                raw = next(lines, None)
                if type(raw) is not bytes:
                    return raw  # the end, or a long line
                step = STEP_PARSE
                try:
                    line = line_decoder(raw)
                except (msgspec.DecodeError, ValueError, RecursionError) as e:
                    if not raw.strip():
                        return raw  # a blank line: the caller skips it
                    raise MalformedInput(f"line {line_no} does not decode: {e}") from e
                if type(line) is not event_type:
                    return line
        except VerificationError as e:
            if step != STEP_PARSE:
                e.message = f"event {events} (line {line_no}): {e.message}"
            e.at_step(step)
            raise
        finally:
            self.events, self.next_seq, self.last_type = events, next_seq, last_type
            self.line_no = line_no

    # ---- end of §6.1 steps 4 and 5 -----------------------------------------------------
    def on_state(self, claimed: Any, matcher: ReceiptsMatcher) -> Report:
        header, head = self.header, self.header_cursor
        assert header is not None
        assert head is not None
        # 4. event_count equals N; the last event is terminal, or the report says running.
        if self.events != header.event_count:
            raise BundleIncomplete(
                f"the header's event_count is {header.event_count}, but the bundle has "
                f"{self.events} events"
            ).at_step(STEP_COMPLETENESS)
        running = self.last_type not in TERMINAL_TYPES
        # 5. Replay: compare the claimed state with the fold, field by field.
        replay = self.projection.state()
        differences = diff_state(claimed, replay)
        if replay is not None and isinstance(claimed, dict):
            receipts = claimed.get("receipts", msgspec.UNSET)
            if receipts is STREAMED:
                differences += matcher.differences()
            elif isinstance(receipts, list):
                for item in receipts:
                    matcher.feed(item)
                differences += matcher.differences()
            elif receipts is msgspec.UNSET:
                differences.append("state.receipts: missing from the claimed state")
            else:
                differences.append(
                    f"state.receipts: claimed {str(receipts)[:60]!r}, replay a list of "
                    f"{self.projection.receipts.count} ids"
                )
        if differences:
            raise StateMismatch(tuple(differences), step=STEP_REPLAY)
        status = self.projection.status
        return Report(
            origin=header.origin,
            tenant_id=header.tenant_id,
            orchestration_id=header.orchestration_id,
            tree_size=head.tree_size,
            root=head.root,
            event_count=self.events,
            checkpoints_verified=self.checkpoints_verified,
            status=status,
            last_event_type=self.last_type,
            running=running,
            steps=(
                f"{STEP_CHECKPOINT}: header checkpoint (tree size {head.tree_size}) and "
                f"{self.checkpoints_verified - 1} receipt checkpoint(s) signed by the trusted "
                "key and consistent" + self.witnessed,
                f"{STEP_INCLUSION}: {self.events} event(s) included in the header checkpoint; "
                f"{self.events} receipt(s) verified",
                f"{STEP_BELONGING}: every event is tenant {header.tenant_id!r}'s orchestration "
                f"{header.orchestration_id!r}",
                f"{STEP_COMPLETENESS}: stream_seq 1..{self.events} with no gap or repeat; "
                + (
                    f"the orchestration is still running (last event {self.last_type})"
                    if running
                    else f"the orchestration ended ({self.last_type})"
                ),
                f"{STEP_REPLAY}: the claimed state equals the replayed state (status {status})",
            ),
            header_vkey_matches=header.vkey.strip() == self.key.vkey,
        )


def verify_bundle(
    bundle: bytes | str | IO[bytes],
    vkey: str | VerifierKey,
    *,
    progress: Callable[[int, int], None] | None = None,
    on_event: EventHook | None = None,
    witnesses: WitnessPolicy | None = None,
) -> Report:
    """§6.1: verify an offline bundle under the trusted ``vkey`` (never the bundle's own).

    ``bundle`` is the JSON Lines bytes or text, or a binary file read line by line.
    ``progress(done, total)`` is called every few thousand events; ``on_event`` is
    called for each event once it has passed steps 2-4 and been folded. With
    ``witnesses``, step 1 also requires the header checkpoint to carry a quorum of their
    cosignatures (§9.5).

    Returns the :class:`Report` or raises a :class:`VerificationError` subclass whose
    ``step`` names the first §6.1 step that failed.
    """
    key = parse_vkey(vkey)
    run = _Run(key, progress, on_event, witnesses)
    report: Report | None = None
    lines = bundle_lines(bundle)
    pending: Any = None  # a line the event loop read ahead and handed back
    while True:
        if pending is None:
            raw = next(lines, None)
            if raw is None:
                break
            run.line_no += 1
        else:
            raw, pending = pending, None
        where = f"line {run.line_no}"
        if isinstance(raw, bytes | bytearray):
            if not raw.strip():
                continue
            try:
                line = decode(_LINE, raw, where)
            except MalformedInput as e:
                e.at_step(STEP_PARSE)
                raise
        elif isinstance(raw, msgspec.Struct):
            line = raw  # already decoded by the event loop
        else:
            # A line longer than LINE_LIMIT: only the state trailer may be that long.
            # Read from the module that cuts the lines (a test may lower it there), so that
            # the message names the limit the line was cut at.
            limit = _bundle_lines.LINE_LIMIT
            if run.header is None or report is not None:
                raise MalformedInput(f"{where} is longer than {limit} bytes").at_step(STEP_PARSE)
            matcher = ReceiptsMatcher(run.projection.receipts)
            obj = parse_stream(raw, ("state", "receipts"), matcher.feed, matcher.feed_plain)
            if (
                not isinstance(obj, dict)
                or obj.get("kind") != "state"
                or set(obj) != {"kind", "state"}
            ):
                raise MalformedInput(
                    f"{where} is longer than {limit} bytes and is not the state trailer"
                ).at_step(STEP_PARSE)
            report = run.on_state(obj["state"], matcher)
            continue
        if report is not None:
            raise MalformedInput(f"{where}: data after the state trailer").at_step(STEP_PARSE)
        kind = type(line)
        if kind is BundleEvent:
            if run.header is None:
                raise MalformedInput(f"{where}: an event before the header").at_step(STEP_PARSE)
            pending = run.events_from(lines, line)
        elif kind is BundleCheckpoint:
            if run.header is None:
                raise MalformedInput(f"{where}: a checkpoint before the header").at_step(STEP_PARSE)
            try:
                run.on_checkpoint(line)
            except VerificationError as e:
                e.message = f"checkpoint at {where}: {e.message}"
                e.at_step(STEP_CHECKPOINT)
                raise
        elif kind is BundleHeader:
            if run.header is not None:
                raise MalformedInput(f"{where}: a second header").at_step(STEP_PARSE)
            try:
                run.on_header(line)
            except VerificationError as e:
                e.message = f"header checkpoint: {e.message}"
                e.at_step(STEP_CHECKPOINT)
                raise
        else:
            assert isinstance(line, BundleState)
            if run.header is None:
                raise MalformedInput(f"{where}: a state trailer before the header").at_step(
                    STEP_PARSE
                )
            report = run.on_state(line.state, ReceiptsMatcher(run.projection.receipts))
    if run.header is None:
        raise MalformedInput("the bundle has no header line").at_step(STEP_PARSE)
    if report is None:
        raise BundleIncomplete(
            "the bundle has no state trailer (the claimed state) after its events"
        ).at_step(STEP_REPLAY)
    return report
