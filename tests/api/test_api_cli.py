"""`maip-ledger` CLI: keys, fsck, export, errors; and end-to-end against `serve` as a
subprocess, every receipt checked with the independent verifier."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from api_helpers import THREE_STEP, scripted, write_signing_key
from api_server import BIN, Server, admin_key_headers, cli

import verifier
from ledger.events import EventCatalog, NewEvent
from ledger.keys import KEY_FILE, load_signer
from ledger.log import Log
from ledger.sqlite_store import SQLiteEventStore


class _Note(msgspec.Struct, frozen=True):
    text: str


async def _ledger_of_notes(data: Path, texts: list[str]) -> None:
    """A data dir whose ledger holds one note event per text, each its own batch."""
    write_signing_key(data)
    log = await Log.open(
        SQLiteEventStore(data / "ledger.db"),
        load_signer(data / KEY_FILE),
        EventCatalog({"note.added": _Note}),
    )
    try:
        for seq, text in enumerate(texts):
            await log.append("t1", "s1", seq, [NewEvent("note.added", _Note(text))])
    finally:
        await log.close()


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    d = str(tmp_path)
    made = cli(
        "keys",
        "create",
        "--data-dir",
        d,
        "--tenant",
        "t1",
        "--scopes",
        "orchestrations:read,agents:write",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["tenant_id"] == "t1"
    assert key["scopes"] == ["orchestrations:read", "agents:write"]
    assert key["api_key"].startswith(f"mlk_{key['key_id']}_")
    listed = cli("keys", "list", "--data-dir", d, "--json")
    rows = json.loads(listed.stdout)
    assert [r["key_id"] for r in rows] == [key["key_id"]]
    assert key["api_key"] not in listed.stdout
    revoked = cli("keys", "revoke", key["key_id"], "--data-dir", d, "--json")
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    bad = cli("keys", "create", "--data-dir", d, "--tenant", "t1", "--scopes", "root")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "unknown scope" in bad.stderr
    env_dir = cli("keys", "list", "--json", env={"MAIP_DATA_DIR": d})
    assert json.loads(env_dir.stdout)[0]["key_id"] == key["key_id"]


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    r = cli("fsck", "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 2
    assert r.stderr.startswith("maip-ledger: error:")
    assert r.stderr.count("\n") == 1
    r = cli("serve", "--data-dir", str(tmp_path), env={"MAIP_PORT": "eighty"})
    assert r.returncode == 2
    assert "MAIP_PORT" in r.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("serve", "--port", "abc"), "argument --port: invalid int value: 'abc'"),
        (("serve", "--rate-limit", "fast"), "argument --rate-limit"),
        (("serve", "--no-such-flag"), "unrecognized arguments: --no-such-flag"),
        (("keys",), "the following arguments are required: keys_command"),
        (("launch",), "invalid choice: 'launch'"),
    ],
)
def test_regression_a_flag_argparse_refuses_is_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    """argparse printed its whole usage (18 lines) before the error, against the CLI's
    one-line contract, which MAIP_PORT=abc already kept."""
    r = cli(*args, env={"MAIP_DATA_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("maip-ledger")
    assert named in r.stderr


def test_serve_rejects_bad_bounds_and_cache_sizes(tmp_path: Path) -> None:
    d = str(tmp_path)
    for args, env, named in [
        (("--header-timeout-seconds", "0"), {}, "header timeout"),
        ((), {"MAIP_HEADER_TIMEOUT_SECONDS": "soon"}, "MAIP_HEADER_TIMEOUT_SECONDS"),
        (("--max-connections", "0"), {}, "max connections"),
        ((), {"MAIP_MAX_CONNECTIONS": "many"}, "MAIP_MAX_CONNECTIONS"),
        (("--hash-cache-mib", "0"), {}, "hash cache"),
        ((), {"MAIP_HASH_CACHE_MIB": "lots"}, "MAIP_HASH_CACHE_MIB"),
        (("--receipt-cache-entries", "-1"), {}, "receipt cache"),
        ((), {"MAIP_RECEIPT_CACHE_ENTRIES": "1e9"}, "MAIP_RECEIPT_CACHE_ENTRIES"),
    ]:
        r = cli("serve", "--data-dir", d, *args, env=env)
        assert r.returncode == 2, (args, env, r.stderr)
        assert r.stderr.count("\n") == 1
        assert named in r.stderr


@pytest.mark.slow
def test_end_to_end_serve_keys_fsck_export_and_restart(tmp_path: Path) -> None:
    vkey = write_signing_key(tmp_path)
    server = Server(tmp_path)
    try:
        made = cli(
            "keys",
            "create",
            "--data-dir",
            str(tmp_path),
            "--tenant",
            "acme",
            "--scopes",
            "orchestrations:write,orchestrations:read,agents:write,workflows:write",
            "--json",
        )
        key = json.loads(made.stdout)
        h = {"X-API-Key": key["api_key"], "X-Tenant-ID": "acme"}
        # A key created while the server runs works at once.
        agent = server.json(
            "POST", "/v1/agents", 201, body={"name": "a", "provider": scripted()}, headers=h
        )["agent_id"]
        slow = server.json(
            "POST",
            "/v1/agents",
            201,
            body={"name": "slow", "provider": scripted(delay=1.5)},
            headers=h,
        )["agent_id"]
        wf = server.json(
            "POST", "/v1/workflows", 201, body={"name": "w", "definition": THREE_STEP}, headers=h
        )["workflow_id"]
        done = server.json(
            "POST",
            "/v1/orchestrations/execute",
            200,
            body={"workflow_id": wf, "agents": [agent]},
            headers={**h, "Prefer": "wait=20"},
        )
        assert done["status"] == "completed"
        assert server.json("GET", "/v1/log/key", 200)["vkey"] == vkey
        events = server.json(
            "GET", f"/v1/orchestrations/{done['orchestration_id']}/events", 200, headers=h
        )["events"]
        for e in events:
            receipt = server.json("GET", f"/v1/receipts/{e['receipt_id']}", 200, headers=h)
            verifier.verify_receipt(receipt, base64.b64decode(e["leaf"]), vkey)
        # Acknowledged, then the process is killed mid-run: it resumes after restart.
        running = server.json(
            "POST",
            "/v1/orchestrations/execute",
            202,
            body={"workflow_id": wf, "agents": [slow]},
            headers=h,
        )
        assert running["status"] == "running"
    finally:
        server.stop(signal.SIGKILL)
    server = Server(tmp_path)
    try:
        resumed = server.json(
            "GET", f"/v1/orchestrations/{running['orchestration_id']}?wait=30", 200, headers=h
        )
        assert resumed["status"] == "completed"
        revoked = cli("keys", "revoke", key["key_id"], "--data-dir", str(tmp_path))
        assert revoked.returncode == 0
        assert server.request("GET", "/v1/orchestrations", headers=h)[0] == 401
    finally:
        assert server.stop(signal.SIGTERM) == 0
    # fsck: clean, then tampered.
    clean = cli("fsck", "--data-dir", str(tmp_path), "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    exported = cli("export", done["orchestration_id"], "--data-dir", str(tmp_path))
    assert exported.returncode == 0, exported.stderr
    report = verifier.verify_bundle(exported.stdout.encode(), vkey)
    assert report.status == "completed"
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("DROP TRIGGER events_no_update")
    db.execute(
        "UPDATE events SET leaf = CAST(replace(CAST(leaf AS TEXT), 'urgent', 'URGENT')"
        " AS BLOB) WHERE leaf_index = 9"
    )
    db.commit()
    db.close()
    tampered = cli("fsck", "--data-dir", str(tmp_path), "--json")
    assert tampered.returncode == 1
    assert json.loads(tampered.stdout)["first_bad_index"] == 9


@pytest.mark.slow
def test_serve_demo_prints_working_key_and_is_idempotent(tmp_path: Path) -> None:
    write_signing_key(tmp_path)
    for _ in range(2):
        server = Server(tmp_path, "--demo")
        try:
            banner = server.read_banner(3)
            key = banner.split("(shown once): ")[1].split()[0]
            h = {"X-API-Key": key, "X-Tenant-ID": "demo"}
            agents = server.json("GET", "/v1/orchestrations", 200, headers=h)
            assert agents["next_cursor"] is None
        finally:
            assert server.stop() == 0
    h = admin_key_headers(tmp_path, "demo")
    server = Server(tmp_path)
    try:
        agents = server.json("GET", "/v1/agents", 200, headers=h)["items"]
        workflows = server.json("GET", "/v1/workflows", 200, headers=h)["items"]
        assert [a["name"] for a in agents] == ["demo-agent"]
        assert [w["name"] for w in workflows] == ["demo-triage"]
        assert [s["action"] for s in workflows[0]["definition"]["steps"]] == [
            "llm",
            "tool",
            "decision",
        ]
        done = server.json(
            "POST",
            "/v1/orchestrations/execute",
            200,
            body={"workflow_id": workflows[0]["workflow_id"], "agents": [agents[0]["agent_id"]]},
            headers={**h, "Prefer": "wait=10"},
        )
        assert done["status"] == "completed"
    finally:
        server.stop()


def test_regression_serve_refuses_nan_and_inf_settings_in_one_line(tmp_path: Path) -> None:
    # float() takes "nan" and "inf"; nan slipped past every bound, inf ended in a traceback.
    d = str(tmp_path)
    for args, env, named in [
        (("--rate-limit", "nan"), {}, "MAIP_RATE_LIMIT"),
        (("--rate-limit", "inf"), {}, "MAIP_RATE_LIMIT"),
        ((), {"MAIP_RATE_LIMIT": "-inf"}, "MAIP_RATE_LIMIT"),
        (("--shutdown-grace-seconds", "inf"), {}, "MAIP_SHUTDOWN_GRACE_SECONDS"),
        ((), {"MAIP_HEADER_TIMEOUT_SECONDS": "NaN"}, "MAIP_HEADER_TIMEOUT_SECONDS"),
    ]:
        r = cli("serve", "--data-dir", d, "--port", "0", *args, env=env)
        assert r.returncode == 2, (args, env, r.stderr[-400:])
        assert r.stderr.count("\n") == 1, r.stderr[-400:]
        assert named in r.stderr
        assert "finite" in r.stderr


def test_regression_keys_revoke_on_a_locked_key_store_is_one_line_exit_2(tmp_path: Path) -> None:
    made = cli("keys", "create", "--data-dir", str(tmp_path), "--tenant", "t", "--json")
    key_id = json.loads(made.stdout)["key_id"]
    holder = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the file past the 5 s timeout
    try:
        r = cli("keys", "revoke", key_id, "--data-dir", str(tmp_path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == 2, r.stderr[-400:]
    assert r.stderr.count("\n") == 1, r.stderr[-400:]
    assert "locked" in r.stderr


def test_regression_a_failed_export_leaves_no_partial_file(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_signing_key(data)
    admin_key_headers(data, "t")
    Server(data).stop()  # creates ledger.db
    out = tmp_path / "bundle.jsonl"
    r = cli(
        *("export", "3c90c3cc-0d44-4b50-8888-8dd25736052a", "--data-dir", str(data)),
        *("--tenant", "t", "-o", str(out)),
    )
    assert r.returncode == 2, r.stderr[-400:]
    assert r.stderr.count("\n") == 1, r.stderr[-400:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "partial output left behind"


def _external_orchestration(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A signing key in ``tmp_path`` and an external orchestration for tenant "t",
    made through a real server that is stopped again; (verifier key, its state)."""
    vkey = write_signing_key(tmp_path)
    h = admin_key_headers(tmp_path, "t")
    server = Server(tmp_path)
    try:
        state = server.json(
            "POST", "/v1/orchestrations", 202, body={"executor": "external"}, headers=h
        )
    finally:
        assert server.stop() == 0
    return vkey, state


