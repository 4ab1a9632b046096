"""The log's side of witnessing (specs/log-format.md §9.6): witness keys and cosignature
lines (checked against the verifier's independent signer), the add-checkpoint answers,
the append-only cosignature store on a real SQLite file, and the submitter's backoff."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ledger_testkit import Note, open_log

from ledger.cosignature import WitnessKey, note_text
from ledger.cosignature_store import SQLiteCosignatureStore
from ledger.errors import SignatureError
from ledger.events import NewEvent
from ledger.witness_client import (
    Conflict,
    Cosigned,
    Refused,
    WitnessUnreachableError,
    add_checkpoint_body,
    read_reply,
)
from ledger.witnessing import WitnessEndpoint, Witnessing, newest_witnessed, shown_url
from verifier import WitnessSigner

WITNESS = WitnessSigner("witness.test/w1", Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32))
OTHER = WitnessSigner("witness.test/w1", Ed25519PrivateKey.from_private_bytes(bytes([8]) * 32))


async def _note(tmp_path: Path) -> str:
    log = await open_log(tmp_path / "log.db")
    try:
        await log.append("t", "s", 0, [NewEvent("note.added", Note("x"))])
        latest = log.latest_checkpoint()
        assert latest is not None
        return latest.note
    finally:
        await log.close()


async def test_a_cosignature_by_the_verifiers_signer_verifies(tmp_path: Path) -> None:
    note = await _note(tmp_path)
    text = note_text(note)
    line = WITNESS.cosign(text.encode(), 1_700_000_000).removesuffix("\n")
    key = WitnessKey.from_vkey(WITNESS.key.vkey)
    assert key.vkey == WITNESS.key.vkey
    assert key.owns(line)
    assert key.verify(text, line) == 1_700_000_000
    # Another key under the same name: not this witness's line.
    other = OTHER.cosign(text.encode(), 1).removesuffix("\n")
    assert not key.owns(other)
    with pytest.raises(SignatureError, match="not signed by"):
        key.verify(text, other)
    # One bit of the signature flipped; another checkpoint's text.
    # A character well inside the signature: the last one before the padding carries
    # unused bits, and changing only those leaves the decoded bytes as they were.
    tampered = line[:-10] + ("A" if line[-10] != "A" else "B") + line[-9:]
    with pytest.raises(SignatureError):
        key.verify(text, tampered)
    with pytest.raises(SignatureError, match="does not verify"):
        key.verify(text.replace("\n1\n", "\n2\n", 1), line)


def test_a_log_key_is_not_a_witness_key() -> None:
    from ledger.note import generate_signer

    with pytest.raises(SignatureError, match="type 0x04"):
        WitnessKey.from_vkey(generate_signer("log.example/a").verifier.vkey)
    name, key_id, b64 = WITNESS.key.vkey.split("+", 2)
    with pytest.raises(SignatureError, match="does not match"):
        WitnessKey.from_vkey(f"{name}+{int(key_id, 16) ^ 1:08x}+{b64}")


def test_the_answers_a_witness_gives() -> None:
    assert read_reply(200, "text/plain; charset=utf-8", b"\xe2\x80\x94 w AAAA\n") == Cosigned(
        ("\u2014 w AAAA",)
    )
    assert read_reply(409, "text/x.tlog.size", b"42\n") == Conflict(42)
    # A fork is a 409 of another type: never a size to retry from.
    assert isinstance(read_reply(409, "text/plain", b"17\n"), Refused)
    assert isinstance(read_reply(409, "text/x.tlog.size", b"017\n"), Refused)
    assert isinstance(read_reply(409, "text/x.tlog.size", b"%d\n" % (1 << 64)), Refused)
    refused = read_reply(422, "text/plain", b"the proof does not verify\x1b[2J\nmore")
    assert refused == Refused(422, "the proof does not verify?[2J")
    assert read_reply(200, "text/plain", b"\n") == Refused(200, "an empty 200 answer")


def test_the_body_is_the_c2sp_add_checkpoint_body() -> None:
    body = add_checkpoint_body(3, [bytes(32), bytes([1]) * 32], "o\n5\nR\n\n\u2014 o X\n")
    assert body == (
        b"old 3\n" + b"A" * 43 + b"=\n" + b"AQEB" * 10 + b"AQE=\n\no\n5\nR\n\n\xe2\x80\x94 o X\n"
    )


def test_a_url_is_shown_without_its_credentials() -> None:
    assert shown_url("https://user:secret@w.example:8443/add-checkpoint?k=v") == (
        "https://w.example:8443/add-checkpoint"
    )


async def test_a_refused_url_s_credentials_are_not_in_the_error() -> None:
    import aiohttp

    from ledger.witness_client import http_post

    async with aiohttp.ClientSession() as session:
        post = http_post(session)
        # aiohttp refuses the port, quoting the whole URL in its error.
        with pytest.raises(WitnessUnreachableError) as caught:
            await post("http://alice:s3cret@127.0.0.1:99999/add-checkpoint", b"old 0\n\n")
    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)
    assert "127.0.0.1:99999" in str(caught.value)


async def test_the_store_is_append_only_and_keeps_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "cosignatures.db"
    store = SQLiteCosignatureStore(path)
    await store.open()
    try:
        await store.add("a", 5, "line-a5")
        await store.add("b", 5, "line-b5")
        await store.add("a", 9, "line-a9")
        await store.add("a", 9, "line-a9-again")
        assert await store.cosigned_sizes() == {"a": 9, "b": 5}
        assert await store.newest(["a", "b"], 1) == (9, {"a": "line-a9"})
        assert await store.newest(["a", "b"], 2) == (5, {"a": "line-a5", "b": "line-b5"})
        assert await store.newest(["b"], 1) == (5, {"b": "line-b5"})
        assert await store.newest(["c"], 1) is None
        assert await store.newest(["a", "b"], 3) is None
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        for sql in ("UPDATE cosignatures SET line = 'x'", "DELETE FROM cosignatures"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()
    # A read-only open of a log that never had a cosignature: empty, nothing created.
    missing = SQLiteCosignatureStore(tmp_path / "none.db", read_only=True)
    await missing.open()
    try:
        assert await missing.cosigned_sizes() == {}
    finally:
        await missing.close()
    assert not (tmp_path / "none.db").exists()


async def test_an_unreachable_witness_is_retried_with_a_growing_jittered_backoff(
    tmp_path: Path,
) -> None:
    log = await open_log(tmp_path / "log.db")
    store = SQLiteCosignatureStore(tmp_path / "cosignatures.db")
    await store.open()
    delays: list[float] = []
    asked: list[bytes] = []
    done = asyncio.Event()

    async def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        asked.append(body)
        if len(asked) < 6:
            raise WitnessUnreachableError("connection refused")
        text = note_text(body.decode().split("\n\n", 1)[1]).encode()
        return 200, "text/plain", WITNESS.cosign(text, 7).encode()

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 5:
            done.set()

    endpoint = WitnessEndpoint(
        "http://w.invalid/add-checkpoint", WitnessKey.from_vkey(WITNESS.key.vkey)
    )
    witnessing = Witnessing(
        log, store, [endpoint], post, sleep=sleep, random=lambda: 0.5, backoff=(1.0, 6.0)
    )
    try:
        await log.append("t", "s", 0, [NewEvent("note.added", Note("x"))])
        await witnessing.start()
        await done.wait()
        for _ in range(1000):
            if await witnessing.witnessed() is not None:
                break
            await asyncio.sleep(0.01)
        # Half (the injected jitter) of 1, 2, 4, then the cap of 6.
        assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
        assert witnessing.witnesses[0].failures == {"unreachable": 5}
        assert witnessing.witnesses[0].cosigned_size == 1
        assert all(body.startswith(b"old 0\n\n") for body in asked)
    finally:
        await witnessing.close()
        await store.close()
        await log.close()


async def test_regression_witnesses_cosign_the_same_checkpoints(tmp_path: Path) -> None:
    """Each witness was sent the log's newest checkpoint whenever it was free, so under
    load a fast and a slow witness cosigned different sizes and a quorum of two formed
    only on an older checkpoint they happened to share. Now a round's checkpoint waits
    for every witness that is answering."""
    log = await open_log(tmp_path / "log.db")
    store = SQLiteCosignatureStore(tmp_path / "cosignatures.db")
    await store.open()
    fast = WitnessSigner("witness.test/fast", Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32))
    slow = WitnessSigner("witness.test/slow", Ed25519PrivateKey.from_private_bytes(bytes([6]) * 32))
    signers = {
        "http://fast.invalid/add-checkpoint": fast,
        "http://slow.invalid/add-checkpoint": slow,
    }
    sizes: dict[str, list[int]] = {url: [] for url in signers}

    async def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        if url.startswith("http://slow"):
            await asyncio.sleep(0.02)  # a witness further away: it answers later
        note = body.decode().split("\n\n", 1)[1]
        sizes[url].append(int(note.split("\n")[1]))
        return 200, "text/plain", signers[url].cosign(note_text(note).encode(), 7).encode()

    endpoints = [
        WitnessEndpoint(url, WitnessKey.from_vkey(s.key.vkey)) for url, s in signers.items()
    ]
    witnessing = Witnessing(log, store, endpoints, post)
    log.add_listener(witnessing.wake)
    try:
        await witnessing.start()
        for seq in range(40):  # one commit each, while the witnesses work
            await log.append("t", "s", seq, [NewEvent("note.added", Note("x"))])
            await asyncio.sleep(0.002)
        for _ in range(1000):  # bounded wait for both to reach the log's end
            if all(s.cosigned_size == log.size for s in witnessing.witnesses):
                break
            await asyncio.sleep(0.01)
        assert all(s.cosigned_size == log.size for s in witnessing.witnesses)
        fast_sizes = sizes["http://fast.invalid/add-checkpoint"]
        assert fast_sizes == sizes["http://slow.invalid/add-checkpoint"]
        assert len(fast_sizes) < 40  # coalesced: rounds skip what came meanwhile
        both = await witnessing.witnessed(2)
        assert both is not None
        assert both.size == log.size
    finally:
        await witnessing.close()
        await store.close()
        await log.close()


async def test_regression_an_unforeseen_error_does_not_end_a_witness_s_task(
    tmp_path: Path,
) -> None:
    """Only the submission's own failures and the ledger's were caught: any other error
    (an HTTP library's on an odd URL, say) ended the witness's task without a log line,
    and it was never submitted to again."""
    log = await open_log(tmp_path / "log.db")
    store = SQLiteCosignatureStore(tmp_path / "cosignatures.db")
    await store.open()
    asked = 0

    async def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        nonlocal asked
        asked += 1
        if asked == 1:
            raise ValueError("Invalid URL: an HTTP library's own error")
        text = note_text(body.decode().split("\n\n", 1)[1]).encode()
        return 200, "text/plain", WITNESS.cosign(text, 7).encode()

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    endpoint = WitnessEndpoint(
        "http://w.invalid/add-checkpoint", WitnessKey.from_vkey(WITNESS.key.vkey)
    )
    witnessing = Witnessing(log, store, [endpoint], post, sleep=sleep, random=lambda: 0.5)
    try:
        await log.append("t", "s", 0, [NewEvent("note.added", Note("x"))])
        await witnessing.start()
        for _ in range(1000):  # bounded wait for the retry to cosign
            if witnessing.witnesses[0].cosigned_size == 1:
                break
            await asyncio.sleep(0.01)
        assert witnessing.witnesses[0].cosigned_size == 1
        assert witnessing.witnesses[0].failures == {"unexpected": 1}
    finally:
        await witnessing.close()
        await store.close()
        await log.close()


async def test_regression_a_bad_stored_line_falls_back_to_an_older_witnessed_checkpoint(
    tmp_path: Path,
) -> None:
    """A line at the newest cosigned size that no longer verifies (the file edited, or a
    bug) made the witnessed checkpoint 404 until a newer round landed, although an older
    checkpoint still carried a good cosignature."""
    log = await open_log(tmp_path / "log.db")
    store = SQLiteCosignatureStore(tmp_path / "cosignatures.db")
    await store.open()
    key = WitnessKey.from_vkey(WITNESS.key.vkey)
    try:
        notes = []
        for seq in range(2):
            await log.append("t", "s", seq, [NewEvent("note.added", Note("x"))])
            latest = log.latest_checkpoint()
            assert latest is not None
            notes.append(latest.note)
        good = WITNESS.cosign(note_text(notes[0]).encode(), 7).removesuffix("\n")
        # The witness's own line, but on the other checkpoint's text: it does not verify.
        bad = WITNESS.cosign(note_text(notes[0]).encode(), 8).removesuffix("\n")
        await store.add(key.vkey, 1, good)
        await store.add(key.vkey, 2, bad)
        found = await newest_witnessed(log, store, [key], 1)
        assert found is not None
        assert found.size == 1
        assert found.note == notes[0] + good + "\n"
    finally:
        await store.close()
        await log.close()


async def test_regression_stored_sizes_beyond_the_log_do_not_stop_submissions(
    tmp_path: Path,
) -> None:
    """A cosignature file that says a witness cosigned a bigger tree than the log holds
    (kept across a restore of the ledger from a backup): the log took that size as the
    witness's, sent nothing until it outgrew it, and published nothing meanwhile."""
    log = await open_log(tmp_path / "log.db")
    store = SQLiteCosignatureStore(tmp_path / "cosignatures.db")
    await store.open()
    key = WitnessKey.from_vkey(WITNESS.key.vkey)
    await store.add(key.vkey, 1000, "\u2014 witness.test/w1 AAAA")
    witness_size = 0  # the witness itself never saw this log

    async def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        nonlocal witness_size
        old = int(body.split(b"\n", 1)[0].removeprefix(b"old "))
        if old != witness_size:
            return 409, "text/x.tlog.size", f"{witness_size}\n".encode()
        note = body.decode().split("\n\n", 1)[1]
        witness_size = int(note.split("\n")[1])
        return 200, "text/plain", WITNESS.cosign(note_text(note).encode(), 7).encode()

    endpoint = WitnessEndpoint("http://w.invalid/add-checkpoint", key)
    witnessing = Witnessing(log, store, [endpoint], post)
    log.add_listener(witnessing.wake)
    try:
        await log.append("t", "s", 0, [NewEvent("note.added", Note("x"))])
        await witnessing.start()
        for _ in range(1000):  # bounded wait for the cosignature
            if await witnessing.witnessed() is not None:
                break
            await asyncio.sleep(0.01)
        found = await witnessing.witnessed()
        assert found is not None
        assert found.size == log.size == witness_size
    finally:
        await witnessing.close()
        await store.close()
        await log.close()
