"""``make bench``: every benchmark, each printing its figures. ``--quick`` for CI smoke."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from ledger.runtime import settle_interpreter

SUITES = ["ledger_log", "engine", "verify_bundle", "api"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds each")
    parser.add_argument("suites", nargs="*", choices=[[], *SUITES], help="run only these")
    args = parser.parse_args()
    started = time.perf_counter()
    # As ``maip-ledger serve`` does (ledger/runtime.py).
    settle_interpreter()
    for name in args.suites or SUITES:
        print(f"\n== bench.{name} ==", flush=True)
        importlib.import_module(f"bench.{name}").run(args.quick)
        sys.stdout.flush()
    print(f"\nall benchmarks done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
