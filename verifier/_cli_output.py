"""What ``maip-verify`` prints: lines that may hold input, escaped (``verifier._text``),
JSON reports on stdout, and the note that a check also required witnesses (§9.5).
"""

from __future__ import annotations

import sys
from typing import IO, Any

import msgspec

from verifier._quorum import WitnessPolicy
from verifier._text import visible

__all__ = ["print_json", "say", "witnessed_note"]


def witnessed_note(policy: WitnessPolicy | None) -> str:
    if policy is None:
        return ""
    return f", cosigned by at least {policy.quorum} of {len(policy.witnesses)} trusted witnesses"


def say(stream: IO[str], line: str) -> None:
    """Write one line of text that may hold input: escaped, so that it stays one line
    and no character in it is a terminal control (``verifier._text``)."""
    stream.write(visible(line) + "\n")


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
