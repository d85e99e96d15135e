"""Fixtures for the libvirt backend's tests: the two embedded endpoints and drivers on them.

Also makes ``plain_qemu.py`` beside it importable as ``plain_qemu`` (the tree runs under
``--import-mode=importlib``, which does not put this directory on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

if "plain_qemu" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("plain_qemu", Path(__file__).with_name("plain_qemu.py"))
    assert _spec is not None
    assert _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["plain_qemu"] = _module
    _spec.loader.exec_module(_module)

from plain_qemu import Guest

from virtdrivers_libvirt.driver import LibvirtDriver

ENDPOINTS = {e.name: e for e in LibvirtDriver.embedded_endpoints()}


@pytest.fixture(scope="session")
def test_settings() -> Iterator[Mapping[str, Any]]:
    with ENDPOINTS["test"].start() as settings:
        yield settings


@pytest.fixture(scope="session")
def qemu_settings() -> Iterator[Mapping[str, Any]]:
    with ENDPOINTS["qemu"].start() as settings:
        yield settings


@pytest.fixture(params=["test", "qemu"])
def endpoint(request: pytest.FixtureRequest) -> tuple[str, Mapping[str, Any]]:
    name: str = request.param
    return name, request.getfixturevalue(f"{name}_settings")


@pytest.fixture
def driver(endpoint: tuple[str, Mapping[str, Any]]) -> Iterator[LibvirtDriver]:
    name, settings = endpoint
    d = LibvirtDriver(settings)
    d.narrow_capabilities(ENDPOINTS[name].unavailable)
    with d:
        yield d
        for info in d.list_instances():
            d.destroy(info.id)


@pytest.fixture
def qemu(qemu_settings: Mapping[str, Any]) -> Iterator[LibvirtDriver]:
    with LibvirtDriver(qemu_settings) as d:
        yield d
        for info in d.list_instances():
            d.destroy(info.id)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """UNIX socket paths must fit in 108 bytes; pytest's tmp_path can be longer."""
    d = Path(tempfile.mkdtemp(prefix="vdg-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    """Plain-QEMU guests a test started: each is killed by its PID when the test ends."""
    started: list[Guest] = []
    yield started
    for g in started:
        g.kill()
