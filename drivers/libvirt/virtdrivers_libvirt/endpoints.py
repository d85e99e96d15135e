"""Embedded endpoints: libvirt's test driver and real QEMU through the in-process driver.

Neither needs a daemon. The test driver is opened on a fresh node file per run, so every
``open()`` starts from an empty host. The embedded QEMU driver (``qemu:///embed?root=DIR``)
runs real QEMU processes from this process; libvirt allows one embedded root per process for
its lifetime, so the root is created once per process and each run gets its own disk directory
and leaves no domain behind.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from virtdrivers.capabilities import Capability
from virtdrivers.driver import EmbeddedEndpoint
from virtdrivers_libvirt import mapping

#: qemu.conf for a scratch root: log QEMU's output to files (there is no virtlogd) and run
#: QEMU as root so /dev/kvm and the scratch files are usable without a system account.
QEMU_CONF = 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\nremember_owner = 0\n'

_UNDEFINE_FLAGS = 1 | 2  # managed save image and snapshot metadata go with the domain


def _pets() -> tuple[tuple[str, str], ...]:
    """Two domains made "outside" virtdrivers, so adoption has something to adopt."""
    return tuple((f"pet-{n}", str(uuid.uuid4())) for n in (1, 2))


@contextlib.contextmanager
def libvirt_test_endpoint() -> Iterator[Mapping[str, Any]]:
    scratch = Path(tempfile.mkdtemp(prefix="vd-libvirt-test-"))
    try:
        node = scratch / "node.xml"
        node.write_text(mapping.node_file_xml(str(scratch / "pool"), 1024, pets=_pets()))
        yield {"uri": f"test://{node}", "node_name": "test-node"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _EmbedRoot:
    """The one embedded QEMU root of this process, removed at exit."""

    _lock = threading.Lock()
    _path: Path | None = None

    @classmethod
    def get(cls) -> Path:
        with cls._lock:
            if cls._path is None:
                path = Path(tempfile.mkdtemp(prefix="vd-libvirt-embed-"))
                (path / "etc").mkdir()
                (path / "etc" / "qemu.conf").write_text(QEMU_CONF)
                (path / "images").mkdir()
                atexit.register(shutil.rmtree, path, True)
                cls._path = path
            return cls._path


def embed_uri(root: Path) -> str:
    return f"qemu:///embed?root={root}"


def _remove_domains(uri: str) -> None:
    """Destroy and undefine whatever a run left in the shared embedded root."""
    from virtdrivers_libvirt.session import Session

    session = Session(uri, embedded=True)
    session.open()
    try:
        for dom in session.call(lambda c: c.listAllDomains(0)):
            with contextlib.suppress(Exception):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(Exception):
                dom.undefineFlags(_UNDEFINE_FLAGS)
    finally:
        session.close()


def _definer(xml: str) -> Callable[[Any], object]:
    return lambda conn: conn.defineXML(xml)


def _define_pets(uri: str) -> None:
    from virtdrivers_libvirt.session import Session

    session = Session(uri, embedded="/embed" in uri)
    session.open()
    try:
        for name, uid in _pets():
            xml = mapping.domain_xml(uuid=uid, name=name, vcpus=1, memory_mb=64, domain_type="qemu", managed=False)
            session.call(_definer(xml))
    finally:
        session.close()


@contextlib.contextmanager
def qemu_endpoint() -> Iterator[Mapping[str, Any]]:
    root = _EmbedRoot.get()
    disks = Path(tempfile.mkdtemp(prefix="run-", dir=root / "images"))
    uri = embed_uri(root)
    _define_pets(uri)
    try:
        yield {"uri": uri, "node_name": "qemu-embed", "disk_dir": str(disks)}
    finally:
        try:
            _remove_domains(uri)
        finally:
            shutil.rmtree(disks, ignore_errors=True)


@contextlib.contextmanager
def daemon_pair_endpoint() -> Iterator[Mapping[str, Any]]:
    """Two private libvirtd daemons sharing one disk directory: the driver sees two nodes."""
    from virtdrivers_libvirt.daemon import LibvirtDaemon

    shared = Path(tempfile.mkdtemp(prefix="vd-libvirt-pair-"))
    try:
        with (
            LibvirtDaemon(shared / "node-a") as a,
            LibvirtDaemon(shared / "node-b") as b,
        ):
            _define_pets(a.uri())
            yield {
                "uri": a.uri(),
                "node_name": "node-a",
                "peers": {"node-b": b.uri()},
                "migration_uri": "tcp://127.0.0.1",
                "migrate_unsafe": True,  # the disk directory is shared, libvirt cannot tell
                "disk_dir": str(shared / "disks"),
            }
    finally:
        shutil.rmtree(shared, ignore_errors=True)


ENDPOINTS = (
    EmbeddedEndpoint(
        "test",
        "libvirt's test driver (in-process, fresh node file per run)",
        libvirt_test_endpoint,
        # One node, and the test driver cannot migrate. It cannot hot-plug either, so disks
        # attach to and detach from stopped instances only (by redefining the domain).
        unavailable=frozenset({Capability.LIVE_MIGRATE, Capability.COLD_MIGRATE}),
    ),
    EmbeddedEndpoint(
        "qemu",
        "real QEMU through libvirt's embedded driver qemu:///embed (TCG, or KVM where usable)",
        qemu_endpoint,
        # One node only: libvirt allows a single embedded root per process.
        unavailable=frozenset({Capability.LIVE_MIGRATE, Capability.COLD_MIGRATE}),
    ),
    EmbeddedEndpoint(
        "qemu-pair",
        "two private libvirtd daemons (root, mount namespaces) running real QEMU, one disk directory",
        daemon_pair_endpoint,
    ),
)
