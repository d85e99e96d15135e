"""Embedded endpoints: libvirt's test driver, real QEMU in-process, and real QEMU through daemons.

``test`` and ``qemu`` need no daemon. The test driver is opened on fresh node files per run, so
every ``open()`` starts from empty hosts. The embedded QEMU driver (``qemu:///embed?root=DIR``)
runs real QEMU processes from this process; libvirt allows one embedded root per process for
its lifetime, so the root is created once per process and each run gets its own disk directory
and leaves no domain behind. ``qemu-pair`` starts private libvirtd daemons (see :mod:`.daemon`).

Every endpoint yields a username and a fresh password; where the peer can check them (the test
driver's ``<auth>``, the daemons' SASL) it does, so a wrong password is refused by the peer.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtdrivers.capabilities import Capability
from virtdrivers.endpoint import EmbeddedEndpoint, EndpointHooks, Evidence
from virtdrivers.errors import BackendUnavailable
from virtdrivers_libvirt import mapping

if TYPE_CHECKING:
    from virtdrivers.driver import Driver
    from virtdrivers_libvirt.daemon import LibvirtDaemon

#: qemu.conf for a scratch root: log QEMU's output to files (there is no virtlogd) and run
#: QEMU as root so /dev/kvm and the scratch files are usable without a system account.
QEMU_CONF = 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\nremember_owner = 0\n'

_UNDEFINE_FLAGS = 1 | 2  # managed save image and snapshot metadata go with the domain

log = logging.getLogger(__name__)


def _pets() -> tuple[tuple[str, str], ...]:
    """Two domains made "outside" virtdrivers, so adoption has something to adopt."""
    return tuple((f"pet-{n}", str(uuid.uuid4())) for n in (1, 2))


def _password() -> str:
    """A fresh password per run, so the suite's secret checks have a real secret to look for."""
    return f"vd-{secrets.token_urlsafe(18)}"


#: The user the endpoints' peers know; the password is per run.
USERNAME = "virtdrivers"

#: Names of the test endpoint's hosts: three, so moving to a named node is never the only choice.
TEST_NODES = ("test-a", "test-b", "test-c")


@contextlib.contextmanager
def libvirt_test_endpoint() -> Iterator[Mapping[str, Any]]:
    """Three hosts of libvirt's test driver, each a node file of its own, all demanding a password.

    The test driver checks credentials for real: a node file with ``<auth>`` makes every
    ``open`` ask for a username and password through the auth callback and refuse wrong ones
    (VIR_ERR_AUTH_FAILED). Only the first host has the unmanaged pets.
    """
    scratch = Path(tempfile.mkdtemp(prefix="vd-libvirt-test-"))
    password = _password()
    try:
        uris = {}
        for n, name in enumerate(TEST_NODES):
            node = scratch / f"{name}.xml"
            pets = _pets() if n == 0 else ()
            xml = mapping.node_file_xml(str(scratch / f"pool-{name}"), 1024, pets=pets, auth=(USERNAME, password))
            node.write_text(xml)
            uris[name] = f"test://{node}"
        primary, *peers = TEST_NODES
        yield {
            "uri": uris[primary],
            "node_name": primary,
            "peers": {name: uris[name] for name in peers},
            "username": USERNAME,
            "password": password,
        }
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


#: TCG, even where libvirt offers KVM: the machines these endpoints run on have a nested
#: /dev/kvm (kvm_pvm) on which stock kernels die of emulation failures in the boot loader, and a
#: real guest must boot here (measured: BACKENDS.md, "Real guests from Debian packages").
TEST_DOMAIN_TYPE = "qemu"

#: The id and name the tiny real guest is registered under in the QEMU endpoints' image stores.
TINY_GUEST_IMAGE = "tiny-guest"


def seed_images(image_dir: Path) -> None:
    """Register the tiny real guest (built from Debian packages, cached; see :mod:`.guest`) in
    an endpoint's image store, so workload tests boot a real Linux. A machine that cannot build
    it (no apt, no host tools) still gets a working endpoint, with no image to boot."""
    from virtdrivers_libvirt.guest import GuestBuildError, ensure_tiny_guest
    from virtdrivers_libvirt.images import ImageStore

    try:
        guest = ensure_tiny_guest()
    except (GuestBuildError, OSError) as exc:
        log.warning("libvirt endpoints: no tiny guest image (%s): image tests will fail", exc)
        return
    ImageStore(str(image_dir)).add(
        str(guest.path),
        TINY_GUEST_IMAGE,
        image_id=TINY_GUEST_IMAGE,
        os_type="linux",
        os_distro="debian",
        metadata={"kernel": guest.kernel_version, "build-key": guest.key},
    )


def embed_uri(root: Path) -> str:
    return f"qemu:///embed?root={root}"


