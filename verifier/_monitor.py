"""A log monitor with client-held trusted state (RFC 9162 §8.2-style; ``specs/log-format.md``
§3 and §5).

One round (:func:`monitor_once`):

1. fetch the latest checkpoint (``GET /v1/log/checkpoint``). A log signs none while it
   is empty and answers 404 (§5); an empty log is a valid state, which every tree
   extends. The 404 is not signed, so it counts only from a server whose key
   (``GET /v1/log/key``) is the trusted one, and only while no non-empty tree is
   trusted: after one, it is a rollback. Nothing is stored for it. When the user
   requires witnesses, fetch instead the newest checkpoint cosigned by as many of the
   log's witnesses as the quorum (``GET /v1/log/checkpoint/witnessed``, §9.6): the
   latest one carries no cosignature yet. Its 404 means none is cosigned yet;
2. verify its signature under the trusted key (§4.1 step 1);
3. compare it with the last trusted checkpoint: a smaller tree is a rollback, the same
   size with another root is a fork; a larger tree needs a consistency proof
   (``GET /v1/log/proof/consistency?first=M&second=N``, RFC 9162 §2.1.4.2), and a bad
   proof is a fork;
4. when the user requires witnesses, check the checkpoint carries a quorum of their
   cosignatures (§9.5), then store the new trusted state atomically (temp file, fsync,
   ``os.replace``, fsync dir).

I/O is injected: ``fetch(path) -> body bytes`` does the HTTP (the CLI passes a urllib
one; tests and the soak harness pass their own) and raises :class:`FetchFailed`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import msgspec

from verifier._checkpoint import Checkpoint, verify_checkpoint
from verifier._errors import (
    FetchFailed,
    ForkDetected,
    MalformedInput,
    ProofInvalid,
    QuorumNotMet,
    RollbackDetected,
    SignatureInvalid,
    VerificationError,
)
from verifier._files import write_atomically
from verifier._merkle import verify_consistency
from verifier._note import VerifierKey, parse_vkey
from verifier._quorum import WitnessPolicy, verify_witnessed
from verifier._wire import ConsistencyResponse, LogKey, TrustedState

__all__ = [
    "CHECKPOINT_PATH",
    "KEY_PATH",
    "Fetcher",
    "MonitorResult",
    "consistency_path",
    "load_state",
    "monitor_once",
    "store_state",
]

#: ``fetch(path_and_query) -> response body``; raises FetchFailed on network/HTTP errors.
Fetcher = Callable[[str], bytes]
CHECKPOINT_PATH = "/v1/log/checkpoint"
WITNESSED_PATH = "/v1/log/checkpoint/witnessed"
KEY_PATH = "/v1/log/key"
#: RFC 9162 §2.1.1: the root of the empty tree.
_EMPTY_ROOT = hashlib.sha256(b"").digest()
_STATE = msgspec.json.Decoder(TrustedState)
_CONSISTENCY = msgspec.json.Decoder(ConsistencyResponse)
_LOG_KEY = msgspec.json.Decoder(LogKey)


def consistency_path(first: int, second: int) -> str:
    return f"/v1/log/proof/consistency?first={first}&second={second}"


class MonitorResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One verified round. ``outcome``: ``empty`` (the log has signed no checkpoint yet;
    ``checkpoint`` is empty and no state is stored), ``initialized`` (no trusted state
    before: trust on first use), ``unchanged`` (same checkpoint), or ``extended``
    (consistent growth)."""

    outcome: str
    old_size: int | None
    new_size: int
    root: bytes
    checkpoint: str


