"""What ``virtdrivers drivers`` shows, at the cost of a directory listing.

Showing installed drivers needs each plugin's class data (capabilities, contract
version, endpoint and setting names), and reading it means importing the plugin:
its driver module, the contract, pydantic. That costs several times Python's own
start, every time, for data that only changes when code changes. So what a
plugin declares is kept in a small cache, the way Python keeps bytecode: each
record is valid only for the exact code it was read from, keyed on the plugin's
entry point and distribution version, the Python and virtdrivers versions, and
the size and modification time of every ``.py`` file of the plugin's package and
of virtdrivers itself. Any change there, and the plugin is imported again (under
the loader's guards: :func:`virtdrivers.loader.inspect_entry_points`). A plugin
that failed is never cached: its error is looked at afresh every time.

This module imports neither the contract nor pydantic; the loader is imported only
on a cache miss. The cache lives in ``$VIRTDRIVERS_CACHE`` or
``$XDG_CACHE_HOME/virtdrivers`` (``~/.cache/virtdrivers``); ``fresh=True`` (the
CLI's ``--fresh``) imports every plugin and rewrites it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.metadata
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LISTING_TIME_LIMIT", "DriverSummary", "cache_path", "describe_drivers"]

NAMESPACE = "virtdrivers.drivers"
_FORMAT = 1


@dataclass(frozen=True)
class DriverSummary:
    """One installed plugin as a listing shows it: plain data, no plugin code."""

    name: str
    target: str
    distribution: str | None
    version: str | None
    contract_version: str | None = None
    capabilities: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    error: str | None = None
    cached: bool = False
    """Read from the cache (the plugin's code is unchanged since it was last imported)."""

    @property
    def ok(self) -> bool:
        return self.error is None


def cache_path() -> Path:
    base = os.environ.get("VIRTDRIVERS_CACHE")
    if base:
        return Path(base) / "drivers.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "virtdrivers" / "drivers.json"


def _stamp(top_level: str) -> str | None:
    """A digest of the name, size and mtime of every .py file of a top-level package, found without importing it."""
    spec = importlib.machinery.PathFinder.find_spec(top_level)
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or ())
    files: list[Path] = []
    if roots:
        for root in roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d != "__pycache__"]
                files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    elif spec.origin:
        files = [Path(spec.origin)]
    digest = hashlib.sha256()
    for file in sorted(files):
        try:
            st = file.stat()
        except OSError:
            return None
        digest.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _key(ep: importlib.metadata.EntryPoint, dist: str | None, version: str | None, core: str | None) -> str | None:
    plugin = _stamp(ep.value.split(":")[0].split(".")[0])
    if plugin is None or core is None:
        return None
    py = ".".join(map(str, sys.version_info[:3]))
    return f"{_FORMAT}|{ep.name}|{ep.value}|{dist}|{version}|{py}|{sys.executable}|{core}|{plugin}"


def _read(path: Path) -> dict[str, dict[str, object]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("format") == _FORMAT and isinstance(data.get("plugins"), dict):
            plugins: dict[str, dict[str, object]] = data["plugins"]
            return plugins
    return {}


def _write(path: Path, plugins: dict[str, dict[str, object]]) -> None:
    """Atomically, and quietly: a cache that cannot be written only costs speed."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".drivers-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": _FORMAT, "plugins": plugins}, f)
        os.replace(tmp, path)


#: Seconds a plugin may take to import before the listing reports it as hanging and shows the
#: others. Shorter than the loader's own limit: a person is waiting, and unchanged plugins come
#: from the cache anyway.
LISTING_TIME_LIMIT = 1.5


def describe_drivers(time_limit: float = LISTING_TIME_LIMIT, *, fresh: bool = False) -> list[DriverSummary]:
    """Every installed plugin as the listing shows it, sorted by name; plugins import only when their code changed."""
    eps = list(importlib.metadata.entry_points(group=NAMESPACE))
    names = [ep.name for ep in eps]
    core = _stamp("virtdrivers")
    path = cache_path()
    cached = {} if fresh else _read(path)
    found: list[DriverSummary] = []
    misses: list[tuple[importlib.metadata.EntryPoint, str | None]] = []
    for ep in eps:
        dist = ep.dist
        dist_name, version = (dist.name, dist.version) if dist is not None else (None, None)
        key = None if names.count(ep.name) > 1 else _key(ep, dist_name, version, core)
        record = cached.get(ep.name)
        if key is not None and record is not None and record.get("key") == key:
            fields = {k: v for k, v in record.items() if k != "key"}
            found.append(DriverSummary(**{**fields, **_tuples(fields), "cached": True}))  # type: ignore[arg-type]
        else:
            misses.append((ep, key))
    if misses:
        from virtdrivers.loader import inspect_entry_points

        entries = {e.name: e for e in inspect_entry_points([ep for ep, _ in misses], time_limit)}
        keep = dict(cached)
        for ep, key in misses:
            e = entries[ep.name]
            summary = DriverSummary(
                name=e.name,
                target=e.target,
                distribution=e.distribution,
                version=e.version,
                contract_version=e.contract_version if e.ok else None,
                capabilities=tuple(sorted(c.value for c in e.capabilities)) if e.ok else (),
                endpoints=tuple(ep_.name for ep_ in e.endpoints) if e.ok else (),
                settings=e.settings if e.ok else (),
                error=e.error,
            )
            found.append(summary)
            keep.pop(ep.name, None)
            if summary.ok and key is not None:
                record = {k: v for k, v in asdict(summary).items() if k != "cached"}
                keep[ep.name] = {**record, "key": key}
        _write(path, {name: rec for name, rec in keep.items() if name in names})
    return sorted(found, key=lambda s: s.name)


def _tuples(fields: dict[str, object]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in fields.items() if isinstance(v, list)}  # type: ignore[arg-type]