def _session(uri: str, credentials: tuple[str, str] | None) -> Any:
    from virtdrivers_libvirt.session import Session

    session = Session(uri, embedded="/embed" in uri, credentials=credentials)
    session.open()
    return session


def _remove_domains(uri: str) -> None:
    """Destroy and undefine whatever a run left in the shared embedded root."""
    session = _session(uri, None)
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


def _define_pets(uri: str, credentials: tuple[str, str] | None = None) -> None:
    session = _session(uri, credentials)
    try:
        for name, uid in _pets():
            xml = mapping.domain_xml(uuid=uid, name=name, vcpus=1, memory_mb=64, domain_type="qemu", managed=False)
            session.call(_definer(xml))
    finally:
        session.close()


def _on_embedded_root(uri: str, action: str) -> None:
    """Run ``_define_pets`` or ``_remove_domains`` on an embedded root without taking it.

    An embedded root serves one process at a time, and libvirt keeps it until the process
    exits once it has been opened. Setting up in a short-lived child leaves the root free for
    whichever process drives it next (this one, or agents the crash harness starts and kills);
    when this process holds it already, the work is done here.
    """
    from virtdrivers_libvirt.session import EmbedKeeper

    if EmbedKeeper.holds(uri):
        {"define_pets": _define_pets, "remove_domains": _remove_domains}[action](uri)
        return
    script = f"from virtdrivers_libvirt import endpoints; endpoints._{action}({uri!r})"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BackendUnavailable(f"cannot prepare the embedded root ({action}): {done.stderr.strip()[-500:]}")


@contextlib.contextmanager
def qemu_endpoint() -> Iterator[Mapping[str, Any]]:
    """Real QEMU in this process. The embedded driver has no wire and so no authentication:
    the password it yields is passed through the auth callback like any other, but nothing
    on this URI ever asks for it (so a wrong one cannot be refused here; see ``qemu-pair``)."""
    root = _EmbedRoot.get()
    disks = Path(tempfile.mkdtemp(prefix="run-", dir=root / "images"))
    images = Path(tempfile.mkdtemp(prefix="store-", dir=root))
    uri = embed_uri(root)
    try:
        seed_images(images)
        _on_embedded_root(uri, "define_pets")
    except BaseException:
        shutil.rmtree(disks, ignore_errors=True)
        shutil.rmtree(images, ignore_errors=True)
        raise
    try:
        yield {
            "uri": uri,
            "node_name": "qemu-embed",
            "domain_type": TEST_DOMAIN_TYPE,
            "disk_dir": str(disks),
            "image_dir": str(images),
            "username": USERNAME,
            "password": _password(),
        }
    finally:
        try:
            _on_embedded_root(uri, "remove_domains")
        finally:
            shutil.rmtree(disks, ignore_errors=True)
            shutil.rmtree(images, ignore_errors=True)


#: Node names of the daemon endpoint. Three daemons: a move to a named node then is never the
#: only possible move. A warm daemon starts in about 0.05 s, so the third one is cheap.
PAIR_NODES = ("node-a", "node-b", "node-c")

#: The daemons of running ``qemu-pair`` endpoints by socket URI, for the fail_node hook.
_DAEMONS: dict[str, LibvirtDaemon] = {}


@contextlib.contextmanager
def daemon_pair_endpoint() -> Iterator[Mapping[str, Any]]:
    """Private libvirtd daemons sharing one disk directory: the driver sees three nodes.

    Each daemon's socket demands SASL (SCRAM-SHA-256) credentials, as a remote libvirtd would,
    so a wrong password is refused by the daemon itself.
    """
    from virtdrivers_libvirt.daemon import LibvirtDaemon

    shared = Path(tempfile.mkdtemp(prefix="vd-libvirt-pair-"))
    password = _password()
    creds = (USERNAME, password)
    try:
        with contextlib.ExitStack() as stack:
            # A cold machine's first libvirtd start has taken over 30 s: the timeout is generous.
            daemons = {
                name: stack.enter_context(LibvirtDaemon(shared / name, sasl_user=creds, start_timeout=90))
                for name in PAIR_NODES
            }
            uris = {name: d.uri() for name, d in daemons.items()}
            for name, daemon in daemons.items():
                _DAEMONS[uris[name]] = daemon
                stack.callback(_DAEMONS.pop, uris[name], None)
            primary, *peers = PAIR_NODES
            _define_pets(uris[primary], creds)
            seed_images(shared / "images")
            yield {
                "uri": uris[primary],
                "node_name": primary,
                "peers": {name: uris[name] for name in peers},
                "migration_uri": "tcp://127.0.0.1",
                "migrate_unsafe": True,  # the disk directory is shared, libvirt cannot tell
                "domain_type": TEST_DOMAIN_TYPE,
                "disk_dir": str(shared / "disks"),
                "image_dir": str(shared / "images"),
                "username": USERNAME,
                "password": password,
            }
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# -- hooks --------------------------------------------------------------------------------------


def _libvirt_driver(driver: Driver) -> Any:
    from virtdrivers_libvirt.driver import LibvirtDriver

    if not isinstance(driver, LibvirtDriver):
        raise TypeError(f"the libvirt endpoints' hooks drive a LibvirtDriver, not {type(driver).__name__}")
    return driver


def _fail_next_create(settings: Mapping[str, Any], driver: Driver) -> None:
    """A driver seam, because libvirt has no fault knob: the next create fails right after
    libvirt defined (and, if asked, started) the domain on its disks, so the driver's own
    clean-up runs against the real peer and must leave no domain and no disk behind."""
    _libvirt_driver(driver).arm_create_fault()


def _ignore_acpi(settings: Mapping[str, Any], driver: Driver, instance_id: str) -> None:
    """Make the guest ignore the ACPI power button, for real.

    A blank instance has no operating system: nothing ever answers ACPI, so there is nothing
    to do. A guest booted from the tiny real image listens with busybox ``acpid``, and libvirt
    asks its guest agent first (which runs ``/sbin/shutdown``): through the agent, the hook
    stops ``acpid`` and removes the shim, so the agent's request fails, libvirt falls back to
    ACPI, nobody listens, and a graceful power-off waits out its timeout and forces, as with
    a hung guest.
    """
    from virtdrivers_libvirt import guest_io

    d = _libvirt_driver(driver)
    node, dom, record = d._managed(instance_id)
    if record.image is None:
        return
    status = guest_io.agent_exec(
        node.session, dom, ["/bin/sh", "-c", "killall acpid && rm /sbin/shutdown"], timeout=120
    )
    if status != 0:
        raise RuntimeError(f"could not make the guest ignore ACPI (exit status {status})")


def _fail_daemon(settings: Mapping[str, Any], driver: Driver, node: str, down: bool) -> None:
    """Acts on the peer: SIGKILL that node's libvirtd (its guests keep running, as when a
    host's management stack dies), or start it again on the same state."""
    uris = {settings["node_name"]: settings["uri"], **settings.get("peers", {})}
    if node not in uris or uris[node] not in _DAEMONS:
        raise KeyError(f"no daemon of this endpoint is node {node!r}")
    daemon = _DAEMONS[uris[node]]
    if down:
        daemon.kill()
    else:
        daemon.restart()


ENDPOINTS = (
    EmbeddedEndpoint(
        "test",
        "libvirt's test driver: three in-process hosts, fresh node files per run, password required",
        libvirt_test_endpoint,
        # The test driver cannot migrate ("not supported by the connection driver"). It cannot
        # hot-plug either, so disks attach to and detach from stopped instances only (by
        # redefining the domain).
        # Workloads: the test driver runs no guest, so nothing boots an image, reads user data,
        # prints to a console, reports an address or accrues counters; it has no files for an
        # image store either. Networks it has for real (the node file's "default").
        unavailable=frozenset(
            {
                Capability.LIVE_MIGRATE,
                Capability.COLD_MIGRATE,
                Capability.IMAGES,
                Capability.IMAGE_COW,
                Capability.IMAGE_COPY,
                Capability.IMAGE_UPLOAD,
                Capability.NIC_HOTPLUG,
                Capability.USER_DATA,
                Capability.GUEST_ADDRESSES,
                Capability.CONSOLE_OUTPUT,
                Capability.METRICS,
            }
        ),
        evidence=Evidence.VENDOR_SIMULATOR,
        # No ignore_acpi: the test driver's shutdown is immediate, it cannot play a deaf guest.
        # No fail_node: an in-process host cannot die apart from this process.
        hooks=EndpointHooks(fail_next_create=_fail_next_create),
    ),
    EmbeddedEndpoint(
        "qemu",
        "real QEMU through libvirt's embedded driver qemu:///embed (TCG, or KVM where usable)",
        qemu_endpoint,
        # One node only: libvirt allows a single embedded root per process.
        unavailable=frozenset({Capability.LIVE_MIGRATE, Capability.COLD_MIGRATE}),
        evidence=Evidence.REAL,
        hooks=EndpointHooks(fail_next_create=_fail_next_create, ignore_acpi=_ignore_acpi),
        # In-process QEMU has no wire and nobody to authenticate to: its password goes unchecked.
        authenticates=False,
    ),
    EmbeddedEndpoint(
        "qemu-pair",
        "three private libvirtd daemons (root, mount namespaces, SASL) running real QEMU, one disk directory",
        daemon_pair_endpoint,
        evidence=Evidence.REAL,
        hooks=EndpointHooks(fail_next_create=_fail_next_create, ignore_acpi=_ignore_acpi, fail_node=_fail_daemon),
    ),
)
