"""settle_interpreter: what the server and bench entry points apply once."""

from __future__ import annotations

import subprocess
import sys


def test_settle_interpreter_sets_the_switch_interval_gc_thresholds_and_freezes_startup() -> None:
    # A fresh interpreter, so this process's own settings are neither read nor changed.
    code = (
        "import gc, sys\n"
        "from ledger.runtime import GC_THRESHOLDS, SWITCH_INTERVAL, settle_interpreter\n"
        "before = (sys.getswitchinterval(), gc.get_freeze_count(), gc.get_threshold())\n"
        "settle_interpreter()\n"
        "print(before[0], before[1], abs(sys.getswitchinterval() - SWITCH_INTERVAL) < 1e-9, "
        "gc.get_freeze_count(), before[2] != GC_THRESHOLDS, gc.get_threshold() == GC_THRESHOLDS)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    default_interval, frozen_before, interval_set, frozen_after, gc_changed, gc_set = out
    assert float(default_interval) == 0.005
    assert int(frozen_before) == 0
    assert interval_set == "True"
    assert gc_changed == "True"
    assert gc_set == "True"
    # Everything the imports created is out of the collector's sight.
    assert int(frozen_after) > 10_000
