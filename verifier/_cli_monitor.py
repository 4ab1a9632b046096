"""``maip-verify monitor``: one round of the log monitor (``verifier._monitor``, §5), or
one every ``--watch SECONDS``, shown as a line of text or a JSON report.
"""

from __future__ import annotations

import argparse
import base64
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from verifier._cli_args import EXIT_OK, required_witnesses, trusted_vkey
from verifier._cli_output import print_json, say
from verifier._errors import FetchFailed
from verifier._monitor import Fetcher, MonitorResult, monitor_once

__all__ = ["MAX_WATCH", "monitor_command", "watch_seconds"]

# A monitor that looks less often than daily is better run from cron; the bound also
# keeps --watch inside what time.sleep accepts.
MAX_WATCH = 86_400.0


def watch_seconds(arg: str) -> float:
    """``--watch SECONDS``: argparse's float() also takes nan, inf and 1e300."""
    try:
        seconds = float(arg)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_WATCH:  # also false for nan
        raise argparse.ArgumentTypeError(
            f"SECONDS must be a number above 0 and at most {MAX_WATCH:.0f}, not {arg!r}"
        )
    return seconds


def _show(result: MonitorResult, as_json: bool) -> None:
    if as_json:
        out: dict[str, Any] = msgspec.to_builtins(result)
        print_json({"verified": True, **out})
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


def monitor_command(args: argparse.Namespace, connect: Callable[[str], Fetcher]) -> int:
    """``connect(base_url)`` makes the fetcher, once the keys and policy have parsed."""
    key = trusted_vkey(args.vkey)
    policy = required_witnesses(args)
    fetch = connect(args.url)
    state = Path(args.state)
    if args.watch is None:
        _show(monitor_once(fetch, key, state, witnesses=policy), args.json)
        return EXIT_OK
    iterations = 0
    try:
        while args.max_iterations is None or iterations < args.max_iterations:
            if iterations:
                time.sleep(args.watch)
            iterations += 1
            try:
                _show(monitor_once(fetch, key, state, witnesses=policy), args.json)
            except FetchFailed as e:
                # The log being unreachable is not evidence of misbehaviour: keep watching.
                say(sys.stderr, f"maip-verify: warning: {e}")
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK
