"""Real storage faults for the soak and its tests (root only).

The data directory is an ext4 filesystem on a loop device whose image lives on a private
tmpfs, so every fault below hits that filesystem alone and a commit's fsync stays cheap:

* **full**: a filler file written until ``ENOSPC``; deleting it gives the space back;
* **read-only, between runs**: ``mount -o remount,ro`` — Linux refuses it (``EBUSY``)
  while any file is open for writing, so only with the server stopped;
* **read-only, under a running server**: the data files made immutable (``chattr +i``).
  ext4 checks the flag on every write, so writes on the server's *already open*
  descriptors fail (``EPERM``) until it is cleared; reads keep working. A permission
  change would not do that (it is checked only at ``open``), ``blockdev --setro`` on the
  loop device neither (the block layer only warns), and this kernel has no device mapper;
* **device write errors**: an ext4 whose loop device's image sits on *another* ext4 (a
  :class:`Ext4` given ``backing``): making the image immutable fails every write request
  of that loop device (``I/O error, dev loopN``), as a failing disk would. Writes still
  land in the page cache; ``fsync`` reports ``EIO``.

Each step that sets something up registers its undo first, and :meth:`Ext4.close` runs
every undo even when an earlier one fails, so a failed test leaves no mount or loop
device behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["Ext4", "FaultError", "data_files", "freeze", "set_immutable", "thaw"]


class FaultError(Exception):
    """A fault could not be set up or undone (not root, a tool failed)."""


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if r.returncode != 0:
        raise FaultError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout.strip()


def set_immutable(paths: Iterable[Path], on: bool) -> None:
    """``chattr +i`` / ``-i`` on each path."""
    names = [str(p) for p in paths]
    if names:
        _run("chattr", "+i" if on else "-i", *names)


class Ext4:
    """An ext4 filesystem of ``size_mb`` on a loop device, mounted at ``mountpoint``.

    The image lives on a private tmpfs, or in ``backing`` (a directory on another ext4)
    when the device's writes must be made to fail (:meth:`fail_writes`).
    """

    def __init__(
        self,
        mountpoint: Path,
        size_mb: int,
        *,
        backing: Path | None = None,
        options: str = "errors=remount-ro",
    ) -> None:
        self.mountpoint = mountpoint
        self.size_mb = size_mb
        self._backing = backing
        self.options = options
        self.image: Path | None = None
        self.device = ""
        self.filler = mountpoint / ".fault-filler"
        self._undo: list[Callable[[], None]] = []

    def mount(self) -> None:
        if os.geteuid() != 0:
            raise FaultError("storage faults need root (mount, losetup, chattr)")
        try:
            self._mount()
        except BaseException:
            self.close()
            raise

    def _mount(self) -> None:
        if self._backing is None:
            tmp = Path(tempfile.mkdtemp(prefix="maip-fault-"))
            self._undo.append(tmp.rmdir)
            _run("mount", "-t", "tmpfs", "-o", f"size={self.size_mb + 16}m", "tmpfs", str(tmp))
            self._undo.append(lambda: _run("umount", str(tmp)))
            home = tmp
        else:
            home = self._backing
        image = home / "ext4.img"
        with image.open("wb") as f:
            f.truncate(self.size_mb << 20)
        self.image = image
        self._undo.append(lambda: self._drop_image(image))
        # No reserved blocks (root would use them anyway) and no lazy initialisation, so
        # "full" means the same to everyone and no kernel thread writes in the background.
        _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            str(image),
        )
        self.device = _run("losetup", "--find", "--show", str(image))
        self._undo.append(lambda: _run("losetup", "--detach", self.device))
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        _run("mount", "-o", self.options, self.device, str(self.mountpoint))
        self._undo.append(lambda: _run("umount", str(self.mountpoint)))

    @staticmethod
    def _drop_image(image: Path) -> None:
        set_immutable([image], False)
        image.unlink(missing_ok=True)

    def close(self) -> None:
        """Undo everything, in reverse; raises the first failure after trying them all."""
        errors: list[BaseException] = []
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except (FaultError, OSError) as e:
                errors.append(e)
        if errors:
            raise FaultError("; ".join(str(e) for e in errors))

    def cycle(self) -> None:
        """Unmount and mount again (nothing may be open on it): the page cache goes with
        the mount, so what is read afterwards is what reached the device."""
        _run("umount", str(self.mountpoint))
        _run("mount", "-o", self.options, self.device, str(self.mountpoint))

    def remount(self, mode: str) -> None:
        _run("mount", "-o", f"remount,{mode}", str(self.mountpoint))

    def refuses_writes(self) -> bool:
        """True if the filesystem refuses to create a file (``EROFS``): ext4 turned itself
        read-only, e.g. it aborted its journal after a write error (``errors=remount-ro``;
        recent kernels do that with an internal flag, so ``/proc/mounts`` may still say
        ``rw``)."""
        probe = self.mountpoint / ".fault-probe"
        try:
            probe.touch()
        except OSError as e:
            if e.errno == errno.EROFS:
                return True
            raise
        probe.unlink()
        return False

    # -- faults ---------------------------------------------------------------------

    def fill(self) -> int:
        """Write the filler until ``ENOSPC``; returns the bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 4096, 512):
                block = b"\0" * chunk
                while True:
                    try:
                        written += os.write(fd, block)
                    except OSError:
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def fail_writes(self, on: bool) -> None:
        """Fail (or stop failing) every write request of the loop device."""
        if self._backing is None or self.image is None:
            raise FaultError("device write errors need an image on another ext4 (backing)")
        set_immutable([self.image], on)


def data_files(data_dir: Path) -> list[Path]:
    """What :func:`freeze` makes immutable: the directory and every regular file in it,
    except SQLite's ``-shm`` files. Those are the WAL index, shared memory the server has
    mapped: a store to a mapped page of an immutable file is a ``SIGBUS``, which no
    read-only filesystem would do to a running process."""
    files = [p for p in sorted(data_dir.iterdir()) if p.is_file() and not p.name.endswith("-shm")]
    return [data_dir, *files]


def freeze(data_dir: Path) -> list[Path]:
    """Make the data directory read-only under a running server; returns what to thaw."""
    paths = data_files(data_dir)
    set_immutable(paths, True)
    return paths


def thaw(paths: list[Path]) -> None:
    set_immutable(paths, False)
