"""Debian packages as build inputs: resolve candidate versions, fetch .debs, unpack them.

Only apt's own clients are used (``apt-cache show`` for metadata, ``apt-get download`` for the
files) so the build gets exactly what the machine's configured Debian mirror serves, verified
by apt, and never installs anything into the host.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: apt-get download of ~30 MB from a mirror; a guard, not an expected duration.
APT_TIMEOUT = 300.0


class AptError(RuntimeError):
    """apt could not tell us about, or fetch, a package the guest is built from."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    depends: tuple[str, ...]  # first alternative of each Depends/Pre-Depends entry, no versions

    @property
    def deb_name(self) -> str:
        """The file name apt-get download gives the package (epoch colon quoted as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise AptError(f"{argv[0]} not found: the guest build needs apt (Debian)") from exc
    if proc.returncode != 0:
        raise AptError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _dep_names(field: str) -> tuple[str, ...]:
    names = []
    for entry in field.split(","):
        first = entry.split("|")[0].strip()
        name = re.split(r"[\s(:]", first, maxsplit=1)[0]
        if name:
            names.append(name)
    return tuple(names)


def show(names: list[str], *, refresh: bool = True) -> dict[str, Package]:
    """Candidate version and dependencies of each named package (one apt-cache call).

    A fresh machine may have no package lists at all (images often ship without them):
    as root, one ``apt-get update`` is tried before giving up.
    """
    try:
        return _show(names)
    except AptError:
        if not refresh or os.geteuid() != 0:
            raise
    _run(["apt-get", "update", "-qq"])
    return _show(names)


def _show(names: list[str]) -> dict[str, Package]:
    out = _run(["apt-cache", "show", "--no-all-versions", *names])
    result: dict[str, Package] = {}
    for stanza in out.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" not in fields:
            continue
        deps = _dep_names(fields.get("Pre-Depends", "")) + _dep_names(fields.get("Depends", ""))
        pkg = Package(fields["Package"], fields["Version"], fields.get("Architecture", "amd64"), deps)
        result.setdefault(pkg.name, pkg)
    missing = [n for n in names if n not in result]
    if missing:
        raise AptError(f"apt knows no candidate for {missing}; run `apt-get update` first")
    return result


def library_closure(root: Package, is_library: re.Pattern[str]) -> dict[str, Package]:
    """The packages a binary package depends on, transitively, keeping only shared-library ones.

    Non-library dependencies (``init-system-helpers``, ``gcc-12-base``...) carry nothing a
    binary loads, and following them would drag in perl and friends.
    """
    seen: dict[str, Package] = {}
    frontier = [d for d in root.depends if is_library.match(d)]
    while frontier:
        batch = sorted({n for n in frontier if n not in seen})
        if not batch:
            break
        found = show(batch)
        seen.update(found)
        frontier = [d for p in found.values() for d in p.depends if is_library.match(d) and d not in seen]
    return seen


def fetch(packages: list[Package], deb_dir: Path) -> dict[str, Path]:
    """The .deb of each package in ``deb_dir``, downloading the missing ones with apt-get.

    Downloads land in a private temporary directory and are renamed into place, so concurrent
    builds never see a half-written file.
    """
    deb_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not (deb_dir / p.deb_name).is_file()]
    if missing:
        with tempfile.TemporaryDirectory(dir=deb_dir, prefix=".download-") as tmp:
            # Sandbox user root: the temporary directory is not readable by the _apt user.
            _run(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"]
                + [f"{p.name}={p.version}" for p in missing],
                cwd=Path(tmp),
            )
            for p in missing:
                got = Path(tmp) / p.deb_name
                if not got.is_file():
                    raise AptError(f"apt-get download did not produce {p.deb_name}")
                os.replace(got, deb_dir / p.deb_name)
    return {p.name: deb_dir / p.deb_name for p in packages}


def extract(deb: Path, dest: Path) -> None:
    """Unpack a .deb's files (not its maintainer scripts) under ``dest``: nothing is installed."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])


#: What decides apt's candidate versions (and dpkg's installed ones): if none of these changed,
#: an earlier resolution still holds. apt-cache takes ~0.5 s a call here, the stat ~1 ms.
_STATE_PATHS = (
    "/var/lib/apt/lists",
    "/etc/apt/preferences",
    "/etc/apt/preferences.d",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
    "/var/lib/dpkg/status",
)


def state_fingerprint() -> str:
    """A hash of the names, sizes and mtimes of apt's package lists, pins, sources and dpkg's status."""
    h = hashlib.sha256()
    for root in _STATE_PATHS:
        p = Path(root)
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
