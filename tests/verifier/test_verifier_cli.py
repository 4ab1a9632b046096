"""maip-verify: exit codes (0 verified / 1 not verified / 2 usage or parse error, one
line on stderr), --json reports, and the replay renderers (HTML escaping included)."""

from __future__ import annotations

import ast
import base64
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import verifier_testkit as kit

from verifier.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle() -> kit.Bundle:
    return kit.build_bundle(kit.scenario(n_steps=2, extra_per_step=2), batch=3)


@pytest.fixture
def files(bundle: kit.Bundle, tmp_path: Path) -> dict[str, Path]:
    paths = {
        "bundle": tmp_path / "bundle.jsonl",
        "vkey": tmp_path / "log.vkey",
        "receipt": tmp_path / "receipt.json",
        "leaf": tmp_path / "leaf.bin",
    }
    paths["bundle"].write_bytes(bundle.encode())
    paths["vkey"].write_text(bundle.vkey + "\n")
    paths["receipt"].write_bytes(
        msgspec.json.encode({**bundle.receipts[2], "orchestration_id": kit.ORCH_ID})
    )
    paths["leaf"].write_bytes(bundle.leaves[2])
    return paths


def test_verifier_imports_nothing_from_ledger_or_api() -> None:
    for path in (ROOT / "verifier").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"ledger", "api"}, f"{path} imports {name}"
    code = (
        "import sys, verifier, verifier.cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ledger', 'api')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_bundle_verifies_with_vkey_file_and_string(
    files: dict[str, Path], bundle: kit.Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bundle", str(files["bundle"]), "--vkey", str(files["vkey"])]) == 0
    assert main(["bundle", str(files["bundle"]), "--vkey", bundle.vkey, "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("verified: 11 events")
    report = msgspec.json.decode(out[-1])
    assert report["verified"] is True
    assert report["event_count"] == 11
    assert report["status"] == "completed"


def test_tampered_bundle_exits_1_naming_the_step(
    files: dict[str, Path], bundle: kit.Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [dict(line) for line in bundle.lines]
    lines[-1] = {"kind": "state", "state": {**lines[-1]["state"], "status": "failed"}}
    files["bundle"].write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in lines))
    assert main(["bundle", str(files["bundle"]), "--vkey", str(files["vkey"])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "§6.1 step 5 (replay)" in err
    assert "state.status: claimed 'failed', replay 'completed'" in err
    assert main(["bundle", str(files["bundle"]), "--vkey", str(files["vkey"]), "--json"]) == 1
    report = msgspec.json.decode(capsys.readouterr().out)
    assert report == {
        "verified": False,
        "step": "§6.1 step 5 (replay)",
        "error_type": "StateMismatch",
        "error": (
            "claimed state differs from replay: state.status: claimed 'failed', replay 'completed'"
        ),
        "evidence": {},
    }


def test_unparseable_bundle_exits_2_with_one_line(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["bundle"].write_bytes(b'{"kind":"header"\n')
    assert main(["bundle", str(files["bundle"]), "--vkey", str(files["vkey"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("maip-verify: error: bundle format (§6): line 1 does not decode")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bundle"], "the following arguments are required"),
        (["frobnicate"], "invalid choice"),
        (["bundle", "x.jsonl", "--vkey", "not-a-key+zz+AAAA"], "invalid vkey"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_regression_vkey_with_a_non_utf8_byte_is_a_usage_error(files: dict[str, Path]) -> None:
    """A non-UTF-8 byte in --vkey reaches parse_vkey as a lone surrogate, which raised
    UnicodeEncodeError out of main (a traceback, exit 1)."""
    rest = kit.signer().verifier.vkey.split("+", 1)[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "verifier.cli",
            b"bundle",
            bytes(files["bundle"]),
            b"--vkey",
            b"\xff+" + rest.encode(),
        ],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(b"\n") == 1
    assert done.stderr.startswith(b"maip-verify: error: invalid vkey")


def test_receipt_with_leaf_file_and_leaf_b64(
    files: dict[str, Path], bundle: kit.Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "receipt",
                str(files["receipt"]),
                "--leaf",
                str(files["leaf"]),
                "--vkey",
                str(files["vkey"]),
            ]
        )
        == 0
    )
    b64 = base64.b64encode(bundle.leaves[2]).decode()
    assert (
        main(["receipt", str(files["receipt"]), "--leaf-b64", b64, "--vkey", bundle.vkey, "--json"])
        == 0
    )
    report = msgspec.json.decode(capsys.readouterr().out.splitlines()[-1])
    assert report["verified"] is True
    assert report["stream_seq"] == 3


def test_receipt_for_another_leaf_exits_1(
    files: dict[str, Path], bundle: kit.Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    files["leaf"].write_bytes(bundle.leaves[3])
    assert (
        main(
            [
                "receipt",
                str(files["receipt"]),
                "--leaf",
                str(files["leaf"]),
                "--vkey",
                str(files["vkey"]),
            ]
        )
        == 1
    )
    assert "§4.1 step 3 (leaf hash)" in capsys.readouterr().err


def test_consistency_accepts_server_json_and_a_list(
    bundle: kit.Bundle, files: dict[str, Path], tmp_path: Path
) -> None:
    tree, key = bundle.tree, kit.signer()
    from ledger.checkpoint import Checkpoint as WriterCheckpoint

    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(WriterCheckpoint(kit.ORIGIN, 5, tree.root(5)).sign(key))
    new.write_text(WriterCheckpoint(kit.ORIGIN, 20, tree.root(20)).sign(key))
    proof = [kit.b64(h) for h in tree.consistency(5, 20)]
    as_obj, as_list = tmp_path / "p1.json", tmp_path / "p2.json"
    as_obj.write_bytes(msgspec.json.encode({"first": 5, "second": 20, "proof": proof}))
    as_list.write_bytes(msgspec.json.encode(proof))
    vkey = str(files["vkey"])
    assert main(["consistency", str(old), str(new), "--proof", str(as_obj), "--vkey", vkey]) == 0
    assert main(["consistency", str(old), str(new), "--proof", str(as_list), "--vkey", vkey]) == 0
    as_list.write_bytes(msgspec.json.encode(proof[::-1]))
    assert main(["consistency", str(old), str(new), "--proof", str(as_list), "--vkey", vkey]) == 1
    assert main(["consistency", str(new), str(old), "--proof", str(as_obj), "--vkey", vkey]) == 2


def test_regression_a_proof_that_does_not_verify_is_not_called_a_fork(
    bundle: kit.Bundle,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any failed consistency proof was reported as a detected fork, although a wrong
    proof file proves nothing about the log; two signed roots of one size do."""
    from ledger.checkpoint import Checkpoint as WriterCheckpoint

    tree, key, vkey = bundle.tree, kit.signer(), str(files["vkey"])
    old, new, other = tmp_path / "old", tmp_path / "new", tmp_path / "other"
    old.write_text(WriterCheckpoint(kit.ORIGIN, 5, tree.root(5)).sign(key))
    new.write_text(WriterCheckpoint(kit.ORIGIN, 20, tree.root(20)).sign(key))
    other.write_text(WriterCheckpoint(kit.ORIGIN, 5, tree.root(6)).sign(key))
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(msgspec.json.encode([kit.b64(h) for h in tree.consistency(4, 20)]))
    capsys.readouterr()
    assert main(["consistency", str(old), str(new), "--proof", str(wrong), "--vkey", vkey]) == 1
    err = capsys.readouterr().err
    assert "does not show that the tree of size 20 extends" in err
    assert "fork" not in err.lower()
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"[]")
    assert main(["consistency", str(old), str(other), "--proof", str(empty), "--vkey", vkey]) == 1
    assert "fork: two signed checkpoints of size 5" in capsys.readouterr().err


def test_replay_text_json_and_html(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = str(files["vkey"])
    assert main(["replay", str(files["bundle"]), "--vkey", vkey]) == 0
    text = capsys.readouterr().out
    assert "bundle: VERIFIED (status completed)" in text
    assert "✓ step s1: agent a1, action llm, completed, attempts 1" in text
    assert 'gen_ai.request.model: "gpt-test"' in text
    assert main(["replay", str(files["bundle"]), "--vkey", vkey, "--format", "json"]) == 0
    timeline = msgspec.json.decode(capsys.readouterr().out)
    assert [s["step_id"] for s in timeline["steps"]] == ["s0", "s1"]
    assert timeline["steps"][0]["input_tokens"] == 12
    out = tmp_path / "r.html"
    assert (
        main(["replay", str(files["bundle"]), "--vkey", vkey, "--format", "html", "-o", str(out)])
        == 0
    )
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'data-target="step-1"' in page
    assert "<script src" not in page
    assert "<link" not in page


def test_regression_replay_json_flag_prints_the_json_timeline(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # `--json` is "machine-readable output" on every subcommand; replay printed text.
    vkey = str(files["vkey"])
    assert main(["replay", str(files["bundle"]), "--vkey", vkey, "--format", "json"]) == 0
    expected = msgspec.json.decode(capsys.readouterr().out)
    assert main(["replay", str(files["bundle"]), "--vkey", vkey, "--json"]) == 0
    assert msgspec.json.decode(capsys.readouterr().out) == expected
    args = ["replay", str(files["bundle"]), "--vkey", vkey, "--json", "--format", "json"]
    assert main(args) == 0
    assert msgspec.json.decode(capsys.readouterr().out) == expected
    # Asking for JSON and for another format at once is a usage error, not a guess.
    assert main(["replay", str(files["bundle"]), "--vkey", vkey, "--json", "--format", "html"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--json" in err


def test_replay_html_escapes_event_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sc = kit.scenario(n_steps=1, extra_per_step=1)
    evil = "<script>alert('x')</script>"
    for _etype, payload in sc.events:
        if "messages" in payload:
            payload["messages"] = [{"role": "user", "content": evil}]
    sc.events[2][1]["step_id"] = sc.events[3][1]["step_id"] = sc.events[4][1]["step_id"] = evil
    b = kit.build_bundle(sc)
    path = tmp_path / "b.jsonl"
    path.write_bytes(b.encode())
    out = tmp_path / "r.html"
    # The claimed state names step "s0": the bundle fails replay, the page still renders.
    assert main(["replay", str(path), "--vkey", b.vkey, "--format", "html", "-o", str(out)]) == 1
    page = out.read_text()
    assert evil not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "NOT VERIFIED" in page
    assert "§6.1 step 5 (replay)" in capsys.readouterr().err


def test_replay_marks_the_tampered_event_failed(
    bundle: kit.Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [dict(line) for line in bundle.lines]
    n = bundle.event_line_numbers()[3]
    leaf = base64.b64decode(lines[n]["leaf"]).replace(b'"attempt":1', b'"attempt":2')
    lines[n] = {**lines[n], "leaf": base64.b64encode(leaf).decode()}
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in lines))
    assert main(["replay", str(path), "--vkey", bundle.vkey, "--format", "json"]) == 1
    timeline = msgspec.json.decode(capsys.readouterr().out)
    marks = [e["verified"] for s in timeline["steps"] for e in s["events"]]
    assert marks.count(False) == 1
    assert timeline["steps"][0]["verified"] is False
    assert timeline["steps"][1]["verified"] is True
