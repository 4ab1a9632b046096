"""``maip-verify witness``: serve a C2SP tlog-witness (``POST /add-checkpoint``, §9) until
Ctrl-C or SIGTERM, with its key and state in ``--state-dir``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from verifier._cli_args import EXIT_OK, UsageError, trusted_vkey
from verifier._witness import Witness
from verifier._witness_http import WitnessServer
from verifier._witness_state import WitnessState, load_witness_key

__all__ = ["listen_address", "witness_command"]


def listen_address(arg: str) -> tuple[str, int]:
    """``--listen HOST:PORT`` (``[v6 address]:PORT`` for IPv6); PORT 0 picks a free one."""
    host, sep, port = arg.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (PORT 0-65535), not {arg!r}")
    return host, int(port)


def witness_command(args: argparse.Namespace) -> int:
    log_keys = [trusted_vkey(k) for k in args.log_key]
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        raise UsageError(f"--state-dir {state_dir} is not a directory")
    key_file = Path(args.key_file) if args.key_file is not None else None
    signer = load_witness_key(state_dir, args.name, key_file)
    witness = Witness(signer, log_keys, WitnessState(state_dir))
    try:
        server = WitnessServer(
            args.listen,
            witness,
            max_body=args.max_body_bytes,
            request_seconds=args.request_seconds,
        )
    except OSError as e:
        host, port = args.listen
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
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
