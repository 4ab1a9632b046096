"""``maip-verify``: the command-line shell around the pure verifier functions.

Exit status: 0 everything verified; 1 something does not verify (the first failing step
is named); 2 a usage or parse error (one line on stderr). ``--json`` prints a
machine-readable report on stdout.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import http.client
import math
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import msgspec
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from verifier._bundle import Report, verify_bundle
from verifier._checkpoint import verify_checkpoint
from verifier._cosignature import WitnessKey, parse_witness_vkey
from verifier._errors import (
    FetchFailed,
    ForkDetected,
    MalformedInput,
    ProofInvalid,
    RollbackDetected,
    VerificationError,
)
from verifier._merkle import decode_proof, verify_consistency
from verifier._monitor import Fetcher, MonitorResult, monitor_once
from verifier._note import VerifierKey, parse_vkey
from verifier._quorum import WitnessPolicy, verify_witnessed, witness_policy
from verifier._receipt import verify_receipt
from verifier._replay import build_timeline, render
from verifier._text import visible
from verifier._witness import Witness
from verifier._witness_http import DEFAULT_MAX_BODY, WitnessServer
from verifier._witness_state import WitnessState, load_witness_key

__all__ = ["main", "urllib_fetcher"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# A monitor that looks less often than daily is better run from cron; the bound also
# keeps --watch inside what time.sleep accepts.
_MAX_WATCH = 86_400.0
_PROGRESS_MIN_EVENTS = 10_000
_FETCH_TIMEOUT = 10.0
_MAX_RESPONSE = 1 << 20


class _UsageError(Exception):
    """A usage or parse error: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise _UsageError(f"cannot read {what} {path}: {e.strerror}") from e


def _watch_seconds(arg: str) -> float:
    """``--watch SECONDS``: argparse's float() also takes nan, inf and 1e300."""
    try:
        seconds = float(arg)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= _MAX_WATCH:  # also false for nan
        raise argparse.ArgumentTypeError(
            f"SECONDS must be a number above 0 and at most {_MAX_WATCH:.0f}, not {arg!r}"
        )
    return seconds


def _vkey(arg: str) -> VerifierKey:
    """VKEY is the vkey string itself, or a file containing it."""
    text = arg
    if "+" not in arg or Path(arg).is_file():
        text = _read_bytes(arg, "vkey file").decode("utf-8", "replace").strip()
    try:
        return parse_vkey(text)
    except MalformedInput as e:
        raise _UsageError(f"invalid vkey: {e.message}") from e


def _witness_vkey(arg: str) -> WitnessKey:
    """--witness VKEY: the witness's cosignature vkey itself, or a file containing it."""
    text = arg
    if "+" not in arg or Path(arg).is_file():
        text = _read_bytes(arg, "witness vkey file").decode("utf-8", "replace").strip()
    try:
        return parse_witness_vkey(text)
    except MalformedInput as e:
        raise _UsageError(f"invalid witness vkey: {e.message}") from e


def _positive_int(arg: str) -> int:
    if not arg.isascii() or not arg.isdigit() or int(arg) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {arg!r}")
    return int(arg)


def _policy(args: argparse.Namespace) -> WitnessPolicy | None:
    """``--witness VKEY`` (repeatable) and ``--witness-quorum K`` (default: all)."""
    if not args.witness:
        if args.witness_quorum is not None:
            raise _UsageError("--witness-quorum needs at least one --witness VKEY")
        return None
    try:
        return witness_policy([_witness_vkey(w) for w in args.witness], args.witness_quorum)
    except MalformedInput as e:
        raise _UsageError(e.message) from e


def _witnessed_note(policy: WitnessPolicy | None) -> str:
    if policy is None:
        return ""
    return f", cosigned by at least {policy.quorum} of {len(policy.witnesses)} trusted witnesses"


