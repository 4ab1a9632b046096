"""The log's signing key: generated on first start into the data dir, or loaded.

The key file holds one line in Go ``sumdb/note`` signer-key form
(``PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>``), so the same file works with Go's
``note.NewSigner``. It is created with mode 0600 and refused if group or others can
read it. The key name is the log's origin (C2SP tlog-checkpoint).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from ledger.errors import SignatureError
from ledger.note import NoteSigner, generate_signer

__all__ = ["DEFAULT_ORIGIN", "load_or_create_signer", "load_signer"]

DEFAULT_ORIGIN = "maip-ledger.local/log"
KEY_FILE = "log.key"


def load_signer(path: str | os.PathLike[str]) -> NoteSigner:
    key_path = Path(path)
    try:
        mode = key_path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SignatureError(
                f"signing key {key_path} is readable by group or others (mode "
                f"{stat.S_IMODE(mode):o}); chmod 600 it"
            )
        text = key_path.read_text(encoding="utf-8")
    except OSError as e:
        raise SignatureError(f"cannot read signing key {key_path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise SignatureError(f"signing key {key_path} is not UTF-8") from e
    return NoteSigner.from_skey(text)


def load_or_create_signer(
    data_dir: str | os.PathLike[str],
    origin: str = DEFAULT_ORIGIN,
    key_file: str | os.PathLike[str] | None = None,
) -> NoteSigner:
    """The configured key file, else ``<data_dir>/log.key``, created if absent.

    The key's name must equal ``origin``: a log must not silently change identity.
    """
    if key_file is not None:
        signer = load_signer(key_file)
    else:
        path = Path(data_dir) / KEY_FILE
        if path.exists():
            signer = load_signer(path)
        else:
            signer = generate_signer(origin)
            try:
                created = _create_key_file(path, signer.skey)
            except OSError as e:
                raise SignatureError(f"cannot create signing key {path}: {e.strerror}") from e
            if not created:
                # Another process's key, or a dangling symlink (which exists() does not
                # see and O_EXCL will not write through): looking again would loop.
                signer = load_signer(path)
    if signer.name != origin:
        raise SignatureError(
            f"the signing key is for origin {signer.name!r}, but the log's origin is {origin!r}"
        )
    return signer


def _create_key_file(path: Path, skey: str) -> bool:
    """Write a new key file; False if one is already there.

    The key is written whole to a temporary file first and then linked into place:
    written in place, a write that failed midway (a full disk) left a partial key that
    every later start refused as malformed. ``link`` fails if the name exists, as
    ``O_EXCL`` does: two processes starting at once must not both write a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_key(tmp, skey, os.O_TRUNC)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise
            # A file system without hard links (some network and FUSE ones): written
            # in place, and removed again if that fails midway.
            try:
                _write_key(path, skey, os.O_EXCL)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    # The file's directory entry too: without it a crash can lose the key file after
    # checkpoints signed with the key were committed, and the next start would make a
    # new key that no earlier checkpoint verifies under.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})


def _write_key(path: Path, skey: str, flag: int) -> None:
    """Create ``path`` (0600) with ``flag`` and write the key durably; if the write
    fails, the file is removed: it is this call's, and not whole."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flag, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(skey + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
