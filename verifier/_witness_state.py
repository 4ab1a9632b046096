"""What a witness keeps on disk (``specs/log-format.md`` §9.4): its key, and per log
origin the latest checkpoint it cosigned.

State directory layout:

- ``witness.key``: the witness's private key, one line
  ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x04 || seed)>``, mode 0600, created on
  first start (refused if group or others can read it, as the log's key is);
- ``log-<hex SHA-256 of the origin>.json``: ``{"origin", "size", "root", "checkpoint"}``
  for one log, the checkpoint being the note as the log submitted it. Written
  atomically (``verifier._files``) before the witness answers with a cosignature
  (C2SP tlog-witness: "The witness MUST persist the new checkpoint before
  responding").

A state file that cannot be read is an error, never "no state": starting that log over
from size 0 would let the witness cosign a fork of what it cosigned before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

import msgspec

from verifier._checkpoint import parse_checkpoint_body
from verifier._cosignature import WitnessSigner
from verifier._errors import MalformedInput
from verifier._files import fsync_directory, write_atomically
from verifier._note import split_note

__all__ = ["KEY_FILE", "StateCorrupt", "WitnessState", "WitnessedCheckpoint", "load_witness_key"]

KEY_FILE = "witness.key"


class WitnessedCheckpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The latest checkpoint a witness cosigned for one origin."""

    origin: str
    size: int
    root: bytes
    checkpoint: str


class StateCorrupt(MalformedInput):
    """A witness state file that cannot be read back as the checkpoint it records."""


_RECORD = msgspec.json.Decoder(WitnessedCheckpoint)


class WitnessState:
    """The per-origin records in one state directory. Not locked: the witness
    serialises the check and the write for each origin (§9.3)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, origin: str) -> Path:
        # An origin is any key name ('/' and all): hashed, it is always one file name.
        digest = hashlib.sha256(origin.encode("utf-8")).hexdigest()
        return self.directory / f"log-{digest}.json"

    def load(self, origin: str) -> WitnessedCheckpoint | None:
        """The record for ``origin``; None if the witness never cosigned for it."""
        path = self.path(origin)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateCorrupt(f"cannot read witness state {path}: {e.strerror}") from e
        try:
            record = _RECORD.decode(data)
            text, _ = split_note(record.checkpoint)
            body = parse_checkpoint_body(text)
        except (msgspec.DecodeError, ValueError, RecursionError) as e:
            raise StateCorrupt(f"witness state {path} is not a witnessed checkpoint: {e}") from e
        if (body.origin, body.size, body.root) != (origin, record.size, record.root) or (
            record.origin != origin
        ):
            raise StateCorrupt(f"witness state {path} does not match the checkpoint it holds")
        return record

    def store(self, record: WitnessedCheckpoint) -> None:
        """Replace the origin's record durably; raises OSError (the old record kept)."""
        write_atomically(self.path(record.origin), msgspec.json.encode(record) + b"\n")


def _read_key(path: Path) -> WitnessSigner:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MalformedInput(
                f"witness key {path} is readable by group or others (mode "
                f"{stat.S_IMODE(mode):o}); chmod 600 it"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MalformedInput(f"cannot read witness key {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise MalformedInput(f"witness key {path} is not UTF-8") from e
    try:
        return WitnessSigner.from_skey(text)
    except MalformedInput as e:
        # The message never quotes the file: it is a secret.
        raise MalformedInput(f"witness key {path} is malformed: {e.message}") from e


def _create_key(path: Path, signer: WitnessSigner) -> bool:
    """Write a new key file (0600) durably; False if one is already there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(signer.skey + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        # Half a key would be refused at every later start: remove this call's file.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    fsync_directory(path.parent)
    return True


def load_witness_key(
    state_dir: Path, name: str | None, key_file: Path | None = None
) -> WitnessSigner:
    """The witness key: ``key_file`` if given (never created), else
    ``<state_dir>/witness.key``, generated with ``name`` if absent.

    ``name``, when given, must be the key's name: a witness keeps its identity.
    Raises :class:`MalformedInput` (the CLI's exit 2).
    """
    if key_file is not None:
        signer = _read_key(key_file)
    else:
        path = state_dir / KEY_FILE
        if path.exists():
            signer = _read_key(path)
        else:
            if name is None:
                raise MalformedInput(
                    f"{path} does not exist yet: give --name to create the witness key"
                )
            signer = WitnessSigner.generate(name)
            try:
                created = _create_key(path, signer)
            except OSError as e:
                raise MalformedInput(f"cannot create witness key {path}: {e.strerror}") from e
            if not created:  # another process made one first: use that
                signer = _read_key(path)
    if name is not None and signer.key.name != name:
        raise MalformedInput(f"the witness key is named {signer.key.name!r}, not {name!r}")
    return signer
