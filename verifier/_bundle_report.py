"""What verifying a bundle says (``specs/log-format.md`` §6.1): the names of its five
steps, one of which every failure carries as its ``step``, and the :class:`Report` of a
bundle that verified.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "STEP_BELONGING",
    "STEP_CHECKPOINT",
    "STEP_COMPLETENESS",
    "STEP_INCLUSION",
    "STEP_PARSE",
    "STEP_REPLAY",
    "Report",
]

STEP_CHECKPOINT = "§6.1 step 1 (checkpoint)"
STEP_INCLUSION = "§6.1 step 2 (inclusion)"
STEP_BELONGING = "§6.1 step 3 (belonging)"
STEP_COMPLETENESS = "§6.1 step 4 (completeness)"
STEP_REPLAY = "§6.1 step 5 (replay)"
STEP_PARSE = "bundle format (§6)"


class Report(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What :func:`verify_bundle` verified. ``running`` is true when the last event is
    not terminal (§6.1 step 4): verified so far, but the orchestration is not over."""

    origin: str
    tenant_id: str
    orchestration_id: str
    tree_size: int
    root: bytes
    event_count: int
    checkpoints_verified: int
    status: str | None
    last_event_type: str | None
    running: bool
    steps: tuple[str, ...]
    header_vkey_matches: bool
