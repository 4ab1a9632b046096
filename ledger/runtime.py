"""Interpreter settings for a process that hosts a :class:`~ledger.log.Log`.

Call :func:`settle_interpreter` once, at the entry point, after imports. Two pauses
dominated a busy log's latency, and neither was the log's own work:

1. **Handing the interpreter lock back.** A commit's writer thread needs the lock after
   SQLite's step and to wake the event loop. While the loop's thread is busy, CPython
   makes the waiting thread sit out a whole switch interval first (``sys.setswitchinterval``,
   5 ms by default), several times per commit, with every appender waiting behind it.
   At 1 ms 64 appenders reached ~6-7k events/s on the 2-core bench machine; at 0.1 ms
   ~8-9k.
2. **Full garbage collections.** A generation-2 pass walks every tracked object, and the
   imports alone leave ~50k (functions, classes, dicts) that live as long as the process:
   25-55 ms per pass on the bench machine, landing in the tail of append latency.
   :func:`gc.freeze` moves them out of the collector's sight.
3. **Young-generation collections.** At the default thresholds (700, 10, 10) a busy
   server ran ~60 collections a second, and together they took a quarter of the
   event loop's thread: executed orchestrations over HTTP went from ~330-360/s to
   ~430-530/s at (50,000, 50, 20), and their p99 from ~470 ms to ~210-260 ms, in runs
   minutes apart on the bench machine. The log, the engine and the HTTP handlers leave
   almost no cyclic garbage (~400 unreachable objects after 10,000 executions), and
   everything else is freed by reference counting as before, so collecting less often
   costs next to no memory.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["GC_THRESHOLDS", "SWITCH_INTERVAL", "settle_interpreter"]

#: The interpreter switch interval, in seconds, for a process hosting a log.
SWITCH_INTERVAL = 0.0001
#: :func:`gc.set_threshold` for a process hosting a log.
GC_THRESHOLDS = (50_000, 50, 20)


def settle_interpreter() -> None:
    """Set the switch interval and collector thresholds, and freeze what startup
    allocated (see module docs)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()
    gc.freeze()