def test_regression_export_takes_an_orchestration_id_in_either_form_as_the_api_does(
    tmp_path: Path,
) -> None:
    # The API names an orchestration by its UUID or its `maip-orch:<ULID>` form (the
    # state's `id`); export, documented as the same as GET /v1/orchestrations/{id}/bundle,
    # lower-cased the ULID form and found no orchestration.
    vkey, state = _external_orchestration(tmp_path)
    assert state["id"].startswith("maip-orch:")
    for given in (state["id"], state["orchestration_id"].upper()):
        for tenant in (("--tenant", "t"), ()):
            r = cli("export", given, "--data-dir", str(tmp_path), *tenant)
            assert r.returncode == 0, (given, tenant, r.stderr[-400:])
            report = verifier.verify_bundle(r.stdout.encode(), vkey)
            assert report.orchestration_id == state["orchestration_id"]


def test_regression_export_writes_through_a_symlink_or_into_a_fifo_and_replaces_neither(
    tmp_path: Path,
) -> None:
    # Export wrote PATH.tmp and renamed it over PATH: `-o /dev/stdout`, run as root,
    # replaced the /dev/stdout symlink with a regular file; a FIFO was replaced as well,
    # and a symlink to a file lost its link.
    vkey, state = _external_orchestration(tmp_path)
    oid = state["orchestration_id"]
    out = tmp_path / "out"
    out.mkdir()
    real = out / "real.json"
    real.write_bytes(b"old")
    link = out / "link.json"
    link.symlink_to(real)
    r = cli("export", oid, "--data-dir", str(tmp_path), "-o", str(link))
    assert r.returncode == 0, r.stderr[-400:]
    assert link.is_symlink()
    verifier.verify_bundle(real.read_bytes(), vkey)
    fifo = out / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = cli("export", oid, "--data-dir", str(tmp_path), "-o", str(fifo))
    assert r.returncode == 0, r.stderr[-400:]
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a file"
    assert received, "nothing was written into the FIFO"
    verifier.verify_bundle(received[0], vkey)
    assert sorted(p.name for p in out.iterdir()) == ["fifo", "link.json", "real.json"]


