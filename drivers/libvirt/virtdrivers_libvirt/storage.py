"""Where disks come from: a libvirt storage pool, or qemu-img in a local directory.

Two because libvirt offers two worlds: a daemon (or the test driver) has a storage driver with
pools that work across the wire; the embedded QEMU driver has none, and a pair of local daemons
sharing one directory is how live migration without a storage network is tested here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Protocol

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import DriverError, NotFound
from virtdrivers_libvirt import mapping
from virtdrivers_libvirt.session import Session

#: qemu-img on a thick multi-GiB disk is fast with fallocate; this is a guard, not a wait.
QEMU_IMG_TIMEOUT = 120.0


class DiskStore(Protocol):
    def create(self, name: str, size_gib: int, fmt: DiskFormat, thin: bool) -> str:
        """Make a disk and return its path."""

    def delete(self, path: str) -> None:
        """Remove a disk this driver made; a missing one is not an error."""

    def usage_gib(self) -> tuple[int, int]:
        """(total, used) GiB of the store."""


class PoolStore:
    """Volumes in a libvirt storage pool, made through the API (works over the wire)."""

    def __init__(self, session: Session, pool: str) -> None:
        self._session = session
        self._pool = pool

    def _lookup(self, conn: object) -> object:
        return conn.storagePoolLookupByName(self._pool)  # type: ignore[attr-defined]

    def create(self, name: str, size_gib: int, fmt: DiskFormat, thin: bool) -> str:
        xml = mapping.volume_xml(f"{name}.{fmt.value}", size_gib, fmt, thin)

        def make(conn: object) -> str:
            vol = self._lookup(conn).createXML(xml, 0)  # type: ignore[attr-defined]
            return str(vol.path())

        return self._session.call(make)

    def delete(self, path: str) -> None:
        with contextlib.suppress(NotFound):
            self._session.call(lambda conn: conn.storageVolLookupByPath(path).delete(0))

    def usage_gib(self) -> tuple[int, int]:
        _state, capacity, allocation, _available = self._session.call(lambda conn: self._lookup(conn).info())  # type: ignore[attr-defined]
        return int(capacity) // mapping.GIB, int(allocation) // mapping.GIB


class DirStore:
    """Image files made with qemu-img in a directory this process can write."""

    def __init__(self, directory: str) -> None:
        self._dir = directory

    def create(self, name: str, size_gib: int, fmt: DiskFormat, thin: bool) -> str:
        os.makedirs(self._dir, exist_ok=True)
        path = os.path.join(self._dir, f"{name}.{fmt.value}")
        if shutil.which("qemu-img") is None:
            raise DriverError("qemu-img is not installed (Debian package qemu-utils)")
        try:
            subprocess.run(
                mapping.qemu_img_create_args(path, size_gib, fmt, thin),
                check=True,
                capture_output=True,
                text=True,
                timeout=QEMU_IMG_TIMEOUT,
            )
        except subprocess.CalledProcessError as exc:
            self.delete(path)
            raise DriverError(f"cannot create disk {path}: {exc.stderr.strip()}") from exc
        except subprocess.TimeoutExpired as exc:
            self.delete(path)
            raise DriverError(f"qemu-img did not create {path} within {QEMU_IMG_TIMEOUT:.0f} s") from exc
        return path

    def delete(self, path: str) -> None:
        if os.path.dirname(os.path.abspath(path)) != os.path.abspath(self._dir):
            raise NotFound(f"{path} is not in the disk directory {self._dir}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def usage_gib(self) -> tuple[int, int]:
        os.makedirs(self._dir, exist_ok=True)
        st = os.statvfs(self._dir)
        total = st.f_blocks * st.f_frsize
        return total // mapping.GIB, (total - st.f_bavail * st.f_frsize) // mapping.GIB
