"""A real ``maip-verify witness`` subprocess for the API's witnessing tests, on a loopback
port chosen up front so that it can be stopped and started again at the same URL (the
log's configured one)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

WITNESS_NAME = "witness.test/w1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Witness:
    def __init__(self, state_dir: Path, log_vkey: str, port: int, name: str = WITNESS_NAME):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.port = port
        self.argv = [
            sys.executable,
            "-m",
            "verifier.cli",
            "witness",
            "--state-dir",
            str(state_dir),
            "--name",
            name,
            "--log-key",
            log_vkey,
            "--listen",
            f"127.0.0.1:{port}",
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.vkey = ""
        self.stderr: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/add-checkpoint"

    def start(self) -> Witness:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        first, second = self.proc.stdout.readline(), self.proc.stdout.readline()
        if not first.startswith("witness vkey: ") or str(self.port) not in second:
            self.proc.kill()
            raise AssertionError(f"the witness did not start: {first!r} {second!r}")
        self.vkey = first.removeprefix("witness vkey: ").strip()
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        return self

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.stderr.append(line)

    def stop(self) -> None:
        """SIGKILL, as a crash; the state directory stays."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        self.proc = None

    def snapshot(self, to: Path) -> None:
        shutil.copytree(self.state_dir, to)

    def restore(self, snapshot: Path) -> None:
        shutil.rmtree(self.state_dir)
        shutil.copytree(snapshot, self.state_dir)
