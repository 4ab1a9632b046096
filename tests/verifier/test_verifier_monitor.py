"""The monitor: trust on first use, consistent growth, and rollback/fork/bad-signature
detection, through monitor_once (injected fetcher) and the CLI (real HTTP, urllib)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest
import verifier_testkit as kit

from ledger.checkpoint import Checkpoint as WriterCheckpoint
from verifier import (
    FetchFailed,
    ForkDetected,
    MalformedInput,
    RollbackDetected,
    SignatureInvalid,
    cli,
)
from verifier._monitor import CHECKPOINT_PATH, KEY_PATH, monitor_once
from verifier.cli import main


class FakeLog:
    """A log over ``kit.Tree`` whose visible size (and history) the test controls."""

    def __init__(self, leaves: int = 40, seed: int = 0) -> None:
        self.key = kit.signer()
        self.tree = kit.Tree([kit.leaf_hash(b"%d-%d" % (seed, i)) for i in range(leaves)])
        self.size = 1
        self.override: bytes | None = None
        #: Answer 404 for the checkpoint, as a log that has signed none (an empty log).
        self.empty = False

    def note(self, size: int) -> str:
        return WriterCheckpoint(kit.ORIGIN, size, self.tree.root(size)).sign(self.key)

    def fetch(self, path: str) -> bytes:
        if path == CHECKPOINT_PATH and self.empty:
            raise FetchFailed(f"GET {path}: HTTP 404", status=404)
        if path == CHECKPOINT_PATH:
            return self.override or self.note(self.size).encode()
        if path == KEY_PATH:
            verifier = self.key.verifier
            return msgspec.json.encode({"origin": verifier.name, "vkey": verifier.vkey})
        if path.startswith("/v1/log/proof/consistency?"):
            q = dict(p.split("=") for p in path.split("?", 1)[1].split("&"))
            m, n = int(q["first"]), int(q["second"])
            proof = [kit.b64(h) for h in self.tree.consistency(m, n)]
            return msgspec.json.encode({"first": m, "second": n, "proof": proof})
        raise FetchFailed(f"GET {path}: HTTP 404")


@pytest.fixture
def log() -> FakeLog:
    return FakeLog()


def test_first_use_then_growth_then_unchanged(log: FakeLog, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    log.size = 5
    first = monitor_once(log.fetch, log.key.verifier.vkey, state)
    assert (first.outcome, first.new_size) == ("initialized", 5)
    log.size = 13
    grown = monitor_once(log.fetch, log.key.verifier.vkey, state)
    assert (grown.outcome, grown.old_size, grown.new_size) == ("extended", 5, 13)
    again = monitor_once(log.fetch, log.key.verifier.vkey, state)
    assert again.outcome == "unchanged"
    stored = msgspec.json.decode(state.read_bytes())
    assert stored["size"] == 13
    assert stored["checkpoint"] == log.note(13)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_rolled_back_log_is_detected(log: FakeLog, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    log.size = 20
    monitor_once(log.fetch, log.key.verifier.vkey, state)
    log.size = 12
    with pytest.raises(RollbackDetected, match="smaller than the trusted size 20") as info:
        monitor_once(log.fetch, log.key.verifier.vkey, state)
    assert info.value.old_checkpoint == log.note(20)
    assert info.value.new_checkpoint == log.note(12)
    assert msgspec.json.decode(state.read_bytes())["size"] == 20  # trusted state kept


def test_forked_log_same_size_other_root_is_detected(log: FakeLog, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    log.size = 9
    monitor_once(log.fetch, log.key.verifier.vkey, state)
    fork = FakeLog(seed=1)
    fork.size = 9
    with pytest.raises(ForkDetected, match="two signed checkpoints of size 9 with different roots"):
        monitor_once(fork.fetch, log.key.verifier.vkey, state)


def test_forked_log_with_a_bad_consistency_proof_is_detected(log: FakeLog, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    log.size = 9
    monitor_once(log.fetch, log.key.verifier.vkey, state)
    fork = FakeLog(seed=1)
    fork.size = 30
    with pytest.raises(ForkDetected, match="consistency proof from size 9 to 30 does not verify"):
        monitor_once(fork.fetch, log.key.verifier.vkey, state)
    assert msgspec.json.decode(state.read_bytes())["size"] == 9


def test_bad_signature_is_rejected_and_state_kept(log: FakeLog, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    log.size = 7
    monitor_once(log.fetch, log.key.verifier.vkey, state)
    log.size = 8
    log.override = (
        WriterCheckpoint(kit.ORIGIN, 8, log.tree.root(8)).sign(kit.signer(seed=2)).encode()
    )
    with pytest.raises(SignatureInvalid, match="no signature by the trusted key") as info:
        monitor_once(log.fetch, log.key.verifier.vkey, state)
    assert dict(info.value.evidence)["trusted checkpoint"] == log.note(7)
    assert msgspec.json.decode(state.read_bytes())["size"] == 7


# ---- the CLI over real HTTP ----------------------------------------------------------


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` on a loopback HTTP server in a thread; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(log: FakeLog) -> Iterator[tuple[str, FakeLog]]:
    class Handler(_Quiet):
        def do_GET(self) -> None:
            try:
                body = log.fetch(self.path)
            except FetchFailed:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with _serving(Handler) as url:
        yield url, log


def test_cli_monitor_exits_1_and_prints_both_checkpoints_on_rollback(
    served: tuple[str, FakeLog], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, log = served
    state = tmp_path / "s.json"
    args = ["monitor", "--url", url, "--vkey", log.key.verifier.vkey, "--state", str(state)]
    log.size = 16
    assert main(args) == 0
    log.size = 3
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert log.note(16) in out
    assert log.note(3) in out
    assert err.count("\n") == 1
    assert "rollback" in err


def test_cli_monitor_watch_runs_bounded_iterations(
    served: tuple[str, FakeLog], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, log = served
    log.size = 4
    state = tmp_path / "s.json"
    code = main(
        [
            "monitor",
            "--url",
            url,
            "--vkey",
            log.key.verifier.vkey,
            "--state",
            str(state),
            "--watch",
            "0.01",
            "--max-iterations",
            "3",
            "--json",
        ]
    )
    assert code == 0
    outcomes = [
        msgspec.json.decode(line)["outcome"] for line in capsys.readouterr().out.splitlines()
    ]
    assert outcomes == ["initialized", "unchanged", "unchanged"]


def test_cli_monitor_unreachable_log_is_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "monitor",
            "--url",
            "http://127.0.0.1:9",
            "--vkey",
            kit.signer().verifier.vkey,
            "--state",
            str(tmp_path / "s.json"),
        ]
    )
    assert code == 1
    assert "GET http://127.0.0.1:9/v1/log/checkpoint" in capsys.readouterr().err


# ---- named regressions ---------------------------------------------------------------


def _monitor_args(tmp_path: Path, *extra: str, url: str = "http://127.0.0.1:9") -> list[str]:
    state = str(tmp_path / "s.json")
    return ["monitor", "--url", url, "--state", state, "--vkey", kit.signer().verifier.vkey, *extra]


@pytest.mark.parametrize("watch", ["nan", "inf", "-inf", "1e300", "0", "-1"])
def test_regression_monitor_watch_that_time_sleep_rejects_is_a_usage_error(
    watch: str,
    log: FakeLog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--watch nan`` passed the ``<= 0`` check and crashed in time.sleep (ValueError;
    inf and 1e300: OverflowError) with a traceback, after the first round."""
    monkeypatch.setattr(cli, "urllib_fetcher", lambda url: log.fetch)
    code = main(_monitor_args(tmp_path, "--watch", watch, "--max-iterations", "2"))
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--watch" in err


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://127.0.0.1:abc",
        "http://127.0.0.1:99999",
        "http://a b/",
        "http://a..b/",
        "http:///no-host",
        "http://127.0.0.1:9/base?query",
        "ftp://127.0.0.1/",
    ],
)
def test_regression_monitor_malformed_url_is_a_usage_error(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the scheme was checked: the URL reached urllib, whose ValueError and
    http.client.InvalidURL came out of main as a traceback."""
    code = main(_monitor_args(tmp_path, url=url))
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--url" in err


@pytest.fixture
def misbehaving_server() -> Iterator[str]:
    """Answers ``/garbage/...`` with bytes that are not HTTP, and ``/redirect/...`` with
    a redirect to a URL that does not parse."""

    class Handler(_Quiet):
        def do_GET(self) -> None:
            if self.path.startswith("/garbage/"):
                self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                return
            self.send_response(302)
            self.send_header("Location", "http://[::1/v1/log/checkpoint")
            self.send_header("Content-Length", "0")
            self.end_headers()

    with _serving(Handler) as url:
        yield url


@pytest.mark.parametrize("prefix", ["/garbage", "/redirect"])
def test_regression_fetch_translates_http_and_url_errors_to_fetch_failed(
    prefix: str, misbehaving_server: str
) -> None:
    """urllib lets http.client.HTTPException (a reply that is not HTTP) and ValueError (a
    redirect to a URL that does not parse) through; only OSError was translated."""
    fetch = cli.urllib_fetcher(misbehaving_server + prefix)
    with pytest.raises(FetchFailed, match=f"GET {misbehaving_server}{prefix}/v1/log/checkpoint"):
        fetch(CHECKPOINT_PATH)


def test_regression_state_file_that_cannot_be_written_is_an_input_error(
    log: FakeLog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """store_state let the OSError of a --state in a missing directory out of main (a
    traceback) after the checkpoint had been verified."""
    state = tmp_path / "missing-dir" / "state.json"
    with pytest.raises(MalformedInput, match="cannot write the state file"):
        monitor_once(log.fetch, log.key.verifier.vkey, state)
    monkeypatch.setattr(cli, "urllib_fetcher", lambda url: log.fetch)
    args = ["monitor", "--url", "http://x", "--state", str(state), "--vkey", log.key.verifier.vkey]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("maip-verify: error: cannot write the state file")
    assert not state.parent.exists()


def test_regression_monitor_empty_log_after_a_trusted_tree_is_a_rollback(
    log: FakeLog, tmp_path: Path
) -> None:
    """An empty log is trusted only while no larger tree is: a log that signed size 6
    and then answers that it has no checkpoint has lost (or dropped) its history."""
    state = tmp_path / "state.json"
    log.empty = True
    assert monitor_once(log.fetch, log.key.verifier.vkey, state).outcome == "empty"
    log.empty, log.size = False, 6
    assert monitor_once(log.fetch, log.key.verifier.vkey, state).outcome == "initialized"
    log.empty = True
    with pytest.raises(RollbackDetected, match="signed a tree of size 6") as info:
        monitor_once(log.fetch, log.key.verifier.vkey, state)
    assert info.value.old_checkpoint == log.note(6)
    assert msgspec.json.decode(state.read_bytes())["size"] == 6


class _Serve:
    """``maip-ledger serve`` on loopback, a fresh data directory: the log is empty."""

    BIN = Path(sys.executable).parent / "maip-ledger"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [str(self.BIN), "serve", "--data-dir", str(data_dir), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "MAIP_LOG_LEVEL": "warning"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]

    def get(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as resp:
            body: bytes = resp.read()
            return body

    def register_agent(self) -> None:
        """One event in the log: an agent registered with a key ``keys create`` made."""
        create = ["keys", "create", "--data-dir", str(self.data_dir), "--tenant", "t"]
        made = subprocess.run(
            [str(self.BIN), *create, "--scopes", "agents:write", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        headers = {
            "X-API-Key": msgspec.json.decode(made.stdout)["api_key"],
            "X-Tenant-ID": "t",
            "Content-Type": "application/json",
        }
        agent = {"name": "a", "provider": {"kind": "scripted", "responses": []}}
        request = urllib.request.Request(
            self.url + "/v1/agents", data=msgspec.json.encode(agent), headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 201

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.slow
def test_regression_monitor_accepts_an_empty_log_then_its_first_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A freshly started server signs no checkpoint while its log is empty (it answers
    404, ``specs/log-format.md`` §5), and the monitor took that for a failure: exit 1."""
    server = _Serve(tmp_path / "data")
    try:
        vkey = msgspec.json.decode(server.get("/v1/log/key"))["vkey"]
        state = tmp_path / "s.json"
        args = ["monitor", "--url", server.url, "--vkey", vkey, "--state", str(state), "--json"]
        assert main(args) == 0, capsys.readouterr()
        first = msgspec.json.decode(capsys.readouterr().out)
        assert (first["outcome"], first["new_size"]) == ("empty", 0)
        assert not state.exists()  # nothing signed to trust yet
        server.register_agent()
        assert main(args) == 0, capsys.readouterr()
        grown = msgspec.json.decode(capsys.readouterr().out)
        assert grown["outcome"] == "initialized"
        assert grown["new_size"] > 0
        assert msgspec.json.decode(state.read_bytes())["size"] == grown["new_size"]
        # A wrong key is not told the log is empty: the 404 counts only from the log
        # whose key the monitor trusts.
        other = ["monitor", "--url", server.url, "--vkey", kit.signer().verifier.vkey]
        assert main([*other, "--state", str(tmp_path / "other.json")]) == 1
    finally:
        server.stop()


def test_regression_monitor_evidence_from_the_log_is_shown_escaped(
    served: tuple[str, FakeLog], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint that does not verify was printed as the log sent it: a log could
    write ESC sequences (here: clear the screen, then a forged line) to the terminal of
    whoever runs the monitor."""
    url, log = served
    state = tmp_path / "s.json"
    args = ["monitor", "--url", url, "--vkey", log.key.verifier.vkey, "--state", str(state)]
    log.size = 4
    assert main(args) == 0
    capsys.readouterr()
    log.override = "\x1b[2J\x1b[Hverified: consistent: size 4 -> 5\x9b1m\n".encode()
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    assert "\x9b" not in out + err
    assert "\\u001b[2J\\u001b[Hverified: consistent: size 4 -> 5\\u009b1m" in out
    assert err.count("\n") == 1
