"""``maip-verify``: the command-line shell around the pure verifier functions.

Exit status: 0 everything verified; 1 something does not verify (the first failing step
is named); 2 a usage or parse error (one line on stderr). ``--json`` prints a
machine-readable report on stdout.

This module holds the parser, the offline subcommands (``receipt``, ``bundle``,
``consistency``, ``replay``) and the exit; ``monitor`` is in ``verifier._cli_monitor``
(over ``verifier._http_fetcher``), ``witness`` in ``verifier._cli_witness``, the bundle's
progress bar in ``verifier._progress_bar``, and what they share in ``verifier._cli_args``
and ``verifier._cli_output``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import msgspec

from verifier._bundle import Report, verify_bundle
from verifier._checkpoint import verify_checkpoint
from verifier._cli_args import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    positive_int,
    read_bytes,
    required_witnesses,
    trusted_vkey,
)
from verifier._cli_monitor import MAX_WATCH, monitor_command, watch_seconds
from verifier._cli_output import print_json, say, witnessed_note
from verifier._cli_witness import listen_address, witness_command
from verifier._errors import (
    ForkDetected,
    MalformedInput,
    ProofInvalid,
    RollbackDetected,
    VerificationError,
)
from verifier._http_fetcher import urllib_fetcher
from verifier._merkle import decode_proof, verify_consistency
from verifier._progress_bar import progress_bar
from verifier._quorum import verify_witnessed
from verifier._receipt import verify_receipt
from verifier._replay import build_timeline, render
from verifier._witness_http import DEFAULT_MAX_BODY, DEFAULT_REQUEST_SECONDS

__all__ = ["main", "urllib_fetcher"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _failure(e: VerificationError, as_json: bool) -> int:
    code = EXIT_USAGE if isinstance(e, MalformedInput) else EXIT_FAILED
    if as_json:
        print_json(
            {
                "verified": False,
                "step": e.step,
                "error_type": type(e).__name__,
                "error": e.message,
                "evidence": dict(e.evidence),
            }
        )
    else:
        for label, text in e.evidence:
            # A log's reply is shown as it came, line by line, each line escaped.
            say(sys.stdout, f"--- {label} ---")
            for evidence_line in text.removesuffix("\n").split("\n"):
                say(sys.stdout, evidence_line)
    line = str(e).replace("\n", " ")
    prefix = "error" if code == EXIT_USAGE else "NOT VERIFIED"
    say(sys.stderr, f"maip-verify: {prefix}: {line}")
    return code


# ---- receipt ------------------------------------------------------------------------


def _cmd_receipt(args: argparse.Namespace) -> int:
    key = trusted_vkey(args.vkey)
    policy = required_witnesses(args)
    receipt = read_bytes(args.receipt, "receipt")
    if (args.leaf is None) == (args.leaf_b64 is None):
        raise UsageError("give exactly one of --leaf LEAF_FILE and --leaf-b64 BASE64")
    if args.leaf is not None:
        leaf = read_bytes(args.leaf, "leaf file")
    else:
        try:
            leaf = base64.b64decode(args.leaf_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise UsageError("--leaf-b64 is not valid base64") from e
    verified = verify_receipt(receipt, leaf, key, witnesses=policy)
    r, cp, ev = verified.receipt, verified.checkpoint, verified.event
    if args.json:
        print_json(
            {
                "verified": True,
                "receipt_id": r.receipt_id,
                "event_id": r.event_id,
                "stream_id": ev.stream_id,
                "stream_seq": ev.stream_seq,
                "type": ev.type,
                "leaf_index": r.leaf_index,
                "tree_size": cp.size,
                "origin": cp.origin,
                "root": base64.b64encode(cp.root).decode(),
            }
        )
    else:
        say(
            sys.stdout,
            f"verified: event {r.event_id} ({ev.type}, {ev.stream_id} #{ev.stream_seq}) is leaf "
            f"{r.leaf_index} of {cp.origin} at tree size {cp.size}{witnessed_note(policy)}",
        )
    return EXIT_OK


# ---- bundle -------------------------------------------------------------------------


def _open_input(path: str, what: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from e


def _report_json(report: Report) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(report)
    return {"verified": True, **out}


def _cmd_bundle(args: argparse.Namespace) -> int:
    key = trusted_vkey(args.vkey)
    policy = required_witnesses(args)
    with _open_input(args.bundle, "bundle") as f, progress_bar(sys.stderr.isatty()) as progress:
        report = verify_bundle(f, key, progress=progress, witnesses=policy)
    if args.json:
        print_json(_report_json(report))
    else:
        say(
            sys.stdout,
            f"verified: {report.event_count:,} events of orchestration {report.orchestration_id} "
            f"(tenant {report.tenant_id}) in {report.origin} at tree size {report.tree_size:,}",
        )
        for step in report.steps:
            say(sys.stdout, f"  ok  {step}")
        if report.running:
            sys.stdout.write("note: the orchestration is still running\n")
        if not report.header_vkey_matches:
            sys.stdout.write("note: the bundle's informational vkey is not the trusted key\n")
    return EXIT_OK


# ---- consistency --------------------------------------------------------------------


def _cmd_consistency(args: argparse.Namespace) -> int:
    key = trusted_vkey(args.vkey)
    policy = required_witnesses(args)
    old = verify_checkpoint(read_bytes(args.old_checkpoint, "checkpoint"), key)
    new = verify_checkpoint(read_bytes(args.new_checkpoint, "checkpoint"), key)
    raw = read_bytes(args.proof, "proof file")
    try:
        decoded: Any = msgspec.json.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError) as e:
        raise UsageError(f"proof file {args.proof} is not JSON") from e
    if isinstance(decoded, dict):
        unknown = set(decoded) - {"first", "second", "proof"}
        if unknown or "proof" not in decoded:
            raise UsageError('proof file must be {"proof": [...]} or a JSON list')
        for name, size in (("first", old.size), ("second", new.size)):
            if decoded.get(name, size) != size:
                raise UsageError(f"proof file's {name} is {decoded[name]}, not {size}")
        decoded = decoded["proof"]
    proof = decode_proof(msgspec.json.encode(decoded), "proof file")
    if new.size < old.size:
        raise RollbackDetected(
            f"the new checkpoint (size {new.size}) is smaller than the old (size {old.size})",
            old_checkpoint=old.note,
            new_checkpoint=new.note,
        )
    if old.size == new.size and old.root != new.root:
        # Two signed trees of one size: that alone proves a fork, whatever the proof.
        raise ForkDetected(
            f"fork: two signed checkpoints of size {new.size} with different roots",
            old_checkpoint=old.note,
            new_checkpoint=new.note,
        )
    try:
        verify_consistency(old.size, old.root, new.size, new.root, proof)
    except VerificationError as e:
        # Not proof of a fork: the log may have one that verifies, and this file not.
        raise ProofInvalid(
            f"the proof does not show that the tree of size {new.size} extends the tree "
            f"of size {old.size}: {e.message}"
        ) from e
    if policy is not None:
        # The new checkpoint is the one to accept; the old one is its prefix, proven.
        try:
            verify_witnessed(new.note, policy)
        except VerificationError as e:
            e.message = f"the new checkpoint (size {new.size}): {e.message}"
            raise
    if args.json:
        print_json({"verified": True, "old_size": old.size, "new_size": new.size})
    else:
        sys.stdout.write(
            f"verified: the tree of size {new.size:,} extends the tree of size "
            f"{old.size:,}{witnessed_note(policy)}\n"
        )
    return EXIT_OK


# ---- monitor ------------------------------------------------------------------------


def _cmd_monitor(args: argparse.Namespace) -> int:
    # urllib_fetcher is looked up here, at each run, so that a test can patch
    # verifier.cli.urllib_fetcher to serve the monitor a log of its own.
    return monitor_command(args, urllib_fetcher)


# ---- replay -------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.json else "text")
    if args.json and fmt != "json":
        raise UsageError(f"--json prints the json timeline; it cannot go with --format {fmt}")
    key = trusted_vkey(args.vkey)
    data = read_bytes(args.bundle, "bundle")
    timeline = build_timeline(data, key)
    text = render(timeline, fmt)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {args.output}: {e.strerror}") from e
    else:
        sys.stdout.write(text)
    if timeline.failure is not None:
        say(sys.stderr, f"maip-verify: NOT VERIFIED: {timeline.failure}")
        return EXIT_FAILED
    return EXIT_OK


# ---- main ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="maip-verify", description="Verify MAIP Ledger receipts, bundles and logs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("receipt", help="verify one receipt against its leaf (§4.1)")
    r.add_argument("receipt", metavar="RECEIPT.json")
    r.add_argument("--leaf", metavar="LEAF_FILE", help="file with the raw leaf bytes")
    r.add_argument("--leaf-b64", metavar="BASE64", help="the leaf bytes in base64")

    b = sub.add_parser("bundle", help="verify an offline bundle (§6.1)")
    b.add_argument("bundle", metavar="BUNDLE.json")

    c = sub.add_parser("consistency", help="verify that one checkpoint extends another")
    c.add_argument("old_checkpoint", metavar="OLD_CHECKPOINT")
    c.add_argument("new_checkpoint", metavar="NEW_CHECKPOINT")
    c.add_argument("--proof", required=True, metavar="PROOF_FILE")

    m = sub.add_parser("monitor", help="check the log stays append-only")
    m.add_argument("--url", required=True, metavar="BASE_URL")
    m.add_argument("--state", required=True, metavar="STATE_FILE")
    m.add_argument(
        "--watch",
        type=watch_seconds,
        metavar="SECONDS",
        help=f"repeat every SECONDS (0 < SECONDS <= {MAX_WATCH:.0f})",
    )
    m.add_argument("--max-iterations", type=int, metavar="N")

    rp = sub.add_parser("replay", help="the auditor's timeline of a bundle")
    rp.add_argument("bundle", metavar="BUNDLE.json")
    rp.add_argument(
        "--format", choices=("text", "json", "html"), help="default text; json with --json"
    )
    rp.add_argument("-o", "--output", metavar="FILE")

    for s in (r, b, c, m, rp):
        s.add_argument("--vkey", required=True, metavar="VKEY", help="trusted key or file")
        s.add_argument("--json", action="store_true", help="machine-readable output")
    for s in (r, b, c, m):
        s.add_argument(
            "--witness",
            action="append",
            default=[],
            metavar="VKEY",
            help="require this witness's cosignature (repeatable; vkey or file; §9.5)",
        )
        s.add_argument(
            "--witness-quorum",
            type=positive_int,
            metavar="K",
            help="how many of the --witness keys must have cosigned (default: all)",
        )

    w = sub.add_parser("witness", help="serve a C2SP tlog-witness (POST /add-checkpoint, §9)")
    w.add_argument("--state-dir", required=True, metavar="DIR", help="its key and state")
    w.add_argument(
        "--log-key",
        required=True,
        action="append",
        metavar="VKEY",
        help="a log key to witness, named for its origin (repeatable; vkey or file)",
    )
    w.add_argument(
        "--listen", required=True, type=listen_address, metavar="HOST:PORT", help="port 0: any free"
    )
    w.add_argument("--name", metavar="NAME", help="the witness's key name (to create its key)")
    w.add_argument("--key-file", metavar="PATH", help="an existing key (never created)")
    w.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY,
        metavar="N",
        help=f"largest request body (default {DEFAULT_MAX_BODY})",
    )
    w.add_argument(
        "--request-seconds",
        type=positive_int,
        default=int(DEFAULT_REQUEST_SECONDS),
        metavar="S",
        help=f"time a whole request may take to arrive (default {DEFAULT_REQUEST_SECONDS:.0f})",
    )
    w.set_defaults(json=False)
    return p


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "receipt": _cmd_receipt,
    "bundle": _cmd_bundle,
    "consistency": _cmd_consistency,
    "monitor": _cmd_monitor,
    "replay": _cmd_replay,
    "witness": witness_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``maip-verify``; returns the exit status."""
    as_json = False
    try:
        args = _parser().parse_args(argv)
        as_json = bool(args.json)
        return _COMMANDS[args.command](args)
    except UsageError as e:
        say(sys.stderr, f"maip-verify: error: {str(e).splitlines()[0] if str(e) else e}")
        return EXIT_USAGE
    except VerificationError as e:
        return _failure(e, as_json)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
