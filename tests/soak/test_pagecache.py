"""``ledger.pagecache`` against a real failing device (an ext4 on a loop device whose image
is made immutable): the two kernel behaviours the store relies on after a write error.

Needs root (mount, losetup, chattr): it fails, loudly, rather than skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import faultfs
from ledger.pagecache import WritebackWatch, forget_cached_pages


@pytest.fixture
def failing(tmp_path: Path) -> Iterator[faultfs.Ext4]:
    assert os.geteuid() == 0, "this test needs root (mount, losetup, chattr)"
    host = faultfs.Ext4(tmp_path / "host", 48)
    host.mount()
    try:
        data = faultfs.Ext4(
            tmp_path / "data", 24, backing=host.mountpoint, options="errors=remount-ro,commit=30"
        )
        data.mount()
        try:
            yield data
        finally:
            data.close()
    finally:
        host.close()


def _failed_write(fs: faultfs.Ext4, fd: int, offset: int) -> None:
    """Write a new block while the device fails; its fsync reports EIO."""
    fs.fail_writes(True)
    try:
        os.pwrite(fd, b"B" * 4096, offset)
        with pytest.raises(OSError, match="Input/output error"):
            os.fsync(fd)
    finally:
        fs.fail_writes(False)


@pytest.mark.slow
def test_writeback_watch_sees_an_error_another_descriptor_already_reported(
    failing: faultfs.Ext4,
) -> None:
    path = failing.mountpoint / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"A" * 4096, 0)
        os.fsync(fd)
        watch = WritebackWatch(path)
        try:
            assert not watch.failed()
            _failed_write(failing, fd, 4096)  # this descriptor has seen the error now
            assert watch.failed()
            assert not watch.failed()  # once
        finally:
            watch.close()
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_rewrite_after_a_write_error_reaches_the_device_once_pages_are_forgotten(
    failing: faultfs.Ext4,
) -> None:
    path = failing.mountpoint / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"A" * 4096, 0)
        os.fsync(fd)
        _failed_write(failing, fd, 4096)
        forget_cached_pages([path])
        os.pwrite(fd, b"C" * 4096, 4096)  # what SQLite does: the same offset again
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not failing.refuses_writes()
    failing.cycle()  # the page cache goes: read what reached the device
    assert path.read_bytes() == b"A" * 4096 + b"C" * 4096