def test_regression_export_to_dev_stdout_appends_to_a_file_stdout_and_replaces_nothing(
    tmp_path: Path,
) -> None:
    # `-o /dev/stdout` with stdout redirected to a file (`>> all.jsonl`, or a group's
    # `{ echo header; maip-ledger export ... -o /dev/stdout; } > out`) resolved
    # /proc/self/fd/1 to the file's name and renamed a new file over it: what the shell
    # had written there before was lost, and the shell's later writes went to the
    # replaced file. It must be written through, as into a pipe.
    vkey, state = _external_orchestration(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "all.jsonl"
    target.write_bytes(b"previous\n")
    before = os.stat(target).st_ino
    with target.open("ab") as f:
        export = ["export", state["orchestration_id"], "--data-dir", str(tmp_path)]
        r = subprocess.run(
            [str(BIN), *export, "-o", "/dev/stdout"],
            stdout=f,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert r.returncode == 0, r.stderr[-400:]
    assert os.stat(target).st_ino == before, "the file stdout wrote to was replaced"
    data = target.read_bytes()
    assert data.startswith(b"previous\n"), "what stdout held before was lost"
    verifier.verify_bundle(data[len(b"previous\n") :], vkey)
    assert sorted(p.name for p in out.iterdir()) == ["all.jsonl"]


def test_regression_fsck_reports_a_leaf_rewritten_as_text_instead_of_crashing(
    tmp_path: Path,
) -> None:
    # replace() on a BLOB stores TEXT: fsck hashed the str it read back and crashed.
    asyncio.run(_ledger_of_notes(tmp_path, [f"urgent {i}" for i in range(5)]))
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("DROP TRIGGER events_no_update")
    db.execute("UPDATE events SET leaf = replace(leaf, 'urgent', 'URGENT') WHERE leaf_index = 2")
    db.commit()
    db.close()
    r = cli("fsck", "--data-dir", str(tmp_path), "--json")
    assert "Traceback" not in r.stderr, r.stderr[-400:]
    assert r.returncode == 1, r.stderr[-400:]
    assert json.loads(r.stdout)["first_bad_index"] == 2


def test_regression_fsck_exits_1_for_an_append_only_trigger_replaced_by_a_no_op(
    tmp_path: Path,
) -> None:
    # Same name, a body that lets UPDATE through: the store never re-creates it, and
    # fsck (which checked only the data) said "ok".
    asyncio.run(_ledger_of_notes(tmp_path, ["a", "b"]))
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("DROP TRIGGER tree_hashes_no_update")
    db.execute(
        "CREATE TRIGGER tree_hashes_no_update BEFORE UPDATE ON tree_hashes BEGIN SELECT 1; END"
    )
    db.commit()
    db.close()
    r = cli("fsck", "--data-dir", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr[-400:]
    assert r.stdout.splitlines() == [
        "TAMPERED",
        "  trigger tree_hashes_no_update is not the one the store creates: it was replaced",
    ]


def test_regression_export_over_a_file_keeps_its_permission_bits(tmp_path: Path) -> None:
    # The bundle is written to a temporary file renamed over the old one, which took the
    # umask's mode: a file kept private (0600) became world-readable. Two modes, so one
    # differs from what any umask gives a new file.
    vkey, state = _external_orchestration(tmp_path)
    out = tmp_path / "bundle.jsonl"
    for mode in (0o600, 0o664):
        out.write_bytes(b"old")
        os.chmod(out, mode)
        before = os.stat(out).st_ino
        r = cli("export", state["orchestration_id"], "--data-dir", str(tmp_path), "-o", str(out))
        assert r.returncode == 0, r.stderr[-400:]
        assert os.stat(out).st_ino != before, "not replaced: the test would prove nothing"
        assert stat.S_IMODE(os.stat(out).st_mode) == mode, (oct(mode), oct(os.stat(out).st_mode))
        verifier.verify_bundle(out.read_bytes(), vkey)
