"""A directory-backed image store, like Nova's image cache: one per driver, seen by every node.

libvirt has no image service; what Nova's libvirt driver does is keep base images in a local
directory and give each instance a qcow2 child of one. Here an image is two files in
``image_dir``: ``<id>.<format>`` (the image, never written after registration) and
``<id>.json`` (its name, format, size and the checksum taken when it was registered, so
listing never re-reads gigabytes). The JSON is written last and removed first, so a half
registered or half deleted image is never listed.

The checksum is the content at registration; :meth:`ImageStore.verify` re-reads the file when
a caller wants proof it is unchanged (the store's own tests do, after a guest wrote to its
copy-on-write child).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass

from virtdrivers.capabilities import DiskFormat
from virtdrivers.errors import DriverError, InvalidSpec, NotFound
from virtdrivers.objects import Image

GIB = 1024**3
QEMU_IMG_TIMEOUT = 120.0
_FORMATS = {f.value: f for f in DiskFormat}


@dataclass(frozen=True)
class StoredImage:
    """An image and where its file is."""

    image: Image
    path: str

    @property
    def format(self) -> DiskFormat:
        return self.image.disk_format or DiskFormat.RAW


def root_disk_gib(image: Image) -> int:
    """The smallest whole-GiB root disk that holds the image (and its declared minimum)."""
    return max(1, -(-image.virtual_size_bytes // GIB), image.min_disk_gib)


def probe(path: str) -> tuple[DiskFormat, int]:
    """(format, virtual size in bytes) as qemu-img sees the file."""
    if shutil.which("qemu-img") is None:
        raise DriverError("qemu-img is not installed (Debian package qemu-utils)")
    try:
        done = subprocess.run(
            ["qemu-img", "info", "--output=json", path],
            capture_output=True,
            text=True,
            timeout=QEMU_IMG_TIMEOUT,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise InvalidSpec(f"{path} is not a disk image qemu-img can read: {exc.stderr.strip()}", field="path") from exc
    info = json.loads(done.stdout)
    fmt = _FORMATS.get(str(info.get("format")))
    if fmt is None:
        raise InvalidSpec(f"{path} is a {info.get('format')} image; libvirt disks are raw, qcow2 or vmdk", field="path")
    return fmt, int(info["virtual-size"])


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ImageStore:
    """Images in one directory. Every node must see the directory at the same path (local
    disk for one node, shared storage for several), as with the disk directory."""

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._lock = threading.Lock()

    @property
    def directory(self) -> str:
        return self._dir

    def list(self) -> list[StoredImage]:
        try:
            names = sorted(os.listdir(self._dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if not name.endswith(".json"):
                continue
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                with open(os.path.join(self._dir, name)) as fh:
                    image = Image.model_validate_json(fh.read())
                path = os.path.join(self._dir, f"{image.id}.{(image.disk_format or DiskFormat.RAW).value}")
                if os.path.exists(path):
                    out.append(StoredImage(image, path))
        return out

    def find(self, ref: str) -> StoredImage | None:
        """The image whose id, else whose name, is ``ref``."""
        images = self.list()
        return next((i for i in images if i.image.id == ref), None) or next(
            (i for i in images if i.image.name == ref), None
        )

    def add(
        self,
        path: str,
        name: str,
        *,
        disk_format: DiskFormat | None = None,
        image_id: str | None = None,
        os_type: str | None = None,
        os_distro: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Image:
        """Copy a local image file into the store. The format is qemu-img's reading of the file;
        a ``disk_format`` that disagrees is refused (a raw file declared qcow2 would not boot,
        and a qcow2 file declared raw would hand the guest its own backing-file header)."""
        if not os.path.isfile(path):
            raise InvalidSpec(f"no image file {path}", field="path")
        fmt, size = probe(path)
        if disk_format is not None and disk_format != fmt:
            raise InvalidSpec(f"{path} is {fmt.value}, not {disk_format.value}", field="disk_format")
        image_id = image_id or f"img-{uuid.uuid4()}"
        os.makedirs(self._dir, exist_ok=True)
        with self._lock:
            if any(i.image.name == name for i in self.list()):
                raise InvalidSpec(f"an image named {name!r} exists already", field="name")
            final = os.path.join(self._dir, f"{image_id}.{fmt.value}")
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=self._dir)
            os.close(fd)
            try:
                shutil.copyfile(path, tmp)
                os.chmod(tmp, 0o444)  # never written: instances get children or copies
                image = Image(
                    id=image_id,
                    name=name,
                    disk_format=fmt,
                    virtual_size_bytes=size,
                    checksum=file_sha256(tmp),
                    os_type=os_type,
                    os_distro=os_distro,
                    metadata=dict(metadata or {}),
                )
                os.replace(tmp, final)
                self._write_json(image)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return image

    def _write_json(self, image: Image) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=self._dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(image.model_dump_json())
        os.replace(tmp, os.path.join(self._dir, f"{image.id}.json"))

    def remove(self, image_id: str) -> None:
        found = next((i for i in self.list() if i.image.id == image_id), None)
        if found is None:
            raise NotFound(f"image {image_id!r} not found")
        os.unlink(os.path.join(self._dir, f"{image_id}.json"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(found.path)

    def verify(self, image_id: str) -> bool:
        """Whether the image file still has the content it was registered with."""
        found = next((i for i in self.list() if i.image.id == image_id), None)
        if found is None:
            raise NotFound(f"image {image_id!r} not found")
        return file_sha256(found.path) == found.image.checksum
