"""Durable file writes for the verifier's own state (the monitor's trusted checkpoint,
the witness's latest cosigned checkpoints and key).

A file is replaced whole or not at all, and is on disk before the call returns: write a
temporary file beside it, fsync it, rename it over the old one, fsync the directory
(without the last step a crash can lose the rename after the caller acted on it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_directory", "write_atomically"]


def fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably; raises OSError (the old file is kept)."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)
