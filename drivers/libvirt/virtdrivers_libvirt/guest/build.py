"""Build the tiny real guest: a bootable qcow2 made only from Debian packages, cached by inputs.

Why this guest: workload tests need a *real* operating system (a kernel that answers ACPI, a
guest agent that reports addresses, something that consumes a NoCloud seed) but cannot afford
a full distribution under TCG. This one boots in seconds: Debian's cloud kernel, an initramfs
holding static busybox as init plus ``qemu-ga`` and its libraries, and nothing else. The root
filesystem lives in RAM, so the disk is only a boot medium and is never written by the guest.

How, and why each way:

* Packages come from apt (``apt-get download``) and are unpacked with ``dpkg-deb -x``: nothing
  is installed on the host, and the build sees exactly what the configured mirror serves.
* Shared libraries and kernel-module dependencies are resolved by reading ELF headers (see
  :mod:`._elf`), not with ``ldd``/``modprobe``, which would look at the host instead.
* The disk is assembled without loop devices, mounts or root: a FAT image file made with
  ``mkfs.vfat``, filled with ``mcopy``, made bootable with the mtools flavour of ``syslinux``,
  then an MBR from syslinux's ``mbr.bin`` with a partition table written here, and finally
  ``qemu-img convert`` to qcow2.
* The result is keyed on its inputs (package versions, host tool versions, this recipe's own
  files); each key gets its own directory, filled in a temporary directory and renamed into
  place, so concurrent builders and readers never see a partial image. A file lock makes a
  second builder wait for the first instead of repeating the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from virtdrivers_libvirt.guest import _apt, _elf
from virtdrivers_libvirt.guest._cpio import MTIME, CpioWriter

#: Bumped by hand when the layout of guest.json or the cache changes incompatibly.
RECIPE_VERSION = 1

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_PACKAGE = "qemu-guest-agent"
#: Which of the agent's dependencies are worth unpacking: only shared-library packages.
LIBRARY_PACKAGE = re.compile(r"^(lib|zlib1g$)")

#: Loaded at every boot, in dependency order: virtio disks/NIC/console for the seed, network and
#: agent; vfat (+ its code pages, which a vfat mount needs) and isofs for both seed formats;
#: button + evdev so busybox acpid sees the ACPI power button. Built-in ones are skipped.
BOOT_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "isofs",
    "button",
    "evdev",
)
#: Loaded only when no virtio seed is found: an IDE cdrom seed (the cloud kernel has no AHCI).
IDE_MODULES = ("ata_piix", "sr_mod")

#: Host tools the build runs, and the apt package that provides each.
HOST_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
    "qemu-img": "qemu-utils",
}
HOST_PACKAGES = ("dosfstools", "mtools", "syslinux", "syslinux-common", "qemu-utils")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")

#: The FAT partition starts at 1 MiB (the usual alignment) and holds a ~14 MB kernel and a
#: ~5 MB initramfs; 32 MiB leaves room for a bigger kernel without wasting much.
PARTITION_START_SECTOR = 2048
PARTITION_BYTES = 32 * 1024 * 1024
SECTOR = 512

#: Kernel command line. console=ttyS0: the serial port is where markers are read; panic=5 turns
#: a panic into a reset (an exit under ``-no-reboot``) instead of a hang until some timeout.
KERNEL_CMDLINE = "console=ttyS0,115200 panic=5 quiet loglevel=4"

SUBPROCESS_TIMEOUT = 120.0
_PACKAGE_DIR = Path(__file__).resolve().parent
_ROOTFS = _PACKAGE_DIR / "rootfs"


ImageT = TypeVar("ImageT")


class GuestBuildError(RuntimeError):
    """The tiny guest could not be built (missing host tool, apt failure, unexpected package)."""


@dataclass(frozen=True)
class GuestImage:
    """A built base image and what it was built from.

    Use ``path`` only as a read-only backing file (``qemu-img create -f qcow2 -F qcow2 -b``):
    it is shared by every run on the machine.
    """

    path: Path
    virtual_size: int
    format: str
    kernel_version: str
    sha256: str
    key: str
    packages: Mapping[str, str] = field(default_factory=dict)
    build_seconds: float = 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data["path"] = self.path.name
        data["packages"] = dict(self.packages)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, directory: Path, text: str) -> GuestImage:
        data = json.loads(text)
        data["path"] = directory / data["path"]
        return cls(**data)


def default_cache_dir() -> Path:
    """``$VIRTDRIVERS_CACHE/guest`` if set, else ``drivers/libvirt/.cache/guest`` (git-ignored)."""
    env = os.environ.get("VIRTDRIVERS_CACHE")
    if env:
        return Path(env) / "guest"
    return _PACKAGE_DIR.parents[1] / ".cache" / "guest"


def ensure_tiny_guest(cache_dir: Path | None = None, *, force: bool = False) -> GuestImage:
    """The tiny guest's base image, built on first use and whenever an input changes.

    When the image is cached this costs milliseconds if apt's package lists are unchanged
    since the last call, else ~3 s of ``apt-cache`` calls to re-check the candidate versions.
    ``force`` rebuilds even when a matching image exists (replacing it atomically).
    """
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    _check_host_tools()
    inputs = _resolve_inputs(cache_dir)
    key = _key(inputs)
    return cached_build(
        cache_dir,
        key,
        _load,
        lambda tmp, started: _build(inputs, key, tmp, cache_dir / "debs", started),
        force=force,
    )


def cached_build(
    cache_dir: Path,
    key: str,
    load: Callable[[Path], ImageT | None],
    build: Callable[[Path, float], None],
    *,
    force: bool = False,
    remove: Callable[[Path], None] = lambda path: shutil.rmtree(path, ignore_errors=True),
) -> ImageT:
    """The image cached under ``cache_dir/images/key``, built by ``build`` when missing or ``force``d.

    ``build(tmp, started)`` writes ``tmp/image``; it is renamed into place under a file lock, so
    a second builder waits rather than builds again, and readers never see half an image.
    ``load`` reads a published image (None when absent or unreadable); ``remove`` deletes a
    build directory (the cloud-init guest's refuses while anything is mounted below it).
    """
    final = cache_dir / "images" / key
    if not force and (image := load(final)) is not None:
        return image
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / ".lock"):
        if not force and (image := load(final)) is not None:
            return image  # another process built it while we waited
        _remove_stale_temporaries(cache_dir)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
        try:
            build(tmp, started)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # force: move the old one aside first (readers keep their open files)
                old = Path(tempfile.mkdtemp(prefix=".old-", dir=cache_dir))
                os.replace(final, old / "image")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp / "image", final)
            except OSError:
                # Without a working lock (some network filesystems) another builder can win the
                # rename; its image has the same key, hence the same inputs: use it.
                if load(final) is None:
                    raise
        finally:
            remove(tmp)
    image = load(final)
    if image is None:
        raise GuestBuildError(f"build finished but {final} has no guest.json")
    return image


def prune(cache_dir: Path | None = None, keep: str | None = None) -> list[Path]:
    """Remove cached images other than ``keep`` (a key) and .debs no image of ``keep`` uses.

    Not called automatically: a running guest's overlay may still use an older base.
    """
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    removed: list[Path] = []
    images = cache_dir / "images"
    kept_debs: set[str] = set()
    for d in sorted(images.iterdir()) if images.is_dir() else []:
        if d.name == keep and (img := _load(d)) is not None:
            kept_debs |= {f"{n}_{v.replace(':', '%3a')}_amd64.deb" for n, v in img.packages.items()}
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    debs = cache_dir / "debs"
    for deb in sorted(debs.glob("*.deb")) if debs.is_dir() else []:
        if deb.name not in kept_debs:
            deb.unlink(missing_ok=True)
            removed.append(deb)
    return removed


# --- inputs and cache -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    kernel: _apt.Package
    busybox: _apt.Package
    agent: _apt.Package
    libraries: tuple[_apt.Package, ...]
    host_tools: Mapping[str, str]
    recipe_sha256: str

    @property
    def guest_packages(self) -> list[_apt.Package]:
        return [self.kernel, self.busybox, self.agent, *self.libraries]

    @property
    def kernel_version(self) -> str:
        return self.kernel.name.removeprefix("linux-image-")


def _check_host_tools() -> None:
    missing = {pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}
    if not SYSLINUX_MBR.is_file():
        missing.add("syslinux-common")
    if missing:
        raise GuestBuildError(f"the guest build needs host packages: apt-get install {' '.join(sorted(missing))}")


def _resolve_inputs(cache_dir: Path) -> _Inputs:
    """Package versions and host tool versions, from apt, or from the last answer if apt's
    state has not changed since (saves ~3 s of apt-cache calls on every cached call)."""
    fingerprint = _apt.state_fingerprint()
    memo = cache_dir / "resolved.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        data = json.loads(memo.read_text())
        if data["fingerprint"] == fingerprint and data["recipe_version"] == RECIPE_VERSION:
            pkgs = {name: _apt.Package(**{**p, "depends": tuple(p["depends"])}) for name, p in data["packages"].items()}
            return _Inputs(
                kernel=pkgs[data["kernel"]],
                busybox=pkgs[BUSYBOX_PACKAGE],
                agent=pkgs[AGENT_PACKAGE],
                libraries=tuple(pkgs[n] for n in data["libraries"]),
                host_tools=data["host_tools"],
                recipe_sha256=recipe_sha256(),
            )
    try:
        top = _apt.show([KERNEL_META_PACKAGE, BUSYBOX_PACKAGE, AGENT_PACKAGE])
        images = [d for d in top[KERNEL_META_PACKAGE].depends if d.startswith("linux-image-")]
        if not images:
            raise GuestBuildError(f"{KERNEL_META_PACKAGE} depends on no linux-image-* package")
        kernel = _apt.show([images[0]])[images[0]]
        libraries = _apt.library_closure(top[AGENT_PACKAGE], LIBRARY_PACKAGE)
    except _apt.AptError as exc:
        raise GuestBuildError(str(exc)) from exc
    inputs = _Inputs(
        kernel=kernel,
        busybox=top[BUSYBOX_PACKAGE],
        agent=top[AGENT_PACKAGE],
        libraries=tuple(libraries[n] for n in sorted(libraries)),
        host_tools=host_tool_versions(),
        recipe_sha256=recipe_sha256(),
    )
    record = {
        "fingerprint": fingerprint,
        "recipe_version": RECIPE_VERSION,
        "kernel": kernel.name,
        "libraries": [p.name for p in inputs.libraries],
        "packages": {p.name: asdict(p) for p in inputs.guest_packages},
        "host_tools": dict(inputs.host_tools),
    }
    with contextlib.suppress(OSError):
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".resolved-", dir=cache_dir)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
        os.replace(tmp, memo)
    return inputs


def host_tool_versions(packages: tuple[str, ...] = HOST_PACKAGES) -> dict[str, str]:
    """Installed versions of the host packages a build runs (part of each image's cache key)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *packages],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    ).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def recipe_sha256() -> str:
    """Hash of this package's code and rootfs templates: editing the recipe rebuilds the image.

    ``cloudinit.py`` (the other guest's recipe) is left out: editing it must not rebuild this one.
    """
    h = hashlib.sha256(f"recipe-version {RECIPE_VERSION}\n".encode())
    files = sorted(p for p in _PACKAGE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        if p.name == "cloudinit.py" and p.parent == _PACKAGE_DIR:
            continue
        if p.suffix == ".py" or _ROOTFS in p.parents:
            h.update(p.relative_to(_PACKAGE_DIR).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _key(inputs: _Inputs) -> str:
    stamp = {
        "packages": {p.name: p.version for p in inputs.guest_packages},
        "host_tools": dict(inputs.host_tools),
        "recipe": inputs.recipe_sha256,
        "cmdline": KERNEL_CMDLINE,
    }
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()
    return f"{inputs.kernel_version}-{digest[:16]}"


def _load(directory: Path) -> GuestImage | None:
    meta = directory / "guest.json"
    try:
        image = GuestImage.from_json(directory, meta.read_text())
    except (OSError, ValueError, TypeError):
        return None
    return image if image.path.is_file() else None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Temporary build directories left by killed builders (we hold the lock, so none is live)."""
    for d in list(cache_dir.glob(".build-*")) + list(cache_dir.glob(".old-*")):
        shutil.rmtree(d, ignore_errors=True)
    for f in cache_dir.glob(".resolved-*"):
        f.unlink(missing_ok=True)


# --- the build --------------------------------------------------------------------------------


def _run(argv: list[str], *, timeout: float = SUBPROCESS_TIMEOUT, **kwargs: object) -> str:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        **kwargs,  # type: ignore[call-overload]
    )
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return str(proc.stdout)


def _build(inputs: _Inputs, key: str, tmp: Path, deb_dir: Path, started: float) -> None:
    try:
        debs = _apt.fetch(inputs.guest_packages, deb_dir)
    except _apt.AptError as exc:
        raise GuestBuildError(str(exc)) from exc
    trees = {name: tmp / "pkgs" / name for name in debs}
    for name, deb in debs.items():
        _apt.extract(deb, trees[name])

    kernel_tree = trees[inputs.kernel.name]
    vmlinuz = kernel_tree / "boot" / f"vmlinuz-{inputs.kernel_version}"
    modules_dir = kernel_tree / "lib" / "modules" / inputs.kernel_version
    if not vmlinuz.is_file() or not modules_dir.is_dir():
        raise GuestBuildError(f"{inputs.kernel.name} has no {vmlinuz.name} or modules for {inputs.kernel_version}")

    boot = tmp / "boot"
    boot.mkdir()
    initrd = boot / "initrd.img"
    _write_initramfs(initrd, inputs, trees, modules_dir, key)
    shutil.copyfile(vmlinuz, boot / "vmlinuz")
    (boot / "syslinux.cfg").write_text(
        "SERIAL 0 115200\nDEFAULT tiny\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL tiny\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )

    raw = tmp / "disk.raw"
    _write_disk(raw, tmp / "part.img", boot)
    out = tmp / "image"
    qcow2, virtual_size = base_qcow2(raw, out)
    image = GuestImage(
        path=qcow2,
        virtual_size=virtual_size,
        format="qcow2",
        kernel_version=inputs.kernel_version,
        sha256=file_sha256(qcow2),
        key=key,
        packages={p.name: p.version for p in inputs.guest_packages},
        build_seconds=round(time.monotonic() - started, 2),
    )
    (out / "guest.json").write_text(image.to_json())


def base_qcow2(raw: Path, out: Path, *, timeout: float = SUBPROCESS_TIMEOUT) -> tuple[Path, int]:
    """``raw`` converted to ``out/base.qcow2`` (``out`` is made here), read-only because a base
    image only ever backs overlays, and its virtual size as qemu-img reports it."""
    out.mkdir()
    qcow2 = out / "base.qcow2"
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], timeout=timeout)
    info = json.loads(_run(["qemu-img", "info", "--output=json", str(qcow2)], timeout=timeout))
    qcow2.chmod(0o444)
    return qcow2, int(info["virtual-size"])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- initramfs --------------------------------------------------------------------------------


def _module_order(modules_dir: Path, wanted: tuple[str, ...], already: set[str]) -> list[Path]:
    """The .ko files to insmod for ``wanted``, dependencies first, skipping built-ins and ``already``.

    ``modules.builtin`` (shipped in the package) says which drivers are compiled in; each
    module's ``.modinfo`` ``depends=`` says what must be loaded before it.
    """
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    builtin_file = modules_dir / "modules.builtin"
    builtin = {
        Path(line.strip()).name.removesuffix(".ko").replace("-", "_")
        for line in (builtin_file.read_text().splitlines() if builtin_file.is_file() else [])
    }
    order: list[Path] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in already or name in builtin or name in chain:
            return
        if name not in index:
            raise GuestBuildError(f"kernel module {name} is neither built in nor in {modules_dir}")
        for dep in _elf.modinfo(index[name]).get("depends", [""])[0].split(","):
            if dep:
                visit(dep.replace("-", "_"), (*chain, name))
        if name not in already:
            already.add(name)
            order.append(index[name])

    for name in wanted:
        visit(name, ())
    return order


def _resolve_libraries(binary: Path, trees: list[Path]) -> dict[str, Path]:
    """soname -> file for everything ``binary`` loads, searched in the unpacked library packages."""
    index: dict[str, Path] = {}
    for tree in trees:
        for libdir in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64"):
            base = tree / libdir
            if not base.is_dir():
                continue
            for p in base.iterdir():
                if ".so" in p.name and p.name not in index:
                    resolved = _resolve_in_tree(p, tree)
                    if resolved is not None:
                        index[p.name] = resolved
    found: dict[str, Path] = {}
    todo = list(_elf.needed(binary))
    while todo:
        soname = todo.pop()
        if soname in found:
            continue
        if soname not in index:
            raise GuestBuildError(f"{binary.name} needs {soname}, which no unpacked dependency provides")
        found[soname] = index[soname]
        todo.extend(_elf.needed(index[soname]))
    loader = _elf.interpreter(binary)
    if loader:
        name = Path(loader).name
        if name not in index:
            raise GuestBuildError(f"{binary.name} needs loader {loader}, which no unpacked dependency provides")
        found[name] = index[name]
    return found


def _resolve_in_tree(path: Path, tree: Path) -> Path | None:
    """Follow symlinks as if ``tree`` were ``/`` (absolute links must not escape to the host)."""
    for _ in range(16):
        if not path.is_symlink():
            return path if path.is_file() else None
        target = os.readlink(path)
        path = tree / target.lstrip("/") if target.startswith("/") else path.parent / target
    return None


def _write_initramfs(out: Path, inputs: _Inputs, trees: Mapping[str, Path], modules_dir: Path, key: str) -> None:
    busybox = trees[inputs.busybox.name] / "bin" / "busybox"
    qemu_ga = trees[inputs.agent.name] / "usr" / "sbin" / "qemu-ga"
    if _elf.interpreter(busybox) is not None:
        raise GuestBuildError(f"{busybox} from {inputs.busybox.name} is not static")
    applets = _run([str(busybox), "--list-full"]).split()
    libs = _resolve_libraries(qemu_ga, [trees[p.name] for p in inputs.libraries])
    loaded: set[str] = set()
    boot_mods = _module_order(modules_dir, BOOT_MODULES, loaded)
    ide_mods = _module_order(modules_dir, IDE_MODULES, loaded)

    entries: dict[str, tuple[str, bytes | str | tuple[int, int], int]] = {}

    def add(name: str, kind: str, payload: bytes | str | tuple[int, int] = b"", perm: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), ("dir", b"", 0o755))
        entries["/".join(parts)] = (kind, payload, perm)

    for d in ("dev", "proc", "sys", "run", "tmp", "mnt/seed", "root", "var", "etc", "usr/bin", "usr/sbin", "sbin"):
        add(d, "dir", perm=0o1777 if d == "tmp" else 0o755)
    add("dev/console", "chr", (5, 1), 0o600)  # the kernel opens it for init before devtmpfs exists
    add("dev/null", "chr", (1, 3), 0o666)
    add("var/run", "link", "../run")
    add("bin/busybox", "file", busybox.read_bytes())
    for applet in applets:
        if applet.strip("/") != "bin/busybox":
            add(applet, "link", "/bin/busybox")
    add("init", "link", "/bin/busybox")  # busybox runs the applet named by argv[0]: init
    add("usr/sbin/qemu-ga", "file", qemu_ga.read_bytes())
    for soname, path in sorted(libs.items()):
        add(f"lib/x86_64-linux-gnu/{soname}", "file", path.read_bytes())
    add("lib64/ld-linux-x86-64.so.2", "link", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    for ko in boot_mods + ide_mods:
        add(f"lib/modules/{ko.name}", "file", ko.read_bytes(), 0o644)
    add("lib/modules/boot.list", "file", "".join(f"{k.name}\n" for k in boot_mods).encode(), 0o644)
    add("lib/modules/ide.list", "file", "".join(f"{k.name}\n" for k in ide_mods).encode(), 0o644)
    add("etc/virtdrivers-guest", "file", f"{key} kernel {inputs.kernel_version}\n".encode(), 0o644)
    for src in sorted(_ROOTFS.rglob("*")):
        if src.is_file():
            data = src.read_bytes()
            add(src.relative_to(_ROOTFS).as_posix(), "file", data, 0o755 if data.startswith(b"#!") else 0o644)

    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=MTIME) as gz:
        cpio = CpioWriter(gz)  # type: ignore[arg-type]
        for name in sorted(entries):
            kind, payload, perm = entries[name]
            if kind == "dir":
                cpio.directory(name, perm)
            elif kind == "file":
                assert isinstance(payload, bytes)
                cpio.file(name, payload, perm)
            elif kind == "link":
                assert isinstance(payload, str)
                cpio.symlink(name, payload)
            else:
                assert isinstance(payload, tuple)
                cpio.chardev(name, payload[0], payload[1], perm)
        cpio.close()


# --- disk -------------------------------------------------------------------------------------


def _chs(lba: int) -> bytes:
    """CHS triple for an MBR entry (255 heads, 63 sectors; BIOSes here boot by LBA anyway)."""
    cyl, rem = divmod(lba, 255 * 63)
    head, sect = divmod(rem, 63)
    if cyl > 1023:
        cyl, head, sect = 1023, 254, 62
    return bytes([head, ((sect + 1) & 0x3F) | ((cyl >> 2) & 0xC0), cyl & 0xFF])


def _fix_root_dir_times(part: Path) -> None:
    """Give every root-directory entry of a FAT12/16 image the fixed :data:`MTIME`.

    The syslinux installer stamps ldlinux.sys/ldlinux.c32 with the current time; that was the
    only thing making two builds from equal inputs differ, and equal inputs should give an
    equal content hash.
    """
    year, month, day = time.gmtime(MTIME)[:3]
    fat_date = struct.pack("<H", ((year - 1980) << 9) | (month << 5) | day)
    with open(part, "r+b") as fh:
        bpb = fh.read(SECTOR)
        bytes_per_sector, _spc, reserved, fats, root_entries, _total, _media, fat_sectors = struct.unpack_from(
            "<HBHBHHBH", bpb, 11
        )
        fh.seek((reserved + fats * fat_sectors) * bytes_per_sector)
        root = bytearray(fh.read(root_entries * 32))
        for off in range(0, len(root), 32):
            if root[off] == 0:
                break
            if root[off] == 0xE5 or root[off + 11] == 0x0F:  # deleted, long-name part
                continue
            root[off + 13] = 0  # creation time, 10 ms units
            root[off + 14 : off + 16] = b"\0\0"  # creation time
            for at in (16, 18, 24):  # creation, access, modification date
                root[off + at : off + at + 2] = fat_date
            root[off + 22 : off + 24] = b"\0\0"  # modification time
        fh.seek((reserved + fats * fat_sectors) * bytes_per_sector)
        fh.write(root)


def _write_disk(raw: Path, part: Path, boot: Path) -> None:
    """MBR + one active FAT16 partition with syslinux, built on image files only."""
    with open(part, "wb") as fh:
        fh.truncate(PARTITION_BYTES)
    # -h: hidden sectors = the partition's offset, which syslinux's boot sector adds to every
    # sector it reads; --invariant: no random or time-based values, so builds are reproducible.
    _run(
        [
            "mkfs.vfat",
            "-F",
            "16",
            "-n",
            "VDBOOT",
            "-i",
            "56444731",
            "-h",
            str(PARTITION_START_SECTOR),
            "--invariant",
            str(part),
        ]
    )
    _run(["syslinux", "--install", str(part)])
    # syslinux 6's installer writes both ldlinux.sys and the matching ldlinux.c32.
    files = [boot / n for n in ("syslinux.cfg", "vmlinuz", "initrd.img")]
    for f in files:
        os.utime(f, (MTIME, MTIME))
    _run(["mcopy", "-m", "-i", str(part), *map(str, files), "::/"])
    _fix_root_dir_times(part)

    sectors = PARTITION_BYTES // SECTOR
    mbr = bytearray(SYSLINUX_MBR.read_bytes()[:440].ljust(440, b"\0"))
    mbr += b"VDG1" + b"\0\0"  # disk signature + reserved
    entry = (
        b"\x80"
        + _chs(PARTITION_START_SECTOR)
        + b"\x0e"  # FAT16 (LBA)
        + _chs(PARTITION_START_SECTOR + sectors - 1)
        + struct.pack("<II", PARTITION_START_SECTOR, sectors)
    )
    mbr += entry + b"\0" * 48 + b"\x55\xaa"
    assert len(mbr) == SECTOR
    with open(raw, "wb") as out, open(part, "rb") as src:
        out.write(mbr)
        out.write(b"\0" * (PARTITION_START_SECTOR * SECTOR - SECTOR))
        shutil.copyfileobj(src, out, 1 << 20)
