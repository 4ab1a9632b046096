"""What ``maip-verify``'s subcommands are given: the usage error and the exit statuses,
and reading the files, trusted keys and ``--witness`` policy named on the command line
(``specs/log-format.md`` §9.5 for the policy).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from verifier._cosignature import WitnessKey, parse_witness_vkey
from verifier._errors import MalformedInput
from verifier._note import VerifierKey, parse_vkey
from verifier._quorum import WitnessPolicy, witness_policy

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "positive_int",
    "read_bytes",
    "required_witnesses",
    "trusted_vkey",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A usage or parse error: one line on stderr, exit 2."""


def read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from e


def _vkey_text(arg: str, what: str) -> str:
    """A vkey argument: the vkey string itself, or a file containing it."""
    if "+" not in arg or Path(arg).is_file():
        return read_bytes(arg, f"{what} file").decode("utf-8", "replace").strip()
    return arg


def trusted_vkey(arg: str) -> VerifierKey:
    """VKEY is the vkey string itself, or a file containing it."""
    try:
        return parse_vkey(_vkey_text(arg, "vkey"))
    except MalformedInput as e:
        raise UsageError(f"invalid vkey: {e.message}") from e


def _witness_vkey(arg: str) -> WitnessKey:
    """--witness VKEY: the witness's cosignature vkey itself, or a file containing it."""
    try:
        return parse_witness_vkey(_vkey_text(arg, "witness vkey"))
    except MalformedInput as e:
        raise UsageError(f"invalid witness vkey: {e.message}") from e


def positive_int(arg: str) -> int:
    if not arg.isascii() or not arg.isdigit() or int(arg) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {arg!r}")
    return int(arg)


def required_witnesses(args: argparse.Namespace) -> WitnessPolicy | None:
    """``--witness VKEY`` (repeatable) and ``--witness-quorum K`` (default: all)."""
    if not args.witness:
        if args.witness_quorum is not None:
            raise UsageError("--witness-quorum needs at least one --witness VKEY")
        return None
    try:
        return witness_policy([_witness_vkey(w) for w in args.witness], args.witness_quorum)
    except MalformedInput as e:
        raise UsageError(e.message) from e
