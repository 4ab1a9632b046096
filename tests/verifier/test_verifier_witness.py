"""The witness (``maip-verify witness``, specs/log-format.md §9.3-§9.4) as a real
subprocess on loopback, fed checkpoints and consistency proofs from real SQLite logs:
C2SP tlog-witness statuses, state kept across SIGKILL, concurrent submissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import witness_testkit as wk
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import CheckpointRefused, Witness, WitnessSigner, parse_vkey, verify_cosignature
from verifier._witness_state import WitnessState

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> wk.LogHistory:
    return wk.log_history(tmp_path_factory.mktemp("log") / "log.db", [3, 2, 5, 1, 7])


@pytest.fixture(scope="module")
def fork(tmp_path_factory: pytest.TempPathFactory) -> wk.LogHistory:
    """The same log key signing another history: same origin and sizes, other roots."""
    return wk.log_history(tmp_path_factory.mktemp("fork") / "log.db", [3, 2, 5, 1, 7], tag="b")


@pytest.fixture
def witness(tmp_path: Path, history: wk.LogHistory) -> Iterator[wk.WitnessProcess]:
    process = wk.WitnessProcess(tmp_path / "state", [history.vkey])
    (tmp_path / "state").mkdir()
    process.start()
    try:
        yield process
    finally:
        process.kill()


def _size(state_dir: Path) -> int:
    record = WitnessState(state_dir).load(wk.ORIGIN)
    assert record is not None
    return record.size


def test_cosigns_a_good_sequence(witness: wk.WitnessProcess, history: wk.LogHistory) -> None:
    old = 0
    for size in history.sizes:
        reply = witness.post(history.body(old, size))
        assert reply.status == 200, reply.body
        assert reply.content_type.startswith("text/plain")
        line = reply.body.decode()
        assert line.startswith(f"\u2014 {wk.WITNESS_NAME} ")
        assert line.endswith("\n")
        assert line.count("\n") == 1
        cosignature = verify_cosignature(history.notes[size], line, witness.vkey)
        assert cosignature.witness == witness.vkey
        old = size
    state_dir = Path(witness.argv[witness.argv.index("--state-dir") + 1])
    assert _size(state_dir) == history.sizes[-1]
    # The same checkpoint again is cosigned again, and changes nothing.
    again = witness.post(history.body(old, old))
    assert again.status == 200
    assert _size(state_dir) == history.sizes[-1]


def test_a_stale_old_size_is_409_with_the_witness_size(
    witness: wk.WitnessProcess, history: wk.LogHistory
) -> None:
    first, second, third = history.sizes[:3]
    assert witness.post(history.body(0, second)).status == 200
    reply = witness.post(history.body(first, third))
    assert reply.status == 409
    assert reply.content_type == "text/x.tlog.size"
    assert reply.body == f"{second}\n".encode()
    # A client that had no state learns the size the same way, then catches up.
    assert witness.post(history.body(0, third)).body == f"{second}\n".encode()
    assert witness.post(history.body(second, third)).status == 200


def test_a_bad_proof_is_422_and_not_cosigned(
    witness: wk.WitnessProcess, history: wk.LogHistory, tmp_path: Path
) -> None:
    first, _, third = history.sizes[:3]
    assert witness.post(history.body(0, first)).status == 200
    proof = list(history.proofs[(first, third)])
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 0x01]) + flipped[i][1:]
        reply = witness.post(history.body(first, third, flipped))
        assert reply.status == 422, (i, reply.body)
        assert b"does not verify" in reply.body
    assert witness.post(history.body(first, third, proof[:-1])).status == 422
    assert _size(tmp_path / "state") == first
    assert witness.post(history.body(first, third)).status == 200


def test_a_fork_is_refused_at_the_same_size_and_beyond(
    witness: wk.WitnessProcess, history: wk.LogHistory, fork: wk.LogHistory, tmp_path: Path
) -> None:
    _first, second = history.sizes[:2]
    assert fork.vkey == history.vkey  # the same trusted key signed both histories
    assert fork.notes[second] != history.notes[second]
    assert witness.post(history.body(0, second)).status == 200
    # The same size, another root: 409, the witness's size unchanged.
    reply = witness.post(fork.body(second, second))
    assert reply.status == 409
    assert b"fork" in reply.body
    assert not reply.content_type.startswith("text/x.tlog.size")
    # A larger tree of the fork: its proof is from the fork's root, not the witness's.
    last = fork.sizes[-1]
    assert witness.post(fork.body(second, last, fork.proofs[(second, last)])).status == 422
    assert _size(tmp_path / "state") == second


def test_a_rollback_is_refused(
    witness: wk.WitnessProcess, history: wk.LogHistory, tmp_path: Path
) -> None:
    first, second, third = history.sizes[:3]
    assert witness.post(history.body(0, third)).status == 200
    # old = the witness's size, checkpoint smaller: old exceeds the checkpoint's size.
    assert witness.post(history.body(third, second, [])).status == 400
    # old = the smaller tree's predecessor: not the witness's size.
    reply = witness.post(history.body(first, second))
    assert (reply.status, reply.body) == (409, f"{third}\n".encode())
    assert _size(tmp_path / "state") == third


def test_an_unknown_origin_is_404_and_an_unknown_key_403(
    witness: wk.WitnessProcess, tmp_path: Path
) -> None:
    other_origin = wk.log_history(
        tmp_path / "o.db", [2], key=wk.log_signer(seed=4, origin="other.example/log")
    )
    reply = witness.post(other_origin.body(0, 2))
    assert reply.status == 404
    assert b"unknown log origin" in reply.body
    # The witnessed origin, signed by another key.
    impostor = wk.log_history(tmp_path / "i.db", [2], key=wk.log_signer(seed=5))
    reply = witness.post(impostor.body(0, 2))
    assert reply.status == 403
    assert WitnessState(tmp_path / "state").load(wk.ORIGIN) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 0\n",
        b"old 01\n\nx\n",
        b"old -1\n\nx\n",
        b"old 0\nnot base64!\n\nx\n",
        b"old 0\nAAAA\n\nx\n",  # base64, but not a 32-byte hash
        b"OLD 0\n\nx\n",
        b"old 0\n\xff\xfe\n\nx\n",
        b"old 0\n\nno signatures here\n",
    ],
)
def test_malformed_bodies_are_400(witness: wk.WitnessProcess, body: bytes) -> None:
    reply = witness.post(body)
    assert reply.status == 400, reply.body
    assert reply.body.startswith(b"malformed request")


def test_too_many_proof_lines_and_a_larger_old_size_are_400(
    witness: wk.WitnessProcess, history: wk.LogHistory
) -> None:
    size = history.sizes[0]
    assert witness.post(history.body(0, size, [b"\x00" * 32] * 64)).status == 400
    assert witness.post(history.body(size + 1, size, [])).status == 400


def test_http_shape_method_path_and_body_cap(tmp_path: Path, history: wk.LogHistory) -> None:
    (tmp_path / "state").mkdir()
    process = wk.WitnessProcess(tmp_path / "state", [history.vkey], "--max-body-bytes", "600")
    process.start()
    try:
        assert process.post(b"", method="GET").status == 405
        assert process.post(b"x", path="/other").status == 404
        big = process.post(b"old 0\n\n" + b"x" * 600)
        assert big.status == 413
        # The cap is on the whole body; a normal request still fits and is cosigned.
        assert len(history.body(0, history.sizes[0])) <= 600
        assert process.post(history.body(0, history.sizes[0])).status == 200
        assert process.stop() == 0  # SIGTERM is an orderly stop
    finally:
        process.kill()


def test_state_survives_sigkill_and_a_restart_never_cosigns_a_fork(
    tmp_path: Path, history: wk.LogHistory, fork: wk.LogHistory
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    first, second = history.sizes[:2]
    process = wk.WitnessProcess(state_dir, [history.vkey]).start()
    try:
        assert process.post(history.body(0, first)).status == 200
        assert process.post(history.body(first, second)).status == 200
    finally:
        process.kill()
    key_mode = stat.S_IMODE((state_dir / "witness.key").stat().st_mode)
    assert key_mode == 0o600
    restarted = wk.WitnessProcess(state_dir, [history.vkey]).start()
    try:
        assert restarted.vkey == process.vkey  # the same key, loaded
        # The fork of the size it cosigned is refused, from either old size.
        assert restarted.post(fork.body(second, second)).status == 409
        assert restarted.post(fork.body(0, second)).body == f"{second}\n".encode()
        # Its own history goes on from where it was.
        third = history.sizes[2]
        assert restarted.post(history.body(second, third)).status == 200
    finally:
        restarted.kill()
    # Whatever the kill interrupted, no temporary file is mistaken for state.
    assert sorted(p.name for p in state_dir.iterdir() if not p.name.startswith(".")) == sorted(
        ["witness.key", WitnessState(state_dir).path(wk.ORIGIN).name]
    )


def test_concurrent_submissions_cosign_one_history_without_rollback(
    witness: wk.WitnessProcess, history: wk.LogHistory, fork: wk.LogHistory, tmp_path: Path
) -> None:
    """Many clients at once, each sending every step of the true history and of a fork:
    the witness ends at the true history's last size, and never cosigned two
    checkpoints of one size."""
    cosigned: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    sizes = history.sizes

    def client(source: wk.LogHistory) -> None:
        old = 0
        for size in sizes:
            if old > size:
                continue
            reply = witness.post(source.body(old, size))
            if reply.status == 409 and reply.content_type == "text/x.tlog.size":
                old = int(reply.body)  # another client moved the witness on: catch up
                if old > size:
                    continue
                reply = witness.post(source.body(old, size))
            if reply.status == 200:
                with lock:
                    cosigned.append((size, source.notes[size].encode()))
                old = size

    sources = [history if i % 3 else fork for i in range(9)]
    threads = [threading.Thread(target=client, args=(source,)) for source in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    by_size: dict[int, set[bytes]] = {}
    for size, note in cosigned:
        by_size.setdefault(size, set()).add(note)
    assert all(len(notes) == 1 for notes in by_size.values()), "two checkpoints of one size"
    record = WitnessState(tmp_path / "state").load(wk.ORIGIN)
    assert record is not None
    assert record.size == sizes[-1]
    # The stored checkpoint is one of the two histories' last, and the one cosigned.
    assert record.checkpoint in {history.notes[sizes[-1]], fork.notes[sizes[-1]]}
    assert record.checkpoint.encode() in by_size[sizes[-1]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "HOST:PORT"),
        (["--log-key", "a+b+c"], "invalid vkey"),
        (["--max-body-bytes", "0"], "at least 1"),
        (["--name", "has space"], "witness name"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(
    tmp_path: Path, history: wk.LogHistory, args: list[str], message: str
) -> None:
    base = {
        "--state-dir": str(tmp_path),
        "--log-key": history.vkey,
        "--listen": "127.0.0.1:0",
        "--name": "w.test/ok",
    }
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [sys.executable, "-m", "verifier.cli", "witness"]
    for flag, value in base.items():
        argv += [flag, value]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert message in done.stderr


def test_a_missing_state_dir_and_a_readable_key_are_refused(
    tmp_path: Path, history: wk.LogHistory
) -> None:
    argv = [sys.executable, "-m", "verifier.cli", "witness", "--log-key", history.vkey]
    argv += ["--listen", "127.0.0.1:0", "--name", "w.test/ok"]
    missing = subprocess.run(
        [*argv, "--state-dir", str(tmp_path / "nope")], capture_output=True, text=True, check=False
    )
    assert (missing.returncode, missing.stderr.count("\n")) == (2, 1)
    key = tmp_path / "witness.key"
    key.write_text("PRIVATE+KEY+w.test/ok+00000000+AA==\n")
    os.chmod(key, 0o644)
    readable = subprocess.run(
        [*argv, "--state-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert readable.returncode == 2
    assert "readable by group or others" in readable.stderr
    assert "AA==" not in readable.stderr + readable.stdout


def test_a_corrupt_state_record_is_500_and_never_a_fresh_start(
    tmp_path: Path, history: wk.LogHistory, fork: wk.LogHistory
) -> None:
    """Unreadable state must not read as "never cosigned": from size 0 the witness
    would cosign a fork of the checkpoint it had cosigned."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    first, second = history.sizes[:2]
    process = wk.WitnessProcess(state_dir, [history.vkey]).start()
    try:
        assert process.post(history.body(0, first)).status == 200
    finally:
        process.kill()
    WitnessState(state_dir).path(wk.ORIGIN).write_text('{"origin": "x"')
    restarted = wk.WitnessProcess(state_dir, [history.vkey]).start()
    try:
        for body in (fork.body(0, first), history.body(first, second)):
            reply = restarted.post(body)
            assert reply.status == 500
            assert b"cannot use its state" in reply.body
            assert "\u2014".encode() not in reply.body
    finally:
        restarted.kill()


