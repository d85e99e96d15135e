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
from virtdrivers.reaping import CreateToken
from virtdrivers_libvirt import mapping
from virtdrivers_libvirt.session import Session

#: Every disk this driver makes is named ``vd-<instance uuid>-<dev>-<create token>``.
MADE_PREFIX = "vd-"

#: qemu-img on a thick multi-GiB disk is fast with fallocate; this is a guard, not a wait.
QEMU_IMG_TIMEOUT = 120.0


class DiskStore(Protocol):
    def create(self, name: str, size_gib: int, fmt: DiskFormat, thin: bool) -> str:
        """Make a disk and return its path."""

    def delete(self, path: str) -> None:
        """Remove a disk this driver made; a missing one is not an error."""

    def usage_gib(self) -> tuple[int, int]:
        """(total, used) GiB of the store."""

    def made(self) -> list[str]:
        """Paths of every disk in the store whose name says this driver made it (``vd-``)."""

    def settle(self, path: str) -> str:
        """Take the operation token out of a disk's name, so that reap never takes it for a
        leftover (a disk detached and kept); returns its new path."""


def settled_name(name: str) -> str:
    """``vd-<uuid>-<dev>-<token>.<fmt>`` without the token's trail: ``vd-<uuid>-<dev>-<token id>.<fmt>``.

    The token's own id keeps the name unique; what remains no longer parses as a token.
    """
    stem, ext = os.path.splitext(name)
    token = CreateToken.decode(stem)
    if token is None:
        return name
    return stem[: stem.index(token.encode())] + token.id + ext


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

    def settle(self, path: str) -> str:
        """libvirt cannot rename a volume: copy it to the settled name, then delete the original."""
        import xml.etree.ElementTree as ET

        def move(conn: object) -> str:
            vol = conn.storageVolLookupByPath(path)  # type: ignore[attr-defined]
            new_name = settled_name(str(vol.name()))
            if new_name == vol.name():
                return path
            root = ET.fromstring(vol.XMLDesc(0))
            root.find("name").text = new_name  # type: ignore[union-attr]
            for tag in ("key", "target/path"):
                el = root.find(tag)
                if el is not None:
                    parent = root if "/" not in tag else root.find("target")
                    parent.remove(el)  # type: ignore[union-attr]
            copy = self._lookup(conn).createXMLFrom(ET.tostring(root, encoding="unicode"), vol, 0)  # type: ignore[attr-defined]
            vol.delete(0)
            return str(copy.path())

        return self._session.call(move)

    def made(self) -> list[str]:
        def paths(conn: object) -> list[str]:
            pool = self._lookup(conn)
            with contextlib.suppress(Exception):  # a dir pool learns of files made meanwhile
                pool.refresh(0)  # type: ignore[attr-defined]
            return [str(v.path()) for v in pool.listAllVolumes(0) if v.name().startswith(MADE_PREFIX)]  # type: ignore[attr-defined]

        return self._session.call(paths)

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

    @property
    def directory(self) -> str:
        return self._dir

    def create_from_image(self, name: str, image_path: str, image_fmt: DiskFormat, size_gib: int, *, cow: bool) -> str:
        """A root disk made from an image, as Nova's image backend does: ``cow`` makes a qcow2
        child whose backing file is the image (O(1) in the image's size, and the image is never
        written), otherwise a full qcow2 copy. Either is ``size_gib`` large.

        The backing format is named (``-F``): libvirt will not probe it, and a raw image probed
        as something else is a known escape.
        """
        os.makedirs(self._dir, exist_ok=True)
        path = os.path.join(self._dir, f"{name}.{DiskFormat.QCOW2.value}")
        base = os.path.abspath(image_path)
        if cow:
            steps = [
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", image_fmt.value, "-b", base, path, f"{size_gib}G"]
            ]
        else:
            steps = [
                ["qemu-img", "convert", "-q", "-f", image_fmt.value, "-O", "qcow2", base, path],
                ["qemu-img", "resize", "-q", "-f", "qcow2", path, f"{size_gib}G"],
            ]
        for argv in steps:
            self._qemu_img(argv, path)
        return path

    def _qemu_img(self, argv: list[str], path: str) -> None:
        if shutil.which("qemu-img") is None:
            raise DriverError("qemu-img is not installed (Debian package qemu-utils)")
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT)
        except subprocess.CalledProcessError as exc:
            self.delete(path)
            raise DriverError(f"cannot create disk {path}: {exc.stderr.strip()}") from exc
        except subprocess.TimeoutExpired as exc:
            self.delete(path)
            raise DriverError(f"qemu-img did not create {path} within {QEMU_IMG_TIMEOUT:.0f} s") from exc

    def delete(self, path: str) -> None:
        if os.path.dirname(os.path.abspath(path)) != os.path.abspath(self._dir):
            raise NotFound(f"{path} is not in the disk directory {self._dir}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def settle(self, path: str) -> str:
        new = os.path.join(os.path.dirname(path), settled_name(os.path.basename(path)))
        if new != path:
            os.rename(path, new)
        return new

    def made(self) -> list[str]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        return [os.path.join(self._dir, n) for n in sorted(names) if n.startswith(MADE_PREFIX)]

    def usage_gib(self) -> tuple[int, int]:
        os.makedirs(self._dir, exist_ok=True)
        st = os.statvfs(self._dir)
        total = st.f_blocks * st.f_frsize
        return total // mapping.GIB, (total - st.f_bavail * st.f_frsize) // mapping.GIB
