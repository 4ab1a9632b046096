"""After a write error, do not let the page cache vouch for what is on the device.

When the device fails a write, Linux keeps the page in the cache as if it were written
(clean, and what the next read returns) and reports ``EIO`` once, at ``fsync``. ext4
also leaves the blocks it had just allocated *unwritten* (dmesg: "failed to convert
unwritten extents to written extents -- potential data loss!"). SQLite then writes the
same WAL offsets again — a failed transaction's frames are reused by the next one — the
cached pages take the write, ``fsync`` succeeds, and yet those blocks still read as
zeros once the cache is gone: an acknowledged commit disappears at the next crash, and
WAL recovery stops there. The same happens to database pages a failed checkpoint wrote.

Dropping a file's cached pages after such an error makes the next write of each page go
through the filesystem's block mapping again, which converts the blocks properly.
``tests/soak/test_device_write_errors.py`` shows the loss without this and none with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["WritebackWatch", "forget_cached_pages"]

_SYNC_FILE_RANGE_WAIT_BEFORE = 1


def _sync_file_range(
    dll: type[ctypes.CDLL] = ctypes.CDLL,
) -> Callable[[int, int, int, int], int] | None:
    try:
        fn = dll(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    sync: Callable[[int, int, int, int], int] = fn
    return sync


# Two bindings of one call: _SFR lets other threads run while it waits for writeback;
# _SFR_PEEK keeps the GIL, because after every commit the writer thread only peeks (no
# page of the database file is under writeback then, so it returns at once), and handing
# the GIL to the event loop and back would cost the commit pipeline up to a switch
# interval each time.
_SFR = _sync_file_range()
_SFR_PEEK = _sync_file_range(ctypes.PyDLL)


def forget_cached_pages(paths: Iterable[Path]) -> None:
    """Drop every cached page of each existing file (best effort)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            # Pages still under writeback are not dropped, so wait for it — and for no
            # more: an fsync here would make ext4 commit its journal to the failing
            # device, and a failed journal write turns the whole filesystem read-only.
            if _SFR is not None:
                _SFR(fd, 0, 0, _SYNC_FILE_RANGE_WAIT_BEFORE)
            with contextlib.suppress(OSError):
                advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class WritebackWatch:
    """Did writing back a file's pages fail since the last look? Sees the errors another
    descriptor's ``fsync`` already reported and SQLite ignored (a failed automatic
    checkpoint), without flushing anything: ``sync_file_range`` with only
    ``WAIT_BEFORE`` returns this descriptor's unseen writeback error (Linux)."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDONLY) if _SFR_PEEK is not None else None

    def failed(self) -> bool:
        if self._fd is None or _SFR_PEEK is None:
            return False
        if _SFR_PEEK(self._fd, 0, 0, _SYNC_FILE_RANGE_WAIT_BEFORE) == 0:
            return False
        return ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.ESPIPE)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
