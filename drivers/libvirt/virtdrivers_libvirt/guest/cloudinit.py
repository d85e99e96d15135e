"""Build the real cloud-init guest: a minimal Debian bookworm with systemd, cloud-init and qemu-ga.

Why a second guest: the tiny guest (:mod:`.build`) only *imitates* cloud-init. Tests that must
show a driver works with real images (the NoCloud seed parsed by cloud-init itself, its
``runcmd`` run, its "finished" line, systemd-logind honouring the ACPI power button, the agent
started by udev) need the real thing. It costs ~30 s to boot under TCG, so only slow tests use it.

How, and why each way:

* ``debootstrap --variant=minbase`` from the Debian mirror apt is configured with (read with
  ``apt-get indextargets``, so the guest comes from the same place as every other package the
  project uses), inside ``unshare --mount`` so the chroot's /proc and /sys mounts die with it
  even if the build is killed. Needs root (chroot, device nodes, file ownership).
* Guest configuration is written as plain files into the tree (no chroot scripts): cloud-init
  limited to NoCloud, ``locale: C.UTF-8`` (no locales package), ``ssh_genkeytypes: []`` (no
  ssh), an fstab by UUID, an empty machine-id (so each guest makes its own).
* The disk is assembled without loop devices or mounts: the kernel and initrd go to a FAT
  partition with syslinux (the tiny guest's writer, :func:`.build._write_disk`), the tree
  becomes an ext4 image with ``mkfs.ext4 -d``, appended as partition 2, then ``qemu-img
  convert`` to qcow2.
* Caching follows the tiny guest: a key over the inputs (the suite's signed ``InRelease``
  as apt last fetched it, which pins every package version; host tool versions; this recipe's
  code), one directory per key, filled in a temporary directory and renamed into place, and a
  file lock so a second builder waits instead of repeating ~2 minutes of work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from virtdrivers_libvirt.guest import _apt
from virtdrivers_libvirt.guest.build import (
    PARTITION_BYTES,
    PARTITION_START_SECTOR,
    SECTOR,
    SYSLINUX_MBR,
    GuestBuildError,
    GuestImage,
    _chs,
    _write_disk,
    base_qcow2,
    cached_build,
    default_cache_dir,
    file_sha256,
    host_tool_versions,
)

#: Bumped by hand when the layout of guest.json or the cache changes incompatibly.
RECIPE_VERSION = 1

SUITE = "bookworm"
#: What the guest needs beyond minbase. python3-cffi-backend is named because cloud-init's
#: python3-cryptography needs it only through virtual packages (python3-cffi-backend-api-min/
#: -max), which debootstrap does not resolve, so it would be left out.
PACKAGES = (
    "cloud-init",
    "qemu-guest-agent",
    "systemd-sysv",
    "dbus",  # without it logind never runs, so the ACPI power button does nothing
    "ifupdown",  # cloud-init's renderer on Debian; networking.service brings the NIC up
    "linux-image-cloud-amd64",
    "python3-cffi-backend",
)

HOST_TOOLS = {
    "apt-get": "apt",
    "debootstrap": "debootstrap",
    "unshare": "util-linux",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
    "qemu-img": "qemu-utils",
}
HOST_PACKAGES = ("debootstrap", "e2fsprogs", "dosfstools", "mtools", "syslinux", "qemu-utils")

#: Fixed so the kernel command line and fstab can name the root filesystem before it exists.
ROOT_UUID = "5644ec1d-0b1e-4a5e-9d1e-c10d1d000001"
ROOT_LABEL = "vdroot"
#: Free space the guest gets on its root filesystem beyond what the tree occupies: logs,
#: cloud-init's state, a user's packages. Sparse in the image, so it costs nothing until used.
ROOT_FREE_BYTES = 1536 * 1024 * 1024

#: console=ttyS0: cloud-init's output and the test's markers are read from the serial port;
#: quiet: under TCG every kernel line on a 115200 baud console costs boot time; panic=5: a
#: panic resets (an exit under ``-no-reboot``) instead of hanging until a test's deadline.
KERNEL_CMDLINE = f"root=UUID={ROOT_UUID} ro console=ttyS0,115200 panic=5 quiet loglevel=4"

#: Masked in the guest (see :func:`_configure`).
MASKED_UNITS = (
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
)

#: 128 MiB panics unpacking the initrd; 192 MiB boots; tests use 256.
MIN_MEMORY_MIB = 192

CLOUD_CFG = """\
# Written by virtdrivers_libvirt.guest.cloudinit.
# NoCloud only: probing the network datasources (EC2, OpenStack...) costs minutes under TCG.
datasource_list: [NoCloud, None]
# The locales package is not installed; C.UTF-8 is built into libc.
locale: C.UTF-8
# No ssh server in this guest, so no host keys to generate. (cloud-init 22.4's schema wants
# at least one item and logs "Invalid cloud-config provided" for this; the module honours it.)
ssh_genkeytypes: []
ssh_deletekeys: false
# A fixed-size disk image: nothing to grow.
growpart: {mode: "off"}
resize_rootfs: false
"""

GIB = 1 << 30
DEBOOTSTRAP_TIMEOUT = 1200.0
SUBPROCESS_TIMEOUT = 300.0
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CloudInitGuestImage(GuestImage):
    """A :class:`GuestImage` plus what a driver needs to boot it well.

    ``packages`` holds every package installed in the guest (name -> version).
    """

    flavour: str = "cloud-init"
    suite: str = SUITE
    mirror: str = ""
    min_memory_mib: int = MIN_MEMORY_MIB
    kernel_cmdline: str = KERNEL_CMDLINE


def default_cloudinit_cache_dir() -> Path:
    """A subdirectory of the tiny guest's cache, so the tiny guest's ``prune`` leaves it alone."""
    return default_cache_dir() / "cloudinit"


def ensure_cloudinit_guest(cache_dir: Path | None = None, *, force: bool = False) -> CloudInitGuestImage:
    """The cloud-init guest's base image, built on first use (~2 minutes) and whenever an input changes.

    A cached lookup costs a few milliseconds while apt's lists are unchanged. ``force``
    rebuilds even when a matching image exists (replacing it atomically).
    """
    cache_dir = (cache_dir or default_cloudinit_cache_dir()).resolve()
    _check_host()
    mirror, release = _mirror_and_release_cached(cache_dir)
    key = _key(mirror, release)
    return cached_build(
        cache_dir,
        key,
        _load,
        lambda tmp, started: _build(mirror, key, tmp, cache_dir / "debs", started),
        force=force,
        remove=_rmtree,
    )


def prune_cloudinit(cache_dir: Path | None = None, keep: str | None = None) -> list[Path]:
    """Remove cached images other than ``keep`` (a key) and .debs the kept image does not use.

    Not called automatically: a running guest's overlay may still use an older base.
    """
    cache_dir = (cache_dir or default_cloudinit_cache_dir()).resolve()
    removed: list[Path] = []
    kept_debs: set[str] = set()
    images = cache_dir / "images"
    for d in sorted(images.iterdir()) if images.is_dir() else []:
        if d.name == keep and (img := _load(d)) is not None:
            kept_debs |= {f"{n}_{v.replace(':', '%3a')}_" for n, v in img.packages.items()}
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    debs = cache_dir / "debs"
    for deb in sorted(debs.glob("*.deb")) if debs.is_dir() else []:
        if deb.name.rsplit("_", 1)[0] + "_" not in kept_debs:
            deb.unlink(missing_ok=True)
            removed.append(deb)
    return removed


# --- inputs and cache -------------------------------------------------------------------------


def _check_host() -> None:
    missing = {pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}
    if not SYSLINUX_MBR.is_file():
        missing.add("syslinux-common")
    if missing:
        raise GuestBuildError(
            f"the cloud-init guest build needs host packages: apt-get install {' '.join(sorted(missing))}"
        )


def _mirror_and_release_cached(cache_dir: Path) -> tuple[str, Path]:
    """:func:`_mirror_and_release`, remembered while apt's sources and lists are unchanged
    (``apt-get indextargets`` takes ~0.4 s; the check ~1 ms)."""
    fingerprint = _apt.state_fingerprint()
    memo = cache_dir / "resolved.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        data = json.loads(memo.read_text())
        if data["fingerprint"] == fingerprint and Path(data["release"]).is_file():
            return str(data["mirror"]), Path(data["release"])
    mirror, release = _mirror_and_release()
    with contextlib.suppress(OSError):
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".resolved-", dir=cache_dir)
        with os.fdopen(fd, "w") as fh:
            json.dump({"fingerprint": _apt.state_fingerprint(), "mirror": mirror, "release": str(release)}, fh)
        os.replace(tmp, memo)
    return mirror, release


def _mirror_and_release() -> tuple[str, Path]:
    """The mirror apt uses for ``SUITE`` main, and the suite's (In)Release file apt fetched from it.

    The Release file lists the hash of every Packages index, so it pins every version
    debootstrap will install: hashing it is an exact and cheap cache key. On a machine with
    no package lists, one ``apt-get update`` is tried (as root, which the build needs anyway).
    """
    for attempt in range(2):
        out = _run(
            ["apt-get", "indextargets", "--format", "$(REPO_URI)|$(CODENAME)|$(ORIGIN)|$(COMPONENT)|$(IDENTIFIER)"]
        )
        for line in out.splitlines():
            uri, codename, origin, component, ident = (line.split("|") + [""] * 5)[:5]
            if codename == SUITE and origin == "Debian" and component == "main" and ident == "Packages":
                stem = uri.split("://", 1)[-1].rstrip("/").replace("/", "_") + f"_dists_{SUITE}_"
                for name in ("InRelease", "Release"):
                    release = Path("/var/lib/apt/lists") / (stem + name)
                    if release.is_file():
                        return uri, release
        if attempt == 0:
            _run(["apt-get", "update", "-qq"])
    raise GuestBuildError(f"apt has no Debian {SUITE} main source with fetched lists (see /etc/apt/sources.list*)")


def recipe_sha256() -> str:
    """Hash of the code that shapes the image: this module and the disk writer."""
    h = hashlib.sha256(f"cloudinit-recipe-version {RECIPE_VERSION}\n".encode())
    for name in ("cloudinit.py", "build.py"):
        h.update(name.encode() + b"\0" + hashlib.sha256((_PACKAGE_DIR / name).read_bytes()).digest())
    return h.hexdigest()


def _key(mirror: str, release: Path) -> str:
    stamp = {
        "suite": SUITE,
        "mirror": mirror,
        "release": file_sha256(release),
        "packages": list(PACKAGES),
        "host_tools": host_tool_versions(HOST_PACKAGES),
        "recipe": recipe_sha256(),
        "cmdline": KERNEL_CMDLINE,
        "cloud_cfg": CLOUD_CFG,
    }
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()
    return f"cloudinit-{SUITE}-{digest[:16]}"


def _load(directory: Path) -> CloudInitGuestImage | None:
    try:
        data = json.loads((directory / "guest.json").read_text())
        data["path"] = directory / data["path"]
        image = CloudInitGuestImage(**data)
    except (OSError, ValueError, TypeError):
        return None
    return image if image.path.is_file() else None


def _rmtree(path: Path) -> None:
    """Remove a build directory; refuses if something is still mounted below it (it would
    delete through the mount), which ``unshare --mount`` should make impossible."""
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as fh:
        mounted = [line.split()[4] for line in fh if line.split()[4].startswith(prefix)]
    if mounted:
        raise GuestBuildError(f"refusing to remove {path}: still mounted: {mounted}")
    shutil.rmtree(path, ignore_errors=True)


# --- the build --------------------------------------------------------------------------------


def _run(argv: list[str], timeout: float = SUBPROCESS_TIMEOUT) -> str:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} not found") from exc
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


def _build(mirror: str, key: str, tmp: Path, deb_dir: Path, started: float) -> None:
    if os.geteuid() != 0:
        raise GuestBuildError("the cloud-init guest build needs root (debootstrap chroots and creates device nodes)")
    root = tmp / "root"
    deb_dir.mkdir(parents=True, exist_ok=True)
    try:
        _debootstrap(root, deb_dir, mirror)
    except GuestBuildError as exc:
        log = root / "debootstrap" / "debootstrap.log"  # where debootstrap says what really failed
        detail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
        raise GuestBuildError(f"{exc}\n--- {log}:\n{detail}" if detail else str(exc)) from exc
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestBuildError(f"expected one kernel in the guest's /boot, found {[k.name for k in kernels]}")
    kernel_version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{kernel_version}"
    if not initrd.is_file():
        raise GuestBuildError(f"the kernel's postinst made no {initrd.name}")
    packages = _installed_packages(root)

    boot = tmp / "boot"
    boot.mkdir()
    shutil.copyfile(kernels[0], boot / "vmlinuz")
    shutil.copyfile(initrd, boot / "initrd.img")
    (boot / "syslinux.cfg").write_text(
        "SERIAL 0 115200\nDEFAULT debian\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL debian\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )
    _configure(root, key, kernel_version)

    root_img = tmp / "root.img"
    _write_ext4(root_img, root)
    raw = tmp / "disk.raw"
    _write_disk(raw, tmp / "part.img", boot)
    _append_partition(raw, root_img, partition_type=0x83)

    out = tmp / "image"
    qcow2, virtual_size = base_qcow2(raw, out, timeout=SUBPROCESS_TIMEOUT)
    image = CloudInitGuestImage(
        path=qcow2,
        virtual_size=virtual_size,
        format="qcow2",
        kernel_version=kernel_version,
        sha256=file_sha256(qcow2),
        key=key,
        packages=packages,
        build_seconds=round(time.monotonic() - started, 2),
        mirror=mirror,
    )
    (out / "guest.json").write_text(image.to_json())


def _debootstrap(root: Path, deb_dir: Path, mirror: str) -> None:
    """minbase plus :data:`PACKAGES` into ``root``.

    ``--cache-dir`` keeps the .debs between builds (and out of the image); a private mount
    namespace makes debootstrap's /proc and /sys mounts in the chroot vanish with it, even if
    the build is killed half-way.
    """
    _run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "debootstrap",
            "--variant=minbase",
            "--components=main",
            f"--include={','.join(PACKAGES)}",
            f"--cache-dir={deb_dir}",
            SUITE,
            str(root),
            mirror,
        ],
        timeout=DEBOOTSTRAP_TIMEOUT,
    )


def _installed_packages(root: Path) -> dict[str, str]:
    out = _run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"])
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def _configure(root: Path, key: str, kernel_version: str) -> None:
    """Files that make the tree a bootable, seed-driven guest (written directly, no chroot)."""
    (root / "etc/cloud/cloud.cfg.d/90-virtdrivers.cfg").write_text(CLOUD_CFG)
    (root / "etc/fstab").write_text(
        f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
        "# The kernel and initrd live on the FAT partition 1 (syslinux); not mounted by default.\n"
        "LABEL=VDBOOT /boot vfat noauto,nofail 0 0\n"
    )
    (root / "etc/hostname").write_text("localhost\n")  # cloud-init sets local-hostname from the seed
    # Empty, not absent: systemd then makes a fresh machine-id on first boot, so two guests
    # from one base differ (DHCP client ids, journal), without the "first boot" unit presets.
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "etc/virtdrivers-guest").write_text(f"{key} kernel {kernel_version}\n")
    # The agent is started by udev when its virtio port appears (the unit has no [Install]);
    # make sure nothing masked it and that the rule that starts it shipped.
    rule = root / "lib/udev/rules.d/60-qemu-guest-agent.rules"
    unit = root / "lib/systemd/system/qemu-guest-agent.service"
    if not unit.is_file() or not rule.is_file():
        raise GuestBuildError(f"qemu-guest-agent has no {unit.name} or {rule.name}: its start-up changed")
    # Under TCG the guest has one slow vCPU, so every unit that starts at boot delays cloud-init:
    # these do housekeeping a short-lived test guest never needs (e2scrub_reap alone took ~10 s).
    masked = root / "etc/systemd/system"
    for name in MASKED_UNITS:
        link = masked / name
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Not needed in a guest (apt's caches, documentation; the kernel and initrd are on the FAT
    # partition): their files would only grow the image.
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*_*",
        "boot/*",
        "usr/share/doc/**/*",
        "usr/share/man/**/*",
        "usr/share/info/**/*",
    ):
        for p in root.glob(pattern):
            if p.is_file() or p.is_symlink():
                p.unlink()
    for log in root.glob("var/log/**/*"):
        if log.is_file():
            log.write_bytes(b"")


def _write_ext4(image: Path, tree: Path) -> None:
    """An ext4 image holding ``tree`` (ownership, modes, devices, links kept): no loop device."""
    used = sum(p.lstat().st_size for p in tree.rglob("*"))
    # The whole disk (MBR + boot partition + this) comes out a whole number of GiB, so a driver
    # that sizes root disks in GiB (as Nova flavors do) gives its child the base's exact size.
    before = PARTITION_START_SECTOR * SECTOR + PARTITION_BYTES
    disk = -(-(before + used * 5 // 4 + ROOT_FREE_BYTES) // GIB) * GIB
    size = disk - before
    with open(image, "wb") as fh:
        fh.truncate(size)
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            ROOT_LABEL,
            "-U",
            ROOT_UUID,
            "-E",
            f"root_owner=0:0,hash_seed={ROOT_UUID}",
            "-d",
            str(tree),
            str(image),
        ]
    )


def _append_partition(raw: Path, content: Path, *, partition_type: int) -> None:
    """Append ``content`` to a disk from :func:`.build._write_disk` as MBR partition 2.

    The tiny guest's writer makes one FAT partition at 1 MiB of :data:`.build.PARTITION_BYTES`;
    the second one starts right after it (still MiB-aligned).
    """
    start = PARTITION_START_SECTOR + PARTITION_BYTES // SECTOR
    size = content.stat().st_size
    if size % SECTOR:
        raise GuestBuildError(f"{content} is not a whole number of sectors")
    sectors = size // SECTOR
    entry = (
        b"\x00" + _chs(start) + bytes([partition_type]) + _chs(start + sectors - 1) + struct.pack("<II", start, sectors)
    )
    with open(raw, "r+b") as fh:
        if fh.seek(0, os.SEEK_END) != start * SECTOR:
            raise GuestBuildError(f"{raw} does not end where partition 2 should start")
        with open(content, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)
        fh.seek(446 + 16)
        fh.write(entry)
