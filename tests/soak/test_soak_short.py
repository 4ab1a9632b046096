"""The short soak (CI): 60 s of load against `maip-ledger serve` subprocesses with at least
3 SIGKILLs, a SIGTERM, a disk-full phase (recovery without restart), a SIGKILL while the
disk is full (restart once space is back), a read-only start and read-only data files
under the running server (recovery without restart). It fails on any lost or duplicated
acknowledged event, fork or rollback, 5xx other than 503, receipt that does not verify, or
unclean fsck (see ``bench/soak.py``). Needs root for its ext4 loop device and ``chattr``:
it fails, loudly, rather than skip the disk phases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_soak_short_survives_kills_disk_full_and_read_only(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the soak's disk phases need root (loop device, mount, chattr)"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench.soak", "--minutes", "1", "--kills", "3"),
            *("--clients", "4", "--pace", "0.15", "--fs-mb", "64"),
            *("--journal", str(tmp_path / "journal.jsonl")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "result:              PASS" in out, out
    assert re.search(r"events lost:\s+0\n", out), out
    kills = re.search(r"kills survived:\s+(\d+) SIGKILL \((\d+) while disk full\)", out)
    assert kills is not None, out
    assert int(kills.group(1)) >= 3, out
    assert int(kills.group(2)) >= 1, out
    phases = r"fault phases:\s+disk full [1-9]\d*, read-only [1-9]\d*, read-only live [1-9]"
    assert re.search(phases, out), out
    assert "same server process" in out, out
    acked = re.search(r"events acknowledged: (\d+)", out)
    assert acked is not None, out
    assert int(acked.group(1)) > 0, out
    assert f"receipts verified:   {acked.group(1)}/{acked.group(1)}" in out, out
