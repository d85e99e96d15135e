"""Just enough ELF reading to pack a guest without running anything from it.

The build resolves shared-library dependencies and kernel-module dependencies by reading the
files themselves (``DT_NEEDED`` entries and the ``.modinfo`` section) instead of calling ``ldd``
or ``modprobe``: ``ldd`` would resolve against the *host's* libraries, and the kernel package
ships no ``modules.dep`` (Debian generates it in the postinst we never run).
"""

from __future__ import annotations

import struct
from pathlib import Path

_SHT_DYNAMIC = 6
_DT_NEEDED = 1


class ElfError(ValueError):
    """The file is not a 64-bit little-endian ELF we can read."""


def _sections(data: bytes) -> list[tuple[str, int, int, int, int]]:
    """(name, type, offset, size, link) for each section header."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw: list[tuple[int, int, int, int, int]] = []
    for i in range(shnum):
        name, typ, _flags, _addr, offset, size, link = struct.unpack_from("<IIQQQQI", data, shoff + i * shentsize)
        raw.append((name, typ, offset, size, link))
    if not raw:
        return []
    names_off = raw[shstrndx][2]

    def cstr(at: int) -> str:
        end = data.index(b"\0", at)
        return data[at:end].decode("ascii", "replace")

    return [(cstr(names_off + n), typ, off, size, link) for n, typ, off, size, link in raw]


def needed(path: Path) -> list[str]:
    """The ``DT_NEEDED`` sonames of a dynamically linked executable or library (empty if static)."""
    data = path.read_bytes()
    sections = _sections(data)
    out: list[str] = []
    for _name, typ, off, size, link in sections:
        if typ != _SHT_DYNAMIC:
            continue
        strtab_off = sections[link][2]
        for i in range(0, size, 16):
            tag, val = struct.unpack_from("<qQ", data, off + i)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                end = data.index(b"\0", strtab_off + val)
                out.append(data[strtab_off + val : end].decode("ascii"))
    return out


def interpreter(path: Path) -> str | None:
    """The ``PT_INTERP`` program interpreter (the dynamic loader), or None for a static binary."""
    data = path.read_bytes()
    for name, _typ, off, size, _link in _sections(data):
        if name == ".interp":
            return data[off : off + size].rstrip(b"\0").decode("ascii")
    return None


def modinfo(path: Path) -> dict[str, list[str]]:
    """The ``.modinfo`` key/value pairs of a kernel module (keys may repeat, e.g. ``alias``)."""
    data = path.read_bytes()
    out: dict[str, list[str]] = {}
    for name, _typ, off, size, _link in _sections(data):
        if name != ".modinfo":
            continue
        for entry in data[off : off + size].split(b"\0"):
            if b"=" in entry:
                key, _, value = entry.decode("utf-8", "replace").partition("=")
                out.setdefault(key, []).append(value)
    return out
