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
"""

from __future__ import annotations

import gc
import sys

__all__ = ["SWITCH_INTERVAL", "settle_interpreter"]

#: The interpreter switch interval, in seconds, for a process hosting a log.
SWITCH_INTERVAL = 0.0001


def settle_interpreter() -> None:
    """Set the switch interval and freeze what startup allocated (see module docs)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()
