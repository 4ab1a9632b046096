"""A corrupt database at startup: `maip-ledger serve` refuses to start with one clear line
(exit 2, no traceback) when the stored tree does not match its last signed checkpoint or
the file is not a database; `fsck` names the first bad index of a changed older leaf."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ledger.keys import DEFAULT_ORIGIN, KEY_FILE
from ledger.note import generate_signer

BIN = Path(sys.executable).parent / "maip-ledger"
ENV = {**os.environ, "MAIP_LOG_LEVEL": "warning"}
Ledger = tuple[str, bytes]  # (signing key file text, checkpointed ledger.db bytes)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=60, env=ENV, check=False
    )


def _serve(data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN), "serve", "--data-dir", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return code, err


def _data_dir(root: Path, skey: str) -> Path:
    data = root / "data"
    data.mkdir()
    fd = os.open(data / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(skey)
    return data


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    """A ledger with five agents registered, checkpointed into the main file."""
    skey = generate_signer(DEFAULT_ORIGIN).skey + "\n"
    data = _data_dir(tmp_path_factory.mktemp("corrupt"), skey)
    made = _run(
        "keys", "create", "--data-dir", str(data), "--tenant", "t", "--scopes", "admin", "--json"
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["api_key"]
    proc = _serve(data)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        for i in range(1, 6):
            body = {"name": f"agent-corrupt-{i:04d}", "provider": {"kind": "scripted"}}
            req = urllib.request.Request(
                f"{url}/v1/agents",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"X-API-Key": key, "X-Tenant-ID": "t", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        code, err = _stop(proc)
    assert code == 0, err
    db = sqlite3.connect(data / "ledger.db")
    try:
        # The engine's registry snapshot repeats each agent's name; these tests change
        # a name in its leaf, so the leaf must be the one place it is written.
        db.execute("DELETE FROM snapshots")
        db.execute("DELETE FROM snapshot_pieces")
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return skey, (data / "ledger.db").read_bytes()


def _leaf_index(data: Path, marker: str) -> int:
    db = sqlite3.connect(data / "ledger.db")
    try:
        rows = db.execute("SELECT leaf_index, leaf FROM events").fetchall()
    finally:
        db.close()
    (index,) = [i for i, leaf in rows if marker.encode() in leaf]
    return int(index)


def _refuses(data: Path, *words: str) -> None:
    code, err = _stop(_serve(data))
    assert code == 2, err
    assert "Traceback" not in err, err
    assert "maip-ledger: error:" in err, err
    for word in words:
        assert word in err, err


@pytest.mark.slow
def test_soak_corrupt_newest_leaf_refuses_to_start(tmp_path: Path, ledger: Ledger) -> None:
    skey, db = ledger
    data = _data_dir(tmp_path, skey)
    assert db.count(b'"agent-corrupt-0005"') == 1
    (data / "ledger.db").write_bytes(db.replace(b'"agent-corrupt-0005"', b'"agent-corrupt-0009"'))
    index = _leaf_index(data, "agent-corrupt-0009")
    _refuses(data, f"leaf {index} does not match")


@pytest.mark.slow
def test_soak_corrupt_file_header_refuses_to_start(tmp_path: Path, ledger: Ledger) -> None:
    skey, db = ledger
    data = _data_dir(tmp_path, skey)
    (data / "ledger.db").write_bytes(b"\0" * 100 + db[100:])
    _refuses(data)


@pytest.mark.slow
def test_soak_corrupt_checkpoint_signed_by_another_key_refuses(
    tmp_path: Path, ledger: Ledger
) -> None:
    _, db = ledger
    data = _data_dir(tmp_path, generate_signer(DEFAULT_ORIGIN).skey + "\n")
    (data / "ledger.db").write_bytes(db)
    _refuses(data, "does not verify")


@pytest.mark.slow
def test_soak_corrupt_older_leaf_fsck_names_first_bad_index(tmp_path: Path, ledger: Ledger) -> None:
    skey, db = ledger
    data = _data_dir(tmp_path, skey)
    assert db.count(b'"agent-corrupt-0002"') == 1
    (data / "ledger.db").write_bytes(db.replace(b'"agent-corrupt-0002"', b'"agent-corrupt-0008"'))
    index = _leaf_index(data, "agent-corrupt-0008")
    out = _run("fsck", "--data-dir", str(data))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"TAMPERED: first bad index {index}" in out.stdout, out.stdout
