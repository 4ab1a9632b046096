"""A writer process for the crash test: appends under load and journals every ack.

Usage: python crash_writer.py DB_PATH  — prints one JSON receipt line per acknowledged
event, flushed immediately, and runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).parent))

from ledger_testkit import Note, open_log

from ledger.events import NewEvent

_encode = msgspec.json.Encoder().encode


async def main(path: Path) -> None:
    log = await open_log(path)
    out = sys.stdout.buffer

    async def appender(w: int) -> None:
        seq = await log.stream_head("t1", f"w{w}")
        while True:
            events = [
                NewEvent("note.added", Note(f"w{w}-{seq + i + 1}-" + "x" * 300))
                for i in range(1 + w % 3)
            ]
            receipts = await log.append("t1", f"w{w}", seq, events)
            seq += len(events)
            out.write(b"".join(_encode(r) + b"\n" for r in receipts))
            out.flush()

    await asyncio.gather(*(appender(w) for w in range(16)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
