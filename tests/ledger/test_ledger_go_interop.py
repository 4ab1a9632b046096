"""Interop: Go's golang.org/x/mod sumdb/note and sumdb/tlog accept our output.

Runs where Go and Debian's golang-golang-x-mod-dev are installed (.ci/run installs
them); skipped elsewhere, since they are a second implementation we check against,
not a dependency.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from ledger_testkit import Note, open_log, signer

from ledger.events import NewEvent

GOPATH = Path("/usr/share/gocode")
PROGRAM = Path(__file__).with_name("go") / "checknote.go"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("go") is None or not (GOPATH / "src/golang.org/x/mod/sumdb/tlog").is_dir(),
        reason="Go and golang-golang-x-mod-dev are not installed",
    ),
]


def _go_check(case: dict[str, object], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",
        "GOCACHE": str(tmp / "gocache"),
        "HOME": str(tmp),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["go", "run", str(PROGRAM)],
        input=json.dumps(case),
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


async def test_go_verifies_our_checkpoints_and_proofs(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    for i in range(5):
        await log.append("t1", "s", i, [NewEvent("note.added", Note(str(i)))])
    old = log.latest_checkpoint()
    receipts = []
    for i in range(5, 23):
        receipts += await log.append("t1", "s", i, [NewEvent("note.added", Note(str(i)))])
    latest = log.latest_checkpoint()
    assert old is not None
    assert latest is not None
    target = receipts[3]
    leaf = (await log.recorded(target.event_id)).leaf
    case = {
        "vkey": signer().verifier.vkey,
        "skey": signer().skey,
        "note": target.checkpoint,
        "old_note": old.note,
        "leaf": base64.b64encode(leaf).decode(),
        "leaf_index": target.leaf_index,
        "inclusion_proof": [base64.b64encode(h).decode() for h in target.inclusion_proof],
        "consistency_proof": [
            base64.b64encode(h).decode()
            for h in await log.consistency_proof(old.size, target.tree_size)
        ],
    }
    await log.close()
    result = _go_check(case, tmp_path)
    assert result.stdout.strip() == "ok", result.stdout + result.stderr
    # And Go notices a wrong proof: this is a real second check, not a rubber stamp.
    case["leaf_index"] = target.leaf_index + 1
    result = _go_check(case, tmp_path)
    assert result.returncode == 1
    assert "inclusion" in result.stdout