def test_the_private_key_is_never_printed_or_logged(tmp_path: Path, history: wk.LogHistory) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    process = wk.WitnessProcess(state_dir, [history.vkey]).start()
    try:
        assert process.post(history.body(0, history.sizes[0])).status == 200
        assert process.post(b"old 0\n\nbad\n").status == 400
        assert process.stop() == 0
    finally:
        process.kill()
    # The fifth field: split four times, as the key's base64 may itself hold "+" (the
    # last "+" once left a one-character "secret" that a log line held by chance).
    secret = (state_dir / "witness.key").read_text().strip().split("+", 4)[4]
    seen = process.vkey + "".join(process.stderr)
    assert "witness: 127.0.0.1" in seen  # requests were logged
    assert secret not in seen
    assert "PRIVATE" not in seen


def test_the_cosignature_time_is_the_injected_clock(tmp_path: Path, history: wk.LogHistory) -> None:
    """The core in-process, its clock injected: the line carries exactly that time."""
    signer = WitnessSigner("witness.test/clock", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    core = Witness(signer, [parse_vkey(history.vkey)], WitnessState(tmp_path), now=lambda: 1234.9)
    first = history.sizes[0]
    line = core.add_checkpoint(history.body(0, first))
    got = verify_cosignature(history.notes[first], line, signer.key)
    assert got.timestamp == 1234
    with pytest.raises(CheckpointRefused) as info:
        core.add_checkpoint(history.body(0, first))
    assert (info.value.status, info.value.size) == (409, first)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_regression_idle_connections_do_not_grow_the_witness_threads_without_bound(
    witness: wk.WitnessProcess, history: wk.LogHistory
) -> None:
    """Each open connection held a thread of its own for up to 30 s of silence, and
    nothing capped them: a client opening connections grew the witness's threads (and
    memory) without bound. Past MAX_CONNECTIONS a connection is answered 503 at once."""
    import socket

    from verifier._witness_http import MAX_CONNECTIONS

    assert witness.proc is not None
    idle = [
        socket.create_connection(("127.0.0.1", witness.port), timeout=30)
        for _ in range(MAX_CONNECTIONS + 40)
    ]
    try:
        # Accepted in order: once this one is answered, every idle one was accepted.
        busy = witness.post(history.body(0, history.sizes[0]))
        assert busy.status == 503
        assert _threads(witness.proc.pid) <= MAX_CONNECTIONS + 4
    finally:
        for conn in idle:
            conn.close()
    # The slots come back as the idle connections close (bounded wait).
    for _ in range(300):
        reply = witness.post(history.body(0, history.sizes[0]))
        if reply.status != 503:
            break
        threading.Event().wait(0.05)
    assert reply.status == 200


def test_regression_a_request_trickled_in_is_cut_off_at_its_deadline(
    tmp_path: Path, history: wk.LogHistory
) -> None:
    """The socket timeout bounded each read, not the request: a client sending a byte
    every few seconds held a connection, and one of the witness's few threads, for as
    long as it liked. A whole request must now arrive within --request-seconds."""
    import socket

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    process = wk.WitnessProcess(state_dir, [history.vkey], "--request-seconds", "1").start()
    try:
        conn = socket.create_connection(("127.0.0.1", process.port), timeout=30)
        body = history.body(0, history.sizes[0])
        head = f"POST /add-checkpoint HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode())
        sent = 0
        closed = False
        conn.settimeout(0.2)
        for byte in body:  # one byte every 0.2 s: the whole body would take minutes
            try:
                conn.sendall(bytes([byte]))
                sent += 1
                closed = conn.recv(1) == b""
            except TimeoutError:
                continue  # nothing to read yet: still open
            except OSError:
                closed = True
            if closed:
                break
        conn.close()
        assert closed
        assert sent < len(body)
        # Others are served as before.
        assert process.post(history.body(0, history.sizes[0])).status == 200
        assert process.stop() == 0
    finally:
        process.kill()
    assert any("not complete within 1 s" in line for line in process.stderr)
