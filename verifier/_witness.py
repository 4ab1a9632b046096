"""A C2SP ``tlog-witness`` (https://c2sp.org/tlog-witness): the ``add-checkpoint`` checks,
``specs/log-format.md`` §9.3.

:class:`Witness` is the core: request body in, cosignature line out, or
:class:`~verifier._errors.CheckpointRefused` carrying the protocol's HTTP status. The
HTTP server around it is ``verifier._witness_http``; its state is
``verifier._witness_state``. The clock is injected (``now``).

Request body (each line ends in a newline)::

    old <size>
    <base64 consistency proof hash>     (zero to 63 lines)
    <empty line>
    <signed checkpoint note>
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable, Sequence

import msgspec

from verifier._checkpoint import Checkpoint, parse_checkpoint_body
from verifier._cosignature import WitnessSigner
from verifier._errors import CheckpointRefused, MalformedInput, ProofInvalid, SignatureInvalid
from verifier._merkle import HASH_SIZE, verify_consistency
from verifier._note import VerifierKey, open_note, split_note
from verifier._witness_state import WitnessedCheckpoint, WitnessState

__all__ = ["MAX_PROOF_LINES", "AddCheckpoint", "Witness", "parse_add_checkpoint"]

#: C2SP tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES = 63
_MAX_SIZE = (1 << 64) - 1


class AddCheckpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A parsed ``add-checkpoint`` request; ``note`` is the checkpoint exactly as sent."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def _malformed(message: str) -> CheckpointRefused:
    return CheckpointRefused(400, f"malformed request: {message}")


def _decimal(text: str) -> int | None:
    # ASCII digits, no sign, no leading zero (C2SP), at most 2^64 - 1.
    if (
        not text.isascii()
        or not text.isdigit()
        or (len(text) > 1 and text[0] == "0")
        or len(text) > 20
    ):
        return None
    value = int(text)
    return value if value <= _MAX_SIZE else None


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """§9.3 step 1: the request body, or :class:`CheckpointRefused` 400."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _malformed("the body is not UTF-8") from e
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise _malformed("no empty line after the old size and proof lines")
    first, *proof_lines = head.split("\n")
    size_text = first.removeprefix("old ")
    old_size = _decimal(size_text) if size_text != first else None
    if old_size is None:
        raise _malformed("the first line must be 'old <size>', a decimal with no leading zero")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise _malformed(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(proof_lines):
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _malformed(f"consistency proof line {i + 1} is not base64") from e
        if len(h) != HASH_SIZE:
            raise _malformed(f"consistency proof line {i + 1} is not a {HASH_SIZE}-byte hash")
        proof.append(h)
    return AddCheckpoint(old_size, tuple(proof), note)


def _note_text(body: bytes) -> bytes:
    """The checkpoint's note text, sliced from the request bytes (so the witness signs
    the bytes it received, not an encoding of what it decoded): after the body's first
    empty line, up to the note's last one. Only for a body that passed steps 1-3."""
    note = body[body.index(b"\n\n") + 2 :]
    return note[: note.rindex(b"\n\n") + 1]


class Witness:
    """Cosigns checkpoints of the logs whose keys it is given, each only if it is
    consistent with the latest one it cosigned for that origin (§9.3).

    Thread-safe: the check against the stored state and the write of the new state run
    under one lock per origin, so two requests cannot both pass the check against one
    state (C2SP's "rolling back K leaves" race).
    """

    def __init__(
        self,
        signer: WitnessSigner,
        log_keys: Sequence[VerifierKey],
        state: WitnessState,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.state = state
        self._now = now
        self._keys: dict[str, list[VerifierKey]] = {}
        for key in log_keys:
            self._keys.setdefault(key.name, []).append(key)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _lock(self, origin: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(origin, threading.Lock())

    def _verify_note(self, note: str) -> Checkpoint:
        """Steps 2-3: a known origin, signed by a key the witness trusts for it."""
        try:
            text, _ = split_note(note)
        except MalformedInput as e:
            raise _malformed(e.message) from e
        origin = text.split("\n", 1)[0]
        # 2. The origin is one the witness is configured for.
        keys = self._keys.get(origin)
        if not keys:
            raise CheckpointRefused(404, f"unknown log origin {origin!r}")
        # 3. A trusted key for that origin signed it (other keys' signatures ignored).
        failures = []
        for key in keys:
            try:
                open_note(note, key)
            except SignatureInvalid as e:
                failures.append(e.message)
                continue
            except MalformedInput as e:
                raise _malformed(e.message) from e
            try:
                return parse_checkpoint_body(text, note)
            except MalformedInput as e:
                raise _malformed(e.message) from e
        raise CheckpointRefused(
            403, "no signature by a trusted key for this origin verifies: " + "; ".join(failures)
        )

    def add_checkpoint(self, body: bytes) -> str:
        """§9.3: check one ``add-checkpoint`` request; return the cosignature line once
        the checkpoint is stored, or raise :class:`CheckpointRefused`."""
        # 1. Parse the body.
        request = parse_add_checkpoint(body)
        # 2-3. Known origin, trusted signature.
        checkpoint = self._verify_note(request.note)
        # 4. The old size is at most the checkpoint's size.
        if request.old_size > checkpoint.size:
            raise CheckpointRefused(
                400,
                f"old size {request.old_size} is larger than the checkpoint's size "
                f"{checkpoint.size}",
            )
        with self._lock(checkpoint.origin):
            # StateCorrupt and OSError pass through: the witness's fault, not the client's.
            stored = self.state.load(checkpoint.origin)
            stored_size = stored.size if stored is not None else 0
            # 5. The old size is the size the witness last cosigned (0 if never).
            if request.old_size != stored_size:
                raise CheckpointRefused(
                    409,
                    f"old size {request.old_size} is not the latest cosigned size {stored_size}",
                    size=stored_size,
                )
            if stored is not None and checkpoint.size == stored.size:
                # 6. Same size: the same root, or it is a fork.
                if checkpoint.root != stored.root:
                    raise CheckpointRefused(
                        409,
                        f"fork: the witness cosigned another root for tree size {checkpoint.size}",
                    )
                if request.proof:
                    raise CheckpointRefused(422, "a proof between equal sizes must be empty")
            elif stored is not None:
                # 7. A larger tree: the proof from the stored root must verify.
                try:
                    verify_consistency(
                        stored.size, stored.root, checkpoint.size, checkpoint.root, request.proof
                    )
                except ProofInvalid as e:
                    raise CheckpointRefused(
                        422,
                        f"the consistency proof from size {stored.size} to "
                        f"{checkpoint.size} does not verify: {e.message}",
                    ) from e
            elif request.proof:
                # C2SP: "The proof MUST be empty if the old size is zero."
                raise CheckpointRefused(422, "the proof from old size 0 must be empty")
            # 8. Persist before cosigning; an unchanged record is not rewritten.
            if stored is None or checkpoint.size != stored.size:
                self.state.store(
                    WitnessedCheckpoint(
                        checkpoint.origin, checkpoint.size, checkpoint.root, request.note
                    )
                )
            # 9. Cosign the note text as received, at the witness's time. Still under
            #    the lock: the cosignature says this is the largest tree the witness
            #    has seen as of its timestamp, which a later request could make untrue.
            return self.signer.cosign(_note_text(body), int(self._now()))
