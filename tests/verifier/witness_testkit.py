"""Real logs and a real witness process for the witnessing tests.

:func:`log_history` appends batches to a real ``ledger.log.Log`` on a SQLite file and
keeps each batch's signed checkpoint and the log's own consistency proofs between them.
:class:`WitnessProcess` runs ``maip-verify witness`` as a subprocess on loopback (port
0), reads the two lines it prints, and posts ``add-checkpoint`` bodies to it.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.events import EventCatalog, NewEvent
from ledger.log import Log
from ledger.note import NoteSigner
from ledger.sqlite_store import SQLiteEventStore

ORIGIN = "witness-test.maip.local/log"
WITNESS_NAME = "witness.test/w1"


class Note(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: str


CATALOG = EventCatalog({"note.added": Note})


def log_signer(seed: int = 3, origin: str = ORIGIN) -> NoteSigner:
    return NoteSigner(origin, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


@dataclass
class LogHistory:
    """The checkpoints a log signed (one per batch) and proofs between them."""

    vkey: str
    sizes: list[int]
    notes: dict[int, str]
    proofs: dict[tuple[int, int], list[bytes]] = field(default_factory=dict)

    def body(self, old: int, new: int, proof: Sequence[bytes] | None = None) -> bytes:
        """An add-checkpoint body from ``old`` to the checkpoint of size ``new``."""
        if proof is None:
            proof = self.proofs[(old, new)] if 0 < old < new else []
        lines = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
        return f"old {old}\n{lines}\n{self.notes[new]}".encode()


def log_history(
    path: Path, batches: Sequence[int], *, tag: str = "a", key: NoteSigner | None = None
) -> LogHistory:
    """Append ``batches`` (events per batch) to a new log at ``path``."""
    signer = key or log_signer()

    async def build() -> LogHistory:
        log = await Log.open(SQLiteEventStore(path), signer, CATALOG)
        try:
            seq = 0
            sizes: list[int] = []
            for n in batches:
                events = [NewEvent("note.added", Note(f"{tag}-{seq + i}")) for i in range(n)]
                await log.append("tenant-w", f"stream-{tag}", seq, events)
                seq += n
                sizes.append(log.size)
            notes = {s: (await log.checkpoint_at(s)).note for s in sizes}
            history = LogHistory(signer.verifier.vkey, sizes, notes)
            for i, m in enumerate(sizes):
                for n in sizes[i + 1 :]:
                    history.proofs[(m, n)] = await log.consistency_proof(m, n)
            return history
        finally:
            await log.close()

    return asyncio.run(build())


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


class WitnessProcess:
    """``maip-verify witness`` as a subprocess; :meth:`start` waits for its two lines."""

    def __init__(self, state_dir: Path, log_keys: Sequence[str], *extra: str) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "verifier.cli",
            "witness",
            "--state-dir",
            str(state_dir),
            "--name",
            WITNESS_NAME,
            "--listen",
            "127.0.0.1:0",
            *(a for k in log_keys for a in ("--log-key", k)),
            *extra,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.vkey = ""
        self.port = 0
        self.stderr: list[str] = []
        self._drainer: threading.Thread | None = None

    def start(self) -> WitnessProcess:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        first, second = self.proc.stdout.readline(), self.proc.stdout.readline()
        if not first.startswith("witness vkey: "):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            self._closed()
            raise AssertionError(f"the witness did not start: {first!r} {err!r}")
        self.vkey = first.removeprefix("witness vkey: ").strip()
        address = second.removeprefix("witness listening on http://127.0.0.1:")
        self.port = int(address.removesuffix("/add-checkpoint\n"))
        # Drain stderr so the witness never blocks on a full pipe.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def post(self, body: bytes, *, path: str = "/add-checkpoint", method: str = "POST") -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return Reply(resp.status, resp.getheader("Content-Type") or "", resp.read())
        finally:
            conn.close()

    def _closed(self) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=30)
        if self._drainer is not None:
            self._drainer.join(timeout=30)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self._closed()

    def stop(self) -> int:
        """SIGTERM: the witness's own orderly stop; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._closed()
