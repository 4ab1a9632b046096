"""Requiring witness cosignatures on a checkpoint: the quorum rule of
``specs/log-format.md`` §9.5 (C2SP tlog-cosignature: "Log clients can verify a quorum of
cosignatures to prevent split-view attacks before trusting an inclusion proof").

The user names the witnesses they trust and how many of them must have cosigned (by
default all). Cosignatures travel in the checkpoint's own signed note, as further
signature lines beside the log's signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from verifier._cosignature import (
    Cosignature,
    WitnessKey,
    check_cosignature,
    cosigned_text,
    parse_witness_vkey,
)
from verifier._errors import MalformedInput, QuorumNotMet
from verifier._note import parse_signature_line, split_note

__all__ = ["WitnessPolicy", "verify_witnessed", "witness_policy"]


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """The witnesses a user trusts and how many of them must cosign a checkpoint."""

    witnesses: tuple[WitnessKey, ...]
    quorum: int


def witness_policy(
    witnesses: Sequence[str | WitnessKey], quorum: int | None = None
) -> WitnessPolicy:
    """A :class:`WitnessPolicy`: ``quorum`` defaults to every witness given.

    Raises :class:`MalformedInput` for a bad vkey, a witness given twice (it would count
    twice towards the quorum) or a quorum outside ``1..len(witnesses)``.
    """
    keys = tuple(parse_witness_vkey(w) for w in witnesses)
    if not keys:
        raise MalformedInput("a witness policy needs at least one witness key")
    seen: set[tuple[str, int]] = set()
    for key in keys:
        if (key.name, key.key_id) in seen:
            raise MalformedInput(f"witness {key.vkey} is given twice")
        seen.add((key.name, key.key_id))
    if len({key.public_key for key in keys}) != len(keys):
        # The cosigned message does not name the witness (tlog-cosignature): one key
        # under two names is one witness, and must not count twice.
        raise MalformedInput("two witness keys share one public key")
    required = len(keys) if quorum is None else quorum
    if not 1 <= required <= len(keys):
        raise MalformedInput(
            f"the witness quorum must be within 1..{len(keys)} (the witnesses given), "
            f"not {required}"
        )
    return WitnessPolicy(keys, required)


def verify_witnessed(note: str | bytes, policy: WitnessPolicy) -> tuple[Cosignature, ...]:
    """§9.5: ``note`` carries valid cosignatures from at least ``policy.quorum`` of the
    trusted witnesses.

    1. Read the note's text (the checkpoint) and its signature lines.
    2. For each line whose name and key ID are a trusted witness's, verify it (§9.2):
       a trusted witness's cosignature that does not verify rejects the note, as a
       trusted key's bad signature does (§3); other lines are ignored.
    3. Count the distinct witnesses with a valid cosignature; fewer than the quorum
       raises :class:`QuorumNotMet` naming the witnesses whose cosignature is missing.

    Returns one :class:`Cosignature` per witness that cosigned, in policy order.
    """
    # 1. The checkpoint text and its signature lines.
    text = cosigned_text(note)
    _, lines = split_note(note)
    found: dict[WitnessKey, Cosignature] = {}
    for line in lines:
        # 2. Trusted witnesses' lines must verify; the rest are ignored.
        name, key_id, signature = parse_signature_line(line)
        for key in policy.witnesses:
            if key.matches(name, key_id):
                found.setdefault(key, check_cosignature(text, signature, key))
    # 3. The quorum.
    if len(found) < policy.quorum:
        missing = tuple(key.vkey for key in policy.witnesses if key not in found)
        raise QuorumNotMet(
            f"the checkpoint has valid cosignatures from {len(found)} of the trusted "
            f"witnesses, {policy.quorum} required; no cosignature from " + ", ".join(missing),
            missing=missing,
        )
    return tuple(found[key] for key in policy.witnesses if key in found)
