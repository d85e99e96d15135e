"""NoCloud seeds for guests, and the marker the tiny guest prints for its user data.

The tiny guest (see :mod:`.build`) prints, on its serial console, once per boot:

* every user-data line that starts with ``#vd-marker ``, verbatim, and then
* ``VIRTDRIVERS-USERDATA <sha256 hex of the user-data file>`` (``none`` without a seed),

so once the ``VIRTDRIVERS-USERDATA`` line is on the console, all the marker lines are too.

A ``#`` line is a comment both in cloud-config YAML and in shell scripts, so the same user
data gives the same markers to the tiny guest and to a real cloud-init guest (where a
``runcmd`` can echo them). Tests wait for :func:`userdata_marker` of the data they sent.

Other lines on the console: ``VIRTDRIVERS-BOOT <key> kernel <version>`` at the start of init,
``VIRTDRIVERS-ADDRESS <nic> <ipv4>`` when DHCP binds, ``VIRTDRIVERS-ACPI-POWER-BUTTON`` and
``VIRTDRIVERS-SHUTDOWN`` on the way down, ``VIRTDRIVERS-USERSCRIPT-EXIT <rc>`` after user data
that starts with ``#!`` ran (once per boot, after the network is up, output on the console).

Why vfat by default: the boot disk already needs ``mkfs.vfat`` and ``mtools``, so a vfat seed
adds no host package, and it is a plain disk image (the seed goes in as a read-only virtio
disk). ``fs="iso9660"`` (``genisoimage``) is there for an IDE/SCSI cdrom, the other common way
to attach a seed; the tiny guest and cloud-init read either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

USERDATA_MARKER = "VIRTDRIVERS-USERDATA"
VD_MARKER_PREFIX = "#vd-marker "
SEED_TIMEOUT = 60.0


class SeedError(RuntimeError):
    """The seed image could not be written (usually a missing host tool)."""


def userdata_marker(user_data: str | bytes) -> str:
    """The console line the tiny guest prints for this user data."""
    data = user_data.encode() if isinstance(user_data, str) else user_data
    return f"{USERDATA_MARKER} {hashlib.sha256(data).hexdigest()}"


def _yaml(meta_data: str | Mapping[str, str]) -> bytes:
    """Mappings become ``key: "value"`` lines: JSON strings are valid YAML double-quoted scalars,
    and one key per line is what the tiny guest's ``sed`` reads ``local-hostname`` from."""
    if isinstance(meta_data, str):
        return meta_data.encode()
    return "".join(f"{k}: {json.dumps(str(v))}\n" for k, v in meta_data.items()).encode()


def make_seed(
    directory: Path,
    user_data: str | bytes,
    meta_data: str | Mapping[str, str],
    network_config: str | None = None,
    *,
    fs: Literal["vfat", "iso9660"] = "vfat",
) -> Path:
    """Write a NoCloud seed image into ``directory`` and return its path.

    vfat: labelled ``CIDATA``, file ``cidata.img``; iso9660: volume id ``cidata``, file
    ``cidata.iso``. Files inside: ``user-data``, ``meta-data`` and, if given, ``network-config``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "user-data": user_data.encode() if isinstance(user_data, str) else user_data,
        "meta-data": _yaml(meta_data),
    }
    if network_config is not None:
        files["network-config"] = network_config.encode()
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=directory) as tmp:
        src = Path(tmp) / "files"
        src.mkdir()
        for name, data in files.items():
            (src / name).write_bytes(data)
        if fs == "vfat":
            out = directory / "cidata.img"
            img = Path(tmp) / out.name
            payload = sum(len(d) for d in files.values())
            size = max(1 << 20, (payload * 2 + (256 << 10) + (1 << 20) - 1) & ~((1 << 20) - 1))
            with open(img, "wb") as fh:
                fh.truncate(size)
            _run(["mkfs.vfat", "-n", "CIDATA", str(img)], "dosfstools")
            _run(["mcopy", "-i", str(img), *(str(src / n) for n in files), "::/"], "mtools")
        elif fs == "iso9660":
            out = directory / "cidata.iso"
            img = Path(tmp) / out.name
            _run(
                ["genisoimage", "-quiet", "-output", str(img), "-volid", "cidata", "-joliet", "-rock", str(src)],
                "genisoimage",
            )
        else:
            raise ValueError(f"unknown seed filesystem {fs!r}")
        os.replace(img, out)
    return out


def _run(argv: list[str], package: str) -> None:
    if shutil.which(argv[0]) is None:
        raise SeedError(f"{argv[0]} not found: apt-get install {package}")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=SEED_TIMEOUT, check=False, env=env)
    if proc.returncode != 0:
        raise SeedError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
