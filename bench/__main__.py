"""``make bench``: every benchmark, each printing its figures. ``--quick`` for CI smoke."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import timeit

from ledger.runtime import settle_interpreter

SUITES = ["ledger_log", "engine", "verify_bundle", "api"]


def _interpreter_speed() -> float:
    """Microseconds for a fixed piece of pure Python, best of five: the same code ran
    from 16 to 28 us on the 2-core bench VM within one day, and every figure below
    moves with it, so each run prints it beside them."""
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds each")
    parser.add_argument("suites", nargs="*", choices=[[], *SUITES], help="run only these")
    args = parser.parse_args()
    started = time.perf_counter()
    # As ``maip-ledger serve`` does (ledger/runtime.py).
    settle_interpreter()
    print(f"interpreter speed: sum(range(1000)) in {_interpreter_speed():.1f} us (lower is faster)")
    for name in args.suites or SUITES:
        # The VM's speed moves within minutes, so each suite's figures get their own
        # reading of it, taken just before they run.
        print(f"\n== bench.{name} == (interpreter {_interpreter_speed():.1f} us)", flush=True)
        importlib.import_module(f"bench.{name}").run(args.quick)
        sys.stdout.flush()
    print(
        f"\nall benchmarks done in {time.perf_counter() - started:.0f} s; interpreter speed "
        f"at the end: {_interpreter_speed():.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
