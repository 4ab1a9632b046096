"""C2SP signed-note and tlog-checkpoint: spec vectors, Go's example, and rejections."""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_testkit import ORIGIN, signer, vectors

from ledger import merkle
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.errors import LedgerError, SignatureError
from ledger.keys import KEY_FILE, load_or_create_signer, load_signer
from ledger.note import NoteSigner, NoteVerifier, generate_signer, open_note, sign_note

NOTES = vectors("signed-note.json")["notes"]


@pytest.mark.parametrize("case", NOTES, ids=lambda c: c["vkey"].split("+")[0])
def test_published_notes_verify(case: dict[str, str]) -> None:
    assert open_note(case["note"], NoteVerifier.from_vkey(case["vkey"])) == case["text"]
    assert NoteVerifier.from_vkey(case["vkey"]).vkey == case["vkey"]


def test_signing_reproduces_go_sumdb_note_example() -> None:
    case = next(c for c in NOTES if "skey" in c)
    s = NoteSigner.from_skey(case["skey"])
    assert s.skey == case["skey"]
    assert s.verifier.vkey == case["vkey"]
    assert sign_note(case["text"], s) == case["note"]


def test_unknown_keys_are_ignored_but_a_known_bad_signature_rejects() -> None:
    ours, theirs = signer(1), signer(2, "other.example/log")
    note = sign_note("hello\n", theirs, ours)
    assert open_note(note, ours.verifier) == "hello\n"
    tampered = note.replace("hello", "hellO")
    with pytest.raises(SignatureError, match="does not verify"):
        open_note(tampered, ours.verifier)
    with pytest.raises(SignatureError, match="no signature from a known key"):
        open_note(sign_note("hello\n", theirs), ours.verifier)


def test_same_name_different_key_is_unknown_not_trusted() -> None:
    impostor = signer(9)  # same origin name, different key: a different key ID
    with pytest.raises(SignatureError, match="no signature from a known key"):
        open_note(sign_note("x\n", impostor), signer(1).verifier)


def test_vkey_with_wrong_key_id_is_rejected() -> None:
    vkey = signer(1).verifier.vkey
    name, _, key = vkey.split("+", 2)
    with pytest.raises(SignatureError, match="does not match its key"):
        NoteVerifier.from_vkey(f"{name}+00000000+{key}")


def test_regression_vkey_name_with_a_lone_surrogate_raises_signature_error() -> None:
    """C2SP signed-note: a key name is well-formed UTF-8. A lone surrogate passed the
    name check and raised UnicodeEncodeError when the key ID was computed."""
    rest = signer(1).verifier.vkey.split("+", 1)[1]
    with pytest.raises(SignatureError, match="invalid key name"):
        NoteVerifier.from_vkey("\udcff+" + rest)


