"""A `maip-ledger serve` subprocess on loopback, driven with urllib (synchronous)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "maip-ledger"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def key_headers(data_dir: Path, tenant: str, scopes: str) -> dict[str, str]:
    """Request headers with a new key for ``tenant``, made by ``keys create``."""
    made = cli(
        "keys",
        "create",
        "--data-dir",
        str(data_dir),
        "--tenant",
        tenant,
        "--scopes",
        scopes,
        "--json",
    )
    return {"X-API-Key": json.loads(made.stdout)["api_key"], "X-Tenant-ID": tenant}


def admin_key_headers(data_dir: Path, tenant: str) -> dict[str, str]:
    """Request headers with a new ``admin`` key for ``tenant``."""
    return key_headers(data_dir, tenant, "admin")


class Server:
    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--data-dir", str(data_dir), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "MAIP_LOG_LEVEL": "warning", **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.url = line.split()[-1]
        self.banner = ""

    def read_banner(self, lines: int) -> str:
        assert self.proc.stdout is not None
        self.banner = "".join(self.proc.stdout.readline() for _ in range(lines))
        return self.banner

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode()
        h = dict(headers or {})
        if data is not None:
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, status: int, **kw: Any) -> Any:
        code, _, body = self.request(method, path, **kw)
        assert code == status, (code, body)
        return json.loads(body)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
