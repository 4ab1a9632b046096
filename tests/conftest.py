"""Session-wide guard: a failing test must fail the run, not hang it.

aiosqlite runs each connection on a non-daemon thread. A test that fails before it
closes its store leaves that thread waiting forever, and the interpreter then waits for
it at exit: the run printed its failure and then hung until CI's timeout. After the
session, any such thread left over is named on stderr and the process exits with the
session's status.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    left = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if left and _status:
        print(f"threads left running after the session: {', '.join(left)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_status[0] or 1)