def test_checkpoint_round_trip_and_origin_binding() -> None:
    s = signer(1)
    cp = Checkpoint(ORIGIN, 42, bytes(range(32)))
    note = cp.sign(s)
    assert note.startswith(f"{ORIGIN}\n42\n")
    assert open_checkpoint(note, s.verifier) == cp
    with pytest.raises(SignatureError, match="is not the origin"):
        Checkpoint("elsewhere/log", 1, bytes(32)).sign(s)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{ORIGIN}\n042\n" + "A" * 43 + "=\n", "not a decimal number"),
        (f"{ORIGIN}\n-1\n" + "A" * 43 + "=\n", "not a decimal number"),
        (f"{ORIGIN}\n1\nAAAA\n", "root hash is 3 bytes"),
        (f"{ORIGIN}\n1\n", "origin, a size and a root"),
        (f"{ORIGIN}\n1\n!!\n", "not valid base64"),
    ],
)
def test_malformed_checkpoint_bodies_are_rejected(body: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        Checkpoint.parse(body)


@pytest.mark.parametrize(
    "size",
    [str(1 << 64), "9" * 21, "9" * 5000],
    ids=["2**64", "21 digits", "5000 digits"],
)
def test_regression_checkpoint_size_must_fit_in_64_bits(size: str) -> None:
    """The size was checked only for digits: 2**64 and larger were accepted (the verifier
    and Go reject them), and more than 4300 digits raised int()'s bare ValueError."""
    s = signer(1)
    note = sign_note(f"{ORIGIN}\n{size}\n" + "A" * 43 + "=\n", s)
    with pytest.raises(SignatureError, match="not a decimal number below 2\\*\\*64"):
        open_checkpoint(note, s.verifier)


def test_checkpoint_sizes_0_and_2_to_the_64_minus_1_are_accepted() -> None:
    body = f"{ORIGIN}\n{(1 << 64) - 1}\n" + "A" * 43 + "=\n"
    assert Checkpoint.parse(body).size == (1 << 64) - 1
    empty = base64.b64encode(merkle.EMPTY_ROOT).decode()
    assert Checkpoint.parse(f"{ORIGIN}\n0\n{empty}\n").size == 0


def test_regression_a_checkpoint_of_size_0_must_have_the_empty_trees_root() -> None:
    # Any root was accepted for the empty tree, which has exactly one (RFC 9162 §2.1.1).
    with pytest.raises(SignatureError, match="empty tree's root"):
        Checkpoint.parse(f"{ORIGIN}\n0\n" + "A" * 43 + "=\n")


@pytest.mark.parametrize("bad_name", ["a+b", "a\u00a0b", "a\u2028b", "a\u3000b"])
def test_regression_unknown_signature_with_an_invalid_key_name_is_malformed(
    bad_name: str,
) -> None:
    """C2SP signed-note: key names have no Unicode spaces and no '+', and Go's note.Open
    rejects such a signature line as malformed even for an unknown key; only an empty
    name was rejected, so the writer accepted a note the verifier rejects."""
    ours, theirs = signer(1), signer(2, "other.example")
    note = sign_note("hello\n", theirs, ours).replace(
        "\u2014 other.example ", f"\u2014 {bad_name} "
    )
    assert bad_name in note
    with pytest.raises(SignatureError, match="malformed signature line"):
        open_note(note, ours.verifier)


def test_regression_note_text_with_a_lone_surrogate_raises_signature_error() -> None:
    """A str note holding a lone surrogate raised UnicodeEncodeError when its text was
    encoded to check the signature."""
    ours = signer(1)
    note = sign_note("hello\n", ours).replace("hello", "hell\udcff")
    with pytest.raises(SignatureError, match="not valid Unicode"):
        open_note(note, ours.verifier)
    with pytest.raises(SignatureError, match="not valid Unicode"):
        open_checkpoint("a\udcff\n\n\u2014 x AAAAAAAA\n", ours.verifier)


@given(st.binary(max_size=400))
def test_open_note_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(LedgerError):
        open_note(data, signer(1).verifier)


@given(st.text(max_size=200))
def test_open_checkpoint_never_crashes_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(LedgerError):
        open_checkpoint(text, signer(1).verifier)


def test_derived_secrets_are_per_key_and_per_purpose() -> None:
    key = signer()
    same = NoteSigner.from_skey(key.skey)
    a = key.derive_secret(b"maip-ledger/local-seal/v1")
    assert len(a) == 32
    assert same.derive_secret(b"maip-ledger/local-seal/v1") == a
    assert key.derive_secret(b"another purpose") != a
    assert generate_signer(ORIGIN).derive_secret(b"maip-ledger/local-seal/v1") != a
    seed = base64.b64decode(key.skey.rsplit("+", 1)[1])[1:]
    assert len(seed) == 32
    assert a != seed  # a secret from the key, not the key


def test_regression_a_dangling_log_key_symlink_is_a_signature_error(tmp_path: Path) -> None:
    # exists() is False for a dangling symlink, O_EXCL then refused to create over it,
    # and the retry looked again, for ever: a RecursionError instead of one clear error.
    (tmp_path / KEY_FILE).symlink_to(tmp_path / "elsewhere" / "log.key")
    with pytest.raises(SignatureError, match="cannot read signing key"):
        load_or_create_signer(tmp_path, ORIGIN)
    assert not (tmp_path / "elsewhere").exists()  # nothing is written through the link


def test_regression_unreadable_or_uncreatable_key_files_are_signature_errors(
    tmp_path: Path,
) -> None:
    # A key file that is not UTF-8 raised UnicodeDecodeError, and a data dir that cannot
    # hold a key (here: a file) raised FileExistsError: not the one typed error the
    # server and the CLI report as a clear line.
    garbled = tmp_path / "garbled.key"
    garbled.write_bytes(b"PRIVATE+KEY+\xff\n")
    garbled.chmod(0o600)
    with pytest.raises(SignatureError, match="is not UTF-8"):
        load_signer(garbled)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(SignatureError, match="cannot create signing key"):
        load_or_create_signer(not_a_dir, ORIGIN)
    with pytest.raises(SignatureError, match="cannot create signing key"):
        load_or_create_signer(not_a_dir / "data", ORIGIN)


_WRITE_KEY_WITHIN_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from ledger.errors import SignatureError
from ledger.keys import load_or_create_signer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal, as a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
try:
    load_or_create_signer(sys.argv[1], sys.argv[2])
except SignatureError as e:
    print("refused:", e)
"""


def test_regression_a_key_write_that_fails_midway_leaves_no_partial_key(tmp_path: Path) -> None:
    # The key was written in place: a write that failed midway (a full disk; here a
    # file size limit in a real subprocess) left a partial log.key, and every later
    # start refused it as malformed until someone deleted it by hand.
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", _WRITE_KEY_WITHIN_A_FILE_SIZE_LIMIT, str(data), ORIGIN],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("refused: cannot create signing key"), done.stdout + done.stderr
    assert sorted(p.name for p in data.iterdir()) == []  # neither a key nor a temporary
    key = load_or_create_signer(data, ORIGIN)  # the next start makes one
    assert load_signer(data / KEY_FILE).skey == key.skey


@pytest.mark.parametrize("fail_write", [False, True])
def test_a_key_is_made_on_a_file_system_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_write: bool
) -> None:
    """The key is linked into place from a temporary; where the file system refuses hard
    links it is written in place instead, and still never left behind half written."""

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    if fail_write:
        real_fsync, calls = os.fsync, []

        def second_fsync_fails(fd: int) -> None:  # the temporary's succeeds, the key's not
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", second_fsync_fails)
        with pytest.raises(SignatureError, match="cannot create signing key"):
            load_or_create_signer(tmp_path, ORIGIN)
        assert list(tmp_path.iterdir()) == []
        return
    made = load_or_create_signer(tmp_path, ORIGIN)
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
    assert load_signer(tmp_path / KEY_FILE).skey == made.skey
    assert load_or_create_signer(tmp_path, ORIGIN).skey == made.skey