def _say(stream: IO[str], line: str) -> None:
    """Write one line of text that may hold input: escaped, so that it stays one line
    and no character in it is a terminal control (``verifier._text``)."""
    stream.write(visible(line) + "\n")


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _failure(e: VerificationError, as_json: bool) -> int:
    code = EXIT_USAGE if isinstance(e, MalformedInput) else EXIT_FAILED
    if as_json:
        _print_json(
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
            _say(sys.stdout, f"--- {label} ---")
            for evidence_line in text.removesuffix("\n").split("\n"):
                _say(sys.stdout, evidence_line)
    line = str(e).replace("\n", " ")
    prefix = "error" if code == EXIT_USAGE else "NOT VERIFIED"
    _say(sys.stderr, f"maip-verify: {prefix}: {line}")
    return code


# ---- receipt ------------------------------------------------------------------------


def _cmd_receipt(args: argparse.Namespace) -> int:
    key = _vkey(args.vkey)
    policy = _policy(args)
    receipt = _read_bytes(args.receipt, "receipt")
    if (args.leaf is None) == (args.leaf_b64 is None):
        raise _UsageError("give exactly one of --leaf LEAF_FILE and --leaf-b64 BASE64")
    if args.leaf is not None:
        leaf = _read_bytes(args.leaf, "leaf file")
    else:
        try:
            leaf = base64.b64decode(args.leaf_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _UsageError("--leaf-b64 is not valid base64") from e
    verified = verify_receipt(receipt, leaf, key, witnesses=policy)
    r, cp, ev = verified.receipt, verified.checkpoint, verified.event
    if args.json:
        _print_json(
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
        _say(
            sys.stdout,
            f"verified: event {r.event_id} ({ev.type}, {ev.stream_id} #{ev.stream_seq}) is leaf "
            f"{r.leaf_index} of {cp.origin} at tree size {cp.size}{_witnessed_note(policy)}",
        )
    return EXIT_OK


# ---- bundle -------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    bar: Progress | None = None
    task: TaskID | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar, task
        if total < _PROGRESS_MIN_EVENTS:
            return
        if bar is None:
            bar = Progress(
                TextColumn("verifying"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,} events"),
                TimeRemainingColumn(),
                transient=True,
            )
            bar.start()
            task = bar.add_task("verify", total=total)
        assert task is not None
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def _open_input(path: str, what: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as e:
        raise _UsageError(f"cannot read {what} {path}: {e.strerror}") from e


def _report_json(report: Report) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(report)
    return {"verified": True, **out}


def _cmd_bundle(args: argparse.Namespace) -> int:
    key = _vkey(args.vkey)
    policy = _policy(args)
    with _open_input(args.bundle, "bundle") as f, _progress(sys.stderr.isatty()) as progress:
        report = verify_bundle(f, key, progress=progress, witnesses=policy)
    if args.json:
        _print_json(_report_json(report))
    else:
        _say(
            sys.stdout,
            f"verified: {report.event_count:,} events of orchestration {report.orchestration_id} "
            f"(tenant {report.tenant_id}) in {report.origin} at tree size {report.tree_size:,}",
        )
        for step in report.steps:
            _say(sys.stdout, f"  ok  {step}")
        if report.running:
            sys.stdout.write("note: the orchestration is still running\n")
        if not report.header_vkey_matches:
            sys.stdout.write("note: the bundle's informational vkey is not the trusted key\n")
    return EXIT_OK


# ---- consistency --------------------------------------------------------------------


def _cmd_consistency(args: argparse.Namespace) -> int:
    key = _vkey(args.vkey)
    policy = _policy(args)
    old = verify_checkpoint(_read_bytes(args.old_checkpoint, "checkpoint"), key)
    new = verify_checkpoint(_read_bytes(args.new_checkpoint, "checkpoint"), key)
    raw = _read_bytes(args.proof, "proof file")
    try:
        decoded: Any = msgspec.json.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError) as e:
        raise _UsageError(f"proof file {args.proof} is not JSON") from e
    if isinstance(decoded, dict):
        unknown = set(decoded) - {"first", "second", "proof"}
        if unknown or "proof" not in decoded:
            raise _UsageError('proof file must be {"proof": [...]} or a JSON list')
        for name, size in (("first", old.size), ("second", new.size)):
            if decoded.get(name, size) != size:
                raise _UsageError(f"proof file's {name} is {decoded[name]}, not {size}")
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
        _print_json({"verified": True, "old_size": old.size, "new_size": new.size})
    else:
        sys.stdout.write(
            f"verified: the tree of size {new.size:,} extends the tree of size "
            f"{old.size:,}{_witnessed_note(policy)}\n"
        )
    return EXIT_OK


# ---- monitor ------------------------------------------------------------------------


def _base_url(base_url: str) -> str:
    """``--url``, checked before any request: urllib raises ValueError and
    http.client.InvalidURL for what it cannot parse, and appends paths blindly."""
    bad = (
        "--url must be an http(s) base URL (ASCII, with no spaces, query or user info), "
        f"not {base_url!r}"
    )
    if not base_url.isascii() or any(c.isspace() or not c.isprintable() for c in base_url):
        raise _UsageError(bad)
    try:
        parts = urllib.parse.urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        # The idna codec rejects empty and over-long labels, which urllib only finds
        # when it resolves the name.
        (parts.hostname or "").encode("idna")
    except ValueError as e:
        raise _UsageError(f"{bad}: {e}") from e
    if (
        parts.scheme not in {"http", "https"}
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise _UsageError(bad)
    return base_url.rstrip("/")


def urllib_fetcher(base_url: str, timeout: float = _FETCH_TIMEOUT) -> Fetcher:
    """A :data:`Fetcher` over HTTP(S) with the standard library."""
    base = _base_url(base_url)

    def fetch(path: str) -> bytes:
        url = base + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
                body: bytes = resp.read(_MAX_RESPONSE + 1)
        except urllib.error.HTTPError as e:
            raise FetchFailed(f"GET {url}: HTTP {e.code}", status=e.code) from e
        # urllib wraps only OSError; a reply that is not HTTP (HTTPException) and a
        # redirect to a URL that does not parse (ValueError) come through bare.
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise FetchFailed(f"GET {url}: {e}") from e
        if len(body) > _MAX_RESPONSE:
            raise FetchFailed(f"GET {url}: response larger than {_MAX_RESPONSE} bytes")
        return body

    return fetch


def _show_monitor(result: MonitorResult, as_json: bool) -> None:
    if as_json:
        out: dict[str, Any] = msgspec.to_builtins(result)
        _print_json({"verified": True, **out})
        return
    root = base64.b64encode(result.root).decode()
    if result.outcome == "empty":
        what = "the log is empty (it has signed no checkpoint yet: nothing to trust)"
    elif result.outcome == "initialized":
        what = f"trusting the log's checkpoint at size {result.new_size} (first use)"
    elif result.outcome == "unchanged":
        what = f"unchanged at size {result.new_size}"
    else:
        what = f"consistent: size {result.old_size} -> {result.new_size}"
    sys.stdout.write(f"verified: {what}, root {root}\n")
    sys.stdout.flush()


def _cmd_monitor(args: argparse.Namespace, fetcher: Fetcher | None = None) -> int:
    key = _vkey(args.vkey)
    policy = _policy(args)
    fetch = fetcher or urllib_fetcher(args.url)
    state = Path(args.state)
    if args.watch is None:
        _show_monitor(monitor_once(fetch, key, state, witnesses=policy), args.json)
        return EXIT_OK
    iterations = 0
    try:
        while args.max_iterations is None or iterations < args.max_iterations:
            if iterations:
                time.sleep(args.watch)
            iterations += 1
            try:
                _show_monitor(monitor_once(fetch, key, state, witnesses=policy), args.json)
            except FetchFailed as e:
                # The log being unreachable is not evidence of misbehaviour: keep watching.
                _say(sys.stderr, f"maip-verify: warning: {e}")
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


# ---- replay -------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.json else "text")
    if args.json and fmt != "json":
        raise _UsageError(f"--json prints the json timeline; it cannot go with --format {fmt}")
    key = _vkey(args.vkey)
    data = _read_bytes(args.bundle, "bundle")
    timeline = build_timeline(data, key)
    text = render(timeline, fmt)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise _UsageError(f"cannot write {args.output}: {e.strerror}") from e
    else:
        sys.stdout.write(text)
    if timeline.failure is not None:
        _say(sys.stderr, f"maip-verify: NOT VERIFIED: {timeline.failure}")
        return EXIT_FAILED
    return EXIT_OK


# ---- witness ------------------------------------------------------------------------


def _listen(arg: str) -> tuple[str, int]:
    """``--listen HOST:PORT`` (``[v6 address]:PORT`` for IPv6); PORT 0 picks a free one."""
    host, sep, port = arg.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (PORT 0-65535), not {arg!r}")
    return host, int(port)


def _cmd_witness(args: argparse.Namespace) -> int:
    log_keys = [_vkey(k) for k in args.log_key]
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        raise _UsageError(f"--state-dir {state_dir} is not a directory")
    key_file = Path(args.key_file) if args.key_file is not None else None
    signer = load_witness_key(state_dir, args.name, key_file)
    witness = Witness(signer, log_keys, WitnessState(state_dir))
    try:
        server = WitnessServer(args.listen, witness, max_body=args.max_body_bytes)
    except OSError as e:
        host, port = args.listen
        raise _UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    # The vkey, then the address: a test (or an operator's script) reads these two lines.
    sys.stdout.write(f"witness vkey: {signer.key.vkey}\n")
    sys.stdout.write(f"witness listening on http://{shown}:{port}/add-checkpoint\n")
    sys.stdout.flush()
    # SIGTERM ends the server as Ctrl-C does. A request in progress may be cut off,
    # which is safe: a checkpoint is stored before its cosignature is sent.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
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
        type=_watch_seconds,
        metavar="SECONDS",
        help=f"repeat every SECONDS (0 < SECONDS <= {_MAX_WATCH:.0f})",
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
            type=_positive_int,
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
        "--listen", required=True, type=_listen, metavar="HOST:PORT", help="port 0: any free"
    )
    w.add_argument("--name", metavar="NAME", help="the witness's key name (to create its key)")
    w.add_argument("--key-file", metavar="PATH", help="an existing key (never created)")
    w.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BODY,
        metavar="N",
        help=f"largest request body (default {DEFAULT_MAX_BODY})",
    )
    w.set_defaults(json=False)
    return p


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "receipt": _cmd_receipt,
    "bundle": _cmd_bundle,
    "consistency": _cmd_consistency,
    "monitor": _cmd_monitor,
    "replay": _cmd_replay,
    "witness": _cmd_witness,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``maip-verify``; returns the exit status."""
    as_json = False
    try:
        args = _parser().parse_args(argv)
        as_json = bool(args.json)
        return _COMMANDS[args.command](args)
    except _UsageError as e:
        _say(sys.stderr, f"maip-verify: error: {str(e).splitlines()[0] if str(e) else e}")
        return EXIT_USAGE
    except VerificationError as e:
        return _failure(e, as_json)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