def load_state(path: Path, key: VerifierKey) -> TrustedState | None:
    """The trusted state in ``path`` (None if absent), re-verified under ``key``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MalformedInput(f"cannot read the state file {path}: {e.strerror}") from e
    try:
        state = _STATE.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as e:
        raise MalformedInput(f"state file {path} is not a monitor state: {e}") from e
    try:
        checkpoint = verify_checkpoint(state.checkpoint, key)
    except (SignatureInvalid, MalformedInput) as e:
        raise MalformedInput(
            f"state file {path} holds a checkpoint the trusted key does not sign: {e.message}"
        ) from e
    if (checkpoint.origin, checkpoint.size, checkpoint.root) != (
        state.origin,
        state.size,
        state.root,
    ):
        raise MalformedInput(f"state file {path} does not match the checkpoint it holds")
    return state


def store_state(path: Path, checkpoint: Checkpoint) -> None:
    """Write the trusted state atomically: temp file, fsync, os.replace, fsync dir.

    Raises :class:`MalformedInput` if it cannot (a missing directory, no permission, a
    full disk): the state path is the user's input, as in :func:`load_state`.
    """
    state = TrustedState(checkpoint.origin, checkpoint.size, checkpoint.root, checkpoint.note)
    try:
        write_atomically(path, msgspec.json.encode(state) + b"\n")
    except OSError as e:
        raise MalformedInput(f"cannot write the state file {path}: {e.strerror or e}") from e


def _check_echo(response: ConsistencyResponse, first: int, second: int) -> None:
    if (response.first, response.second) != (first, second):
        raise ProofInvalid(f"the log answered for sizes {response.first} -> {response.second}")


def _empty_log(
    fetch: Fetcher, key: VerifierKey, old: TrustedState | None, refused: FetchFailed
) -> MonitorResult:
    """The round for a log that answered 404 (``refused``) for its latest checkpoint."""
    try:
        served = _LOG_KEY.decode(fetch(KEY_PATH))
    except (FetchFailed, msgspec.DecodeError, ValueError, RecursionError):
        raise refused from None
    if served.vkey != key.vkey:
        # Not the trusted log (a wrong --url, say): its 404 says nothing about ours.
        raise refused
    if old is None:
        return MonitorResult("empty", None, 0, _EMPTY_ROOT, "")
    if old.size > 0:
        raise RollbackDetected(
            f"rollback: the log answers that it is empty (HTTP 404 for its checkpoint), "
            f"but it signed a tree of size {old.size}",
            old_checkpoint=old.checkpoint,
            new_checkpoint="(none: the log answers 404, empty)",
        )
    return MonitorResult("unchanged", 0, 0, old.root, old.checkpoint)


def _check_witnessed(new: Checkpoint, witnesses: WitnessPolicy | None) -> None:
    if witnesses is None:
        return
    try:
        verify_witnessed(new.note, witnesses)
    except VerificationError as e:
        e.message = f"the log's checkpoint (size {new.size}): {e.message}"
        e.evidence = (("log's checkpoint", new.note),)
        raise


def monitor_once(
    fetch: Fetcher,
    vkey: str | VerifierKey,
    state_path: Path,
    *,
    witnesses: WitnessPolicy | None = None,
) -> MonitorResult:
    """One monitor round; returns the result or raises (see the module docstring).

    With ``witnesses``, a checkpoint is trusted (stored) only if it carries a quorum of
    their cosignatures (§9.5): :class:`QuorumNotMet` otherwise, the state kept. A
    rollback or fork is reported first: the log's signature alone proves it.

    Raises :class:`RollbackDetected`, :class:`ForkDetected` or :class:`SignatureInvalid`
    (each with ``evidence``: the trusted and the received checkpoint), or
    :class:`FetchFailed`, or :class:`MalformedInput` for a state file that cannot be
    read, verified or written.
    """
    key = parse_vkey(vkey)
    old = load_state(state_path, key)
    old_note = old.checkpoint if old is not None else "(none)"
    # 1. Fetch the latest checkpoint (the latest witnessed one, if witnesses are required).
    try:
        if witnesses is None:
            body = fetch(CHECKPOINT_PATH)
        else:
            body = fetch(f"{WITNESSED_PATH}?min_cosignatures={witnesses.quorum}")
    except FetchFailed as e:
        if e.status != 404:
            raise
        if witnesses is not None:
            raise QuorumNotMet(
                f"the log publishes no checkpoint cosigned by {witnesses.quorum} of its "
                f"witnesses yet ({WITNESSED_PATH} answered 404)",
                missing=tuple(w.vkey for w in witnesses.witnesses),
            ) from e
        return _empty_log(fetch, key, old, e)
    # 2. Check its signature.
    try:
        new = verify_checkpoint(body, key)
    except (SignatureInvalid, MalformedInput) as e:
        err = SignatureInvalid(f"the log's latest checkpoint does not verify: {e.message}")
        err.evidence = (
            ("trusted checkpoint", old_note),
            ("log's checkpoint", body.decode("utf-8", "replace")),
        )
        raise err from e
    # 3. Compare with the trusted checkpoint; check consistency from it.
    if old is None:
        _check_witnessed(new, witnesses)
        store_state(state_path, new)
        return MonitorResult("initialized", None, new.size, new.root, new.note)
    if new.size < old.size:
        raise RollbackDetected(
            f"rollback: the log shows a tree of size {new.size}, smaller than the trusted "
            f"size {old.size}",
            old_checkpoint=old.checkpoint,
            new_checkpoint=new.note,
        )
    if new.size == old.size:
        if new.root != old.root:
            raise ForkDetected(
                f"fork: two signed checkpoints of size {new.size} with different roots",
                old_checkpoint=old.checkpoint,
                new_checkpoint=new.note,
            )
        _check_witnessed(new, witnesses)
        return MonitorResult("unchanged", old.size, new.size, new.root, new.note)
    proof: tuple[bytes, ...] = ()
    if old.size > 0:
        raw = fetch(consistency_path(old.size, new.size))
        try:
            response = _CONSISTENCY.decode(raw)
            _check_echo(response, old.size, new.size)
            proof = response.proof
            verify_consistency(old.size, old.root, new.size, new.root, proof)
        except (ProofInvalid, msgspec.DecodeError, ValueError, RecursionError) as e:
            detail = e.message if isinstance(e, ProofInvalid) else f"malformed response: {e}"
            raise ForkDetected(
                f"fork: the log's consistency proof from size {old.size} to {new.size} does "
                f"not verify ({detail})",
                old_checkpoint=old.checkpoint,
                new_checkpoint=new.note,
            ) from e
    # 4. With witnesses required, a quorum cosigned it; store it atomically.
    _check_witnessed(new, witnesses)
    store_state(state_path, new)
    return MonitorResult("extended", old.size, new.size, new.root, new.note)
