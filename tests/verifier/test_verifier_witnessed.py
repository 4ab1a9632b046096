"""Requiring witness cosignatures (specs/log-format.md §9.5) where the verifier checks a
checkpoint: receipts (§4.1 step 1), bundles (§6.1 step 1), consistency and the monitor,
through the functions and through ``maip-verify --witness/--witness-quorum``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import verifier_testkit as kit
import witness_testkit as wk
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint as WriterCheckpoint
from verifier import (
    ForkDetected,
    QuorumNotMet,
    WitnessSigner,
    monitor_once,
    verify_bundle,
    verify_receipt,
    witness_policy,
)
from verifier._cosignature import cosigned_text
from verifier._monitor import CHECKPOINT_PATH, KEY_PATH, WITNESSED_PATH
from verifier.cli import main

T0 = 1_767_225_600


def _witness(seed: int) -> WitnessSigner:
    return WitnessSigner(
        f"witness.test/w{seed}", Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    )


W1, W2, W3 = _witness(11), _witness(12), _witness(13)


def cosign(note: str, *signers: WitnessSigner) -> str:
    return note + "".join(s.cosign(cosigned_text(note), T0) for s in signers)


@pytest.fixture(scope="module")
def bundle() -> kit.Bundle:
    return kit.build_bundle(kit.scenario(n_steps=2, extra_per_step=2), batch=3)


def _cosigned_bundle(bundle: kit.Bundle, *signers: WitnessSigner) -> bytes:
    lines: list[dict[str, Any]] = []
    for line in bundle.lines:
        if line["kind"] == "header":
            lines.append({**line, "checkpoint": cosign(line["checkpoint"], *signers)})
        else:
            lines.append(line)
    return b"".join(msgspec.json.encode(line) + b"\n" for line in lines)


def test_receipt_requires_the_quorum_only_when_asked(bundle: kit.Bundle) -> None:
    receipt = bundle.receipts[2]
    plain = msgspec.json.encode(receipt)
    cosigned = msgspec.json.encode({**receipt, "checkpoint": cosign(receipt["checkpoint"], W1, W3)})
    # Without witnesses nothing changes: cosignatures are other keys' lines, ignored.
    verify_receipt(plain, bundle.leaves[2], bundle.vkey)
    verify_receipt(cosigned, bundle.leaves[2], bundle.vkey)
    two_of_three = witness_policy([W1.key, W2.key, W3.key], 2)
    verify_receipt(cosigned, bundle.leaves[2], bundle.vkey, witnesses=two_of_three)
    with pytest.raises(QuorumNotMet) as info:
        verify_receipt(
            cosigned, bundle.leaves[2], bundle.vkey, witnesses=witness_policy([W1.key, W2.key])
        )
    assert info.value.step == "§4.1 step 1 (checkpoint)"
    assert info.value.missing == (W2.key.vkey,)


def test_bundle_requires_the_header_checkpoint_quorum(bundle: kit.Bundle) -> None:
    policy = witness_policy([W1.key, W2.key])
    report = verify_bundle(_cosigned_bundle(bundle, W1, W2), bundle.vkey, witnesses=policy)
    assert "cosigned by 2 of 2 trusted witness(es), 2 required" in report.steps[0]
    assert "witness" not in verify_bundle(bundle.encode(), bundle.vkey).steps[0]
    with pytest.raises(QuorumNotMet) as info:
        verify_bundle(_cosigned_bundle(bundle, W1), bundle.vkey, witnesses=policy)
    assert info.value.step == "§6.1 step 1 (checkpoint)"
    assert W2.key.vkey in str(info.value)


class _Log:
    """A log over ``kit.Tree`` whose checkpoints carry the cosignatures a test chooses."""

    def __init__(self, seed: int = 0) -> None:
        self.key = kit.signer()
        self.tree = kit.Tree([kit.leaf_hash(b"%d-%d" % (seed, i)) for i in range(30)])
        self.size = 5
        self.signers: tuple[WitnessSigner, ...] = ()
        self.fetched: list[str] = []

    def note(self, size: int) -> str:
        return cosign(
            WriterCheckpoint(kit.ORIGIN, size, self.tree.root(size)).sign(self.key), *self.signers
        )

    def fetch(self, path: str) -> bytes:
        self.fetched.append(path)
        if path in (CHECKPOINT_PATH, f"{WITNESSED_PATH}?min_cosignatures=1"):
            return self.note(self.size).encode()
        if path == KEY_PATH:
            v = self.key.verifier
            return msgspec.json.encode({"origin": v.name, "vkey": v.vkey})
        q = dict(p.split("=") for p in path.split("?", 1)[1].split("&"))
        m, n = int(q["first"]), int(q["second"])
        proof = [kit.b64(h) for h in self.tree.consistency(m, n)]
        return msgspec.json.encode({"first": m, "second": n, "proof": proof})


def test_monitor_trusts_only_a_witnessed_checkpoint(tmp_path: Path) -> None:
    log, state = _Log(), tmp_path / "state.json"
    vkey = log.key.verifier.vkey
    policy = witness_policy([W1.key, W2.key], 1)
    with pytest.raises(QuorumNotMet, match="size 5"):
        monitor_once(log.fetch, vkey, state, witnesses=policy)
    assert not state.exists()
    log.signers = (W2,)
    assert monitor_once(log.fetch, vkey, state, witnesses=policy).outcome == "initialized"
    log.size, log.signers = 9, ()
    with pytest.raises(QuorumNotMet):
        monitor_once(log.fetch, vkey, state, witnesses=policy)
    assert msgspec.json.decode(state.read_bytes())["size"] == 5  # not trusted: kept
    log.signers = (W1,)
    assert monitor_once(log.fetch, vkey, state, witnesses=policy).outcome == "extended"
    # With witnesses required it reads the witnessed checkpoint, never the latest one.
    assert CHECKPOINT_PATH not in log.fetched
    # A fork is reported as a fork, witnessed or not: the log's signature proves it.
    fork = _Log(seed=1)
    fork.size = 9
    with pytest.raises(ForkDetected):
        monitor_once(fork.fetch, vkey, state, witnesses=policy)


@pytest.fixture
def files(bundle: kit.Bundle, tmp_path: Path) -> dict[str, Path]:
    receipt = bundle.receipts[2]
    paths = {
        "receipt": tmp_path / "receipt.json",
        "receipt1": tmp_path / "receipt1.json",
        "leaf": tmp_path / "leaf.bin",
        "bundle": tmp_path / "bundle.jsonl",
        "w1": tmp_path / "w1.vkey",
    }
    paths["receipt"].write_bytes(
        msgspec.json.encode({**receipt, "checkpoint": cosign(receipt["checkpoint"], W1, W2)})
    )
    paths["receipt1"].write_bytes(
        msgspec.json.encode({**receipt, "checkpoint": cosign(receipt["checkpoint"], W1)})
    )
    paths["leaf"].write_bytes(bundle.leaves[2])
    paths["bundle"].write_bytes(_cosigned_bundle(bundle, W2))
    paths["w1"].write_text(W1.key.vkey + "\n")
    return paths


def test_cli_receipt_with_witnesses(
    files: dict[str, Path], bundle: kit.Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["receipt", "--vkey", bundle.vkey, "--leaf", str(files["leaf"])]
    witnesses = ["--witness", str(files["w1"]), "--witness", W2.key.vkey]
    assert main([*base, str(files["receipt"]), *witnesses]) == 0
    assert "cosigned by at least 2 of 2 trusted witnesses" in capsys.readouterr().out
    assert main([*base, str(files["receipt1"]), *witnesses]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "NOT VERIFIED" in err
    assert W2.key.vkey in err
    assert main([*base, str(files["receipt1"]), *witnesses, "--witness-quorum", "1"]) == 0
    assert main([*base, str(files["receipt"])]) == 0  # no flags: as before


def test_cli_bundle_and_consistency_with_witnesses(
    files: dict[str, Path], bundle: kit.Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = ["bundle", str(files["bundle"]), "--vkey", bundle.vkey]
    assert main([*b, "--witness", W2.key.vkey]) == 0
    assert "cosigned by 1 of 1 trusted witness(es)" in capsys.readouterr().out
    assert main([*b, "--witness", W1.key.vkey, "--json"]) == 1
    out = msgspec.json.decode(capsys.readouterr().out)
    assert (out["verified"], out["error_type"], out["step"]) == (
        False,
        "QuorumNotMet",
        "§6.1 step 1 (checkpoint)",
    )
    log = _Log()
    old, new, proof = tmp_path / "old", tmp_path / "new", tmp_path / "proof.json"
    old.write_text(log.note(5))
    log.signers = (W3,)
    new.write_text(log.note(12))
    proof.write_bytes(msgspec.json.encode([kit.b64(h) for h in log.tree.consistency(5, 12)]))
    c = ["consistency", str(old), str(new), "--proof", str(proof), "--vkey", bundle.vkey]
    assert main([*c, "--witness", W3.key.vkey]) == 0
    assert main([*c, "--witness", W1.key.vkey]) == 1
    assert "the new checkpoint (size 12)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--witness-quorum", "1"], "needs at least one --witness"),
        (["--witness", W1.key.vkey, "--witness-quorum", "2"], "within 1..1"),
        (["--witness", W1.key.vkey, "--witness-quorum", "0"], "at least 1"),
        (["--witness", W1.key.vkey, "--witness", W1.key.vkey], "given twice"),
        (["--witness", kit.signer().verifier.vkey], "type 0x04"),
    ],
)
def test_cli_bad_witness_flags_exit_2_with_one_line(
    files: dict[str, Path], bundle: kit.Bundle, extra: list[str], message: str
) -> None:
    argv = [sys.executable, "-m", "verifier.cli", "receipt", str(files["receipt"])]
    argv += ["--vkey", bundle.vkey, "--leaf", str(files["leaf"]), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert message in done.stderr


@pytest.mark.slow
def test_the_witness_processes_cosignatures_satisfy_the_verifier(tmp_path: Path) -> None:
    """End to end: a real log, the witness process, and ``maip-verify consistency
    --witness`` on the checkpoint with the witness's line appended."""
    history = wk.log_history(tmp_path / "log.db", [4, 6])
    (tmp_path / "state").mkdir()
    process = wk.WitnessProcess(tmp_path / "state", [history.vkey]).start()
    try:
        first, second = history.sizes
        assert process.post(history.body(0, first)).status == 200
        reply = process.post(history.body(first, second))
        assert reply.status == 200
    finally:
        process.kill()
    old, new, proof = tmp_path / "old", tmp_path / "new", tmp_path / "proof.json"
    old.write_text(history.notes[first])
    new.write_text(history.notes[second] + reply.body.decode())
    proof.write_bytes(msgspec.json.encode([kit.b64(h) for h in history.proofs[(first, second)]]))
    argv = ["consistency", str(old), str(new), "--proof", str(proof), "--vkey", history.vkey]
    assert main([*argv, "--witness", process.vkey]) == 0
    new.write_text(history.notes[second])
    assert main([*argv, "--witness", process.vkey]) == 1
